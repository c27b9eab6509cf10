"""FHIR R4 reads: every answer is parsed back with the fhir.resources models, and says what the room knows."""

from __future__ import annotations

import aiohttp
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.communication import Communication
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.flag import Flag
from fhir.resources.R4B.observation import Observation

from controller.model import Hello, NodeEvent, Reading
from controller.room.calls import TIMELINE_FIRST_STEPS, TIMELINE_LATEST_STEPS
from controller.room.hospital import ADMIT, Patient


@pytest.fixture
async def fhir(server):
    async with aiohttp.ClientSession(server.endpoints.api_url,
                                     headers={"Authorization": f"Bearer {server.tokens['integration']}"}) as http:

        async def get(path: str, model: type | None = None, status: int = 200, **params: str):
            async with http.get(f"/fhir/r4/{path}", params=params) as resp:
                assert resp.status == status, await resp.text()
                body = await resp.json(content_type=None)
                if status == 200:
                    assert resp.content_type == "application/fhir+json"
                    return (model or Bundle).model_validate(body)
                return body

        yield get


def entries(bundle: Bundle) -> list:
    return [e.resource for e in bundle.entry or []]


async def test_metadata_is_a_capability_statement(fhir):
    cap = await fhir("metadata", CapabilityStatement)
    assert cap.fhirVersion == "4.0.1"
    assert {r.type for r in cap.rest[0].resource} == {"Device", "Observation", "Communication", "Flag"}


async def test_devices_are_the_rooms_nodes_with_their_status(server, fhir):
    await server.controller.node_hello(Hello("bedside-a", 1, 1, "fw-1.2", "esp32s3", ("button",), 10_000, 7),
                                       "127.0.0.1:5")
    bundle = await fhir("Device")
    assert bundle.total == len(server.config.nodes)
    assert {d.id for d in entries(bundle)} == set(server.config.nodes)
    device = await fhir("Device/bedside-a", Device)
    assert device.status == "active" and device.version[0].value == "fw-1.2"
    assert (await fhir("Device/bath", Device)).status == "inactive"
    missing = await fhir("Device/no-such-node", status=404)
    assert missing["error"]["code"] == "not_found"


async def test_observations_carry_loinc_and_ucum_codes(server, fhir):
    server.controller.node_reading(Reading("env", 1, 2, 0, {"temp_mdegc": 22_500, "rh_mpct": 41_000}))
    bundle = await fhir("Observation")
    by_code = {o.code.coding[-1].code: o for o in entries(bundle)}
    assert set(by_code) == {"temp_c", "rh_pct"}
    temp = by_code["temp_c"]
    assert (temp.code.coding[0].system, temp.code.coding[0].code) == ("http://loinc.org", "60832-3")
    assert (temp.valueQuantity.value, temp.valueQuantity.code) == (22.5, "Cel")
    assert temp.valueQuantity.system == "http://unitsofmeasure.org"
    assert temp.device.reference == "Device/env"
    rh = by_code["rh_pct"]
    assert rh.code.coding[0].system != "http://loinc.org" and rh.valueQuantity.code == "%"
    only = await fhir("Observation", code="http://loinc.org|60832-3")
    assert [o.id for o in entries(only)] == [temp.id]
    assert (await fhir(f"Observation/{temp.id}", Observation)).valueQuantity.value == 22.5
    await fhir("Observation/temp-c.env.1", status=404)


async def test_calls_are_communications_and_active_ones_flags(server, fhir):
    controller = server.controller
    await controller.admission("A", Patient("MRN-7", "Jane Doe", "Doe", "Jane"), ADMIT, "test", "adt-1")
    await controller.node_event(NodeEvent("bedside-a", 1, 5, 5, "button", "call", 1, 0))
    call_id = next(iter(controller.room.calls))
    comm = await fhir(f"Communication/{call_id}", Communication)
    assert comm.status == "in-progress" and comm.priority == "asap"
    assert comm.subject.display == "Jane Doe" and comm.subject.identifier.value == "MRN-7"
    assert comm.topic.coding[0].code == "patient_call"
    flags = entries(await fhir("Flag"))
    assert [(f.id, f.status, f.subject.display) for f in flags] == [(call_id, "active", "Jane Doe")]

    await controller.acknowledge(call_id, "Nurse Kim")
    await controller.clear(call_id, "Nurse Kim")
    comm = await fhir(f"Communication/{call_id}", Communication)
    assert comm.status == "completed" and comm.received is not None
    assert [n.text for n in comm.note] == ["acknowledged Nurse Kim", "cleared Nurse Kim"]
    assert entries(await fhir("Flag")) == []
    flag = await fhir(f"Flag/{call_id}", Flag)
    assert flag.status == "inactive" and flag.period.end is not None
    assert [c.id for c in entries(await fhir("Communication"))] == [call_id]
    assert entries(await fhir("Communication", sent="ge2999-01-01")) == []
    bad = await fhir("Communication", status=400, sent="yesterday")
    assert bad["error"]["code"] == "bad_parameter"
    await fhir("Flag/c000000000000", status=404)


async def test_facilities_may_not_read_patient_data(server):
    async with aiohttp.ClientSession(server.endpoints.api_url) as http:
        for role, status in (("facilities", 403), ("nurse", 200), ("admin", 200)):
            async with http.get("/fhir/r4/Communication",
                                headers={"Authorization": f"Bearer {server.tokens[role]}"}) as resp:
                assert resp.status == status


async def test_a_long_calls_notes_say_where_steps_are_left_out(server, fhir):
    controller = server.controller
    await controller.node_event(NodeEvent("bath", 1, 5, 5, "button", "cord", 1, 0))
    call_id = next(iter(controller.room.calls))
    extra = 3
    for i in range(TIMELINE_FIRST_STEPS + TIMELINE_LATEST_STEPS + extra - 1):  # after the raise
        await controller.call_delivery(call_id, f"delivered phone {i}", "alarm manager AM")
    notes = [n.text for n in (await fhir(f"Communication/{call_id}", Communication)).note]
    assert len(notes) == TIMELINE_FIRST_STEPS + TIMELINE_LATEST_STEPS + 1
    assert notes[TIMELINE_FIRST_STEPS] == f"{extra} steps between not shown (the room's event log has them)"
    assert notes[TIMELINE_FIRST_STEPS - 1].endswith(f"delivered phone {TIMELINE_FIRST_STEPS - 2}")
    assert notes[TIMELINE_FIRST_STEPS + 1].endswith(f"delivered phone {TIMELINE_FIRST_STEPS - 2 + extra + 1}")
    assert notes[-1].endswith(f"delivered phone {TIMELINE_FIRST_STEPS + TIMELINE_LATEST_STEPS + extra - 2}")
