"""Admissions in: HL7 ADT over MLLP sets and clears the patient in each bed, as stored room events;
bad messages get an AE/AR ACK saying why. Real MLLP on 127.0.0.1, the room on a fake clock."""

from __future__ import annotations

import asyncio

import pytest

from controller.room import reports
from integrations.config import Integrations, ListenerOptions
from integrations.service import IntegrationService
from tests.hl7peer import MllpClient, fields
from tests.roomsim import RoomSim, rules_config

OPTIONS = Integrations(application="SMARTROOM", facility="GENHOSP", point_of_care="4B", hl7_room="412",
                       hl7_beds={"A": "1", "B": "2"}, mllp=ListenerOptions("127.0.0.1", 0, ("127.0.0.1",)))


def adt(trigger: str, *, pid: str = "MRN-7^^^GH^MR", name: str = "Doe^Jane", location: str = "4B^412^1",
        prior: str = "", control_id: str = "ADT-1", processing: str = "P", version: str = "2.5") -> str:
    pv1 = ["PV1", "1", "I", location, "", "", prior] + [""] * 12 + ["V-100"]
    return "\r".join([
        f"MSH|^~\\&|EPIC|GENHOSP|SMARTROOM|4B|20260101120000||ADT^{trigger}^ADT_A01|{control_id}|{processing}|{version}",
        f"EVN|{trigger}|20260101120000",
        f"PID|1||{pid}||{name}||19610101|F",
        "|".join(pv1),
    ])


def msa(ack: str) -> tuple[str, str]:
    return fields(ack, "MSA")[1], fields(ack, "MSA")[2]


@pytest.fixture
async def room(tmp_path):
    async with RoomSim(rules_config(), tmp_path / "room.db") as sim:
        yield sim


@pytest.fixture
async def feed(room):
    async with IntegrationService(room.c, OPTIONS) as service:
        client = await MllpClient.connect(service.listener.port)
        client.service = service
        yield client
        await client.close()


async def test_admit_then_a_call_names_the_patient_then_transfer_and_discharge(room, feed):
    ack = await feed.send(adt("A01", control_id="ADT-1"))
    assert msa(ack) == ("AA", "ADT-1")
    assert room.c.room.patients["A"] == {"id": "MRN-7", "name": "Jane Doe", "family": "Doe", "given": "Jane",
                                         "id_system": "GH", "birth_date": "19610101", "sex": "F", "visit": "V-100"}
    await room.press("bedside-a", "call")
    call = room.call("patient_call")
    assert call["patient"]["name"] == "Jane Doe"                       # the call JSON names the patient
    assert room.c.snapshot()["patients"]["A"]["id"] == "MRN-7"
    await room.press("door", "cancel")
    report = reports.response_times(await room.c.call_history(0), 0, room.clock.ms + 1)
    assert report["calls"][0]["patient"]["id"] == "MRN-7"              # and so does the report

    ack = await feed.send(adt("A02", location="4B^412^2", prior="4B^412^1", control_id="ADT-2"))
    assert msa(ack) == ("AA", "ADT-2")
    assert room.c.room.patients == {"A": None, "B": room.c.room.patients["B"]}
    assert room.c.room.patients["B"]["id"] == "MRN-7"
    await room.press("bedside-b", "call")
    assert room.call("patient_call")["patient"]["id"] == "MRN-7"

    await room.c.set_fall_risk("B", True, "Nurse Kim")
    ack = await feed.send(adt("A03", location="4B^412^2", control_id="ADT-3"))
    assert msa(ack) == ("AA", "ADT-3")
    assert room.c.room.patients == {"A": None, "B": None}
    assert room.c.room.fall_risk["B"] is False                         # a discharge ends the bed-exit alarm
    kinds = [(r.kind, r.data.get("reason") or r.data.get("enabled")) for r in await room.c.events_after(0, 1000)
             if r.kind in ("bed.patient", "bed.fall_risk")]
    assert kinds == [("bed.patient", "admit"), ("bed.patient", "transfer_out"), ("bed.patient", "transfer_in"),
                     ("bed.fall_risk", True), ("bed.patient", "discharge"), ("bed.fall_risk", False)]
    assert feed.service.admissions.accepted == {"A01": 1, "A03": 1}


async def test_patients_survive_a_restart_and_an_update_renames_them(room, feed):
    await feed.send(adt("A01", location="4B^412^2"))
    await room.press("bedside-b", "call")
    ack = await feed.send(adt("A08", name="Doe-Smith^Jane", location="4B^412^2", control_id="ADT-9"))
    assert msa(ack) == ("AA", "ADT-9")
    assert room.call("patient_call")["patient"]["name"] == "Jane Doe-Smith"   # the open call too
    await room.restart()
    assert room.c.room.patients["B"]["name"] == "Jane Doe-Smith"
    assert room.call("patient_call")["patient"]["id"] == "MRN-7"


async def test_a_message_for_another_room_is_acknowledged_and_ignored(room, feed):
    ack = await feed.send(adt("A01", location="4B^413^1", control_id="ADT-5"))
    assert msa(ack) == ("AA", "ADT-5")
    assert "ignored" in fields(ack, "MSA")[3]
    assert room.c.room.patients == {"A": None, "B": None}
    assert feed.service.admissions.ignored == 1


async def test_the_same_admission_twice_stores_one_event(room, feed):
    assert msa(await feed.send(adt("A01", control_id="ADT-1")))[0] == "AA"
    assert msa(await feed.send(adt("A01", control_id="ADT-1")))[0] == "AA"   # a resend after a lost ACK
    stored = [r for r in await room.c.events_after(0, 1000) if r.kind == "bed.patient"]
    assert len(stored) == 1


@pytest.mark.parametrize("message, code, error, says", [
    (adt("A01", pid=""), "AE", "101", "PID-3"),
    (adt("A01", location="4B^412^9"), "AE", "204", "no bed '9' (beds: 1, 2)"),
    (adt("A01", location="4B^412"), "AE", "101", "names the room but no bed"),
    (adt("A05"), "AR", "201", "ADT^A05 is not used"),
    (adt("A01", processing="T"), "AR", "202", "production (P) messages only"),
    (adt("A01", version="9.9"), "AR", "203", "not supported"),
    (adt("A01").replace("MSH|^~\\&", "MSH|^~|&"), "AR", "100", "standard delimiters"),
    (adt("A01").split("\rPID")[0], "AE", "101", "no PID segment"),
    ("MSH|^~\\&|EPIC|GENHOSP|SR|4B|2026||QRY^A19^QRY_A19|Q-1|P|2.5", "AR", "200", "QRY^A19 is not taken here"),
    ("this is not HL7 at all", "AR", "100", "does not start with an MSH segment"),
])
async def test_malformed_or_unusable_messages_get_a_clear_nak(room, feed, message, code, error, says):
    ack = await feed.send(message)
    assert fields(ack, "MSA")[1] == code
    err = fields(ack, "ERR")
    assert err[3].split("^")[0] == error and err[4] == "E"
    assert says in err[8].replace("\\S\\", "^")  # ERR-8 escapes HL7 delimiters
    assert room.c.room.patients == {"A": None, "B": None}
    assert sum(feed.service.admissions.refused.values()) == 1


async def test_the_connection_stays_usable_after_a_nak(room, feed):
    assert fields(await feed.send("garbage"), "MSA")[1] == "AR"
    assert msa(await feed.send(adt("A01", control_id="ADT-2"))) == ("AA", "ADT-2")


async def test_a_peer_outside_the_allow_list_is_refused(room):
    options = Integrations(hl7_room="412", mllp=ListenerOptions("127.0.0.1", 0, ("10.0.0.0/8",)))
    async with IntegrationService(room.c, options) as service:
        client = await MllpClient.connect(service.listener.port)
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):  # closed without an answer
            await client.send(adt("A01"))
        await client.close()
        assert service.inbound["refused_peer"] == 1
    assert room.c.room.patients == {"A": None, "B": None}


async def test_an_oversized_frame_closes_the_connection_and_is_counted(room, feed):
    from integrations.mllp import MAX_FRAME_BYTES

    feed.writer.write(b"\x0b" + b"x" * (MAX_FRAME_BYTES + 10))
    await feed.writer.drain()
    assert await feed.reader.read() == b""                 # closed by the room
    assert feed.service.inbound["bad_frame"] == 1


# ---------------------------------------------------------------- the room's rules for patients and delivery steps


async def test_fall_risk_ends_with_the_patient_not_with_an_update(room):
    from controller.room.hospital import ADMIT, UPDATE, Patient

    c = room.c
    await c.admission("A", Patient("MRN-1", "Jane Doe"), ADMIT, "adt", "1")
    await c.set_fall_risk("A", True, "Nurse Kim")
    await c.admission("A", Patient("MRN-1", "Jane Doe-Smith"), UPDATE, "adt", "2")   # same patient: stays on
    assert c.room.fall_risk["A"] is True
    await c.admission("A", Patient("MRN-2", "John Roe"), ADMIT, "adt", "3")          # another patient: off
    assert c.room.fall_risk["A"] is False
    assert await c.admission("A", Patient("MRN-2", "John Roe"), ADMIT, "adt", "4") == []  # nothing changes


async def test_an_unknown_bed_is_refused_by_the_room(room):
    from controller.room import UnknownBed
    from controller.room.hospital import ADMIT, Patient

    with pytest.raises(UnknownBed, match="no bed 'C'"):
        await room.c.admission("C", Patient("MRN-1"), ADMIT, "adt", "1")


@pytest.mark.parametrize("length, stored", [(199, 199), (200, 200), (201, 200)])
async def test_a_delivery_status_is_one_line_of_at_most_200_characters(room, length, stored):
    await room.press("bedside-a", "call")
    call = room.call("patient_call")
    await room.c.call_delivery(call["id"], "x" * length + "\n", "alarm manager AM")
    step = room.c.room.calls[call["id"]].timeline[-1]
    assert step["step"] == "delivery" and len(step["status"]) == stored
