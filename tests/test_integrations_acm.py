"""IHE PCD ACM alarm reporting: the room's calls as ORU^R40 over MLLP to an in-test Alarm Manager.

Every message the Alarm Manager receives is validated against HL7 v2.6 by hl7apy (tests/hl7peer.py).
The room runs on a fake clock (tests/roomsim.py); the MLLP traffic is real, on 127.0.0.1.
"""

from __future__ import annotations

import pytest

from integrations.acm import ACCEPTED, CURSOR, PEER
from integrations.config import AlarmManagerOptions, Integrations, ListenerOptions
from integrations.service import IntegrationService
from tests.hl7peer import AlarmManager, MllpClient, fields, ora_r41, until
from tests.roomsim import RoomSim, rules_config

FAST = dict(retry_first_s=0.01, retry_max_s=0.05, ack_timeout_s=5.0, fault_after_s=30.0)


def options(port: int, **am: float) -> Integrations:
    return Integrations(application="SMARTROOM", facility="GENHOSP", equipment_id="0123456789ABCDEF",
                        point_of_care="4B", hl7_room="412", hl7_beds={"A": "1", "B": "2"},
                        alarm_manager=AlarmManagerOptions("127.0.0.1", port, "AM", "GENHOSP", **{**FAST, **am}),
                        mllp=ListenerOptions("127.0.0.1", 0, ("127.0.0.1",)))


def obx(text: str, code: str) -> list[str]:
    """The OBX row whose OBX-3 starts with ``code``."""
    for i in range(text.count("\rOBX|")):
        row = fields(text, "OBX", i)
        if row[3].startswith(code):
            return row
    raise AssertionError(f"no OBX {code} in {text!r}")


@pytest.fixture
async def am():
    manager = AlarmManager(statuses=("delivered to phone 4411", "read by Nurse Kim"))
    await manager.start()
    yield manager
    await manager.stop()


@pytest.fixture
async def room(tmp_path):
    async with RoomSim(rules_config(), tmp_path / "room.db") as sim:
        yield sim


async def test_a_call_is_reported_from_start_to_end_and_the_alarm_managers_answers_are_on_its_timeline(am, room):
    async with IntegrationService(room.c, options(am.port)) as service:
        await room.press("bath", "cord")
        call = room.call("bath_emergency")
        await until(lambda: len(am.received) == 1 and len(am.status_acks) == 2, "the start and its statuses")
        await room.c.silence_tone("Nurse Kim")
        await room.advance(31)                       # unacknowledged high-priority call: escalates after 30 s
        await room.c.acknowledge(call["id"], "Nurse Kim")
        await room.press("door", "cancel")           # cancelled in the room: staff present, then cleared
        await until(lambda: len(am.received) == 6, "six messages")
        await until(lambda: service.reporter.stats.outbox == 0, "an empty outbox")

    assert [r.problem for r in am.received if not r.valid] == []
    texts = [r.text for r in am.received]
    phases = [obx(t, "68481^MDC_ATTR_EVENT_PHASE")[5] for t in texts]
    assert phases == ["start", "update", "escalate", "update", "update", "end"]
    assert [obx(t, "68483^")[5] for t in texts] == ["enabled", "audio-paused", "enabled", "alert-acknowledged",
                                                   "alert-acknowledged", "enabled"]
    assert [obx(t, "68482^")[5] for t in texts] == ["active"] * 5 + ["inactive"]
    assert "escalated to charge nurse (level 2)" in obx(texts[2], "1^SMR_EVENT_NOTE")[5]
    assert obx(texts[3], "1^SMR_EVENT_NOTE")[5] == "acknowledged by Nurse Kim"
    for text in texts:
        assert fields(text, "OBR")[2].split("^")[0] == call["id"]          # one alarm id from start to end
        alarm = obx(text, "196616^MDC_EVT_ALARM")
        assert alarm[8] == "A~PH~SP" and alarm[5] == "Bathroom emergency"   # high priority, a patient alarm
        assert "^bath_emergency^" in alarm[3]
        assert fields(text, "PV1")[3] == "4B^412^^GENHOSP^^^^^bathroom"  # no bed: the room, where in it
        assert fields(text, "MSH")[3] == "SMARTROOM^0123456789ABCDEF^EUI-64"
    assert len(set(am.control_ids)) == 6
    steps = [r for r in await room.c.events_after(0, 1000) if r.kind == "call.delivery"]
    statuses = [s.data["status"] for s in steps]
    assert statuses == [ACCEPTED, "delivered to phone 4411", "read by Nurse Kim"]
    assert all(s.data["call_id"] == call["id"] for s in steps)
    assert all("AA" in fields(a, "MSA")[1] for a in am.status_acks)


async def test_the_patient_is_named_where_admissions_said_who_lies_in_the_bed(am, room):
    from controller.room.hospital import ADMIT, Patient

    await room.c.admission("A", Patient("MRN-1", "Jane Doe", "Doe", "Jane", "GH"), ADMIT, "test", "adt-1")
    async with IntegrationService(room.c, options(am.port)) as service:
        await room.press("bedside-a", "call")
        await room.press("bedside-b", "call")
        await until(lambda: len(am.received) == 2, "two starts")
        await until(lambda: service.reporter.stats.outbox == 0, "an empty outbox")
    known, unknown = (r.text for r in am.received)
    assert fields(known, "PID")[3] == "MRN-1^^^GH^MR" and fields(known, "PID")[5] == "Doe^Jane"
    assert fields(known, "PV1")[3].startswith("4B^412^1^GENHOSP")  # our bed A is the hospital's bed 1
    assert obx(known, "196616^")[8] == "A~PM~SP"                   # a patient call is medium priority
    assert fields(unknown, "PID")[3] == "412/2^^^SMARTROOM^ANON"    # unknown patient: anonymous, by location
    assert fields(unknown, "PID")[5] == "^^^^^^U"
    assert all(r.valid for r in am.received)


async def test_technical_alarms_are_reported_as_technical(am, room):
    async with IntegrationService(room.c, options(am.port)) as service:
        await room.c.system_fault("ble", True, {"reason": "adapter gone"})
        await until(lambda: len(am.received) == 1, "the technical alarm")
        await until(lambda: service.reporter.stats.outbox == 0, "an empty outbox")
    assert obx(am.received[0].text, "196616^")[8] == "A~PL~ST"
    assert am.received[0].valid


async def test_an_outage_of_the_alarm_manager_loses_nothing_and_raises_a_technical_alarm(am, room):
    """The Alarm Manager is down while calls happen; when it is back, everything arrives once, in order."""
    port = am.port
    await am.stop()
    async with IntegrationService(room.c, options(port)) as service:
        reporter = service.reporter
        await room.press("bedside-a", "call")
        await room.press("bath", "cord")
        await until(lambda: reporter.stats.link_failures >= 3, "resends while the alarm manager is down")
        assert not room.c.room.call_from(None, "system:alarm_manager", "system_fault")  # 30 s not yet over
        room.clock.ms += 30_000                                          # ... now it is
        await until(lambda: room.c.room.call_from(None, "system:alarm_manager", "system_fault") is not None,
                    "the alarm-manager fault")
        await room.press("door", "cancel")                               # both calls cleared during the outage
        failures = reporter.stats.link_failures
        await until(lambda: reporter.stats.link_failures > failures, "another failed resend")
        assert am.received == []
        await am.start(port)                                             # back
        await until(lambda: reporter.stats.outbox == 0 and room.c.room.call_from(
            None, "system:alarm_manager", "system_fault") is None, "delivery and the fault cleared")
        await until(lambda: reporter.stats.outbox == 0, "the fault's own end delivered")
        queued = [cid for cid, _ in await service.outbox.outcomes(PEER)]

    assert all(r.valid for r in am.received)
    assert am.control_ids == queued                         # every message, exactly once, in the order queued
    assert len(set(am.control_ids)) == len(am.control_ids)
    log_ids = [int(cid.split("-")[-2]) for cid in am.control_ids]
    assert log_ids == sorted(log_ids)                       # in log order
    kinds = [(obx(r.text, "196616^")[3].split("^")[3], obx(r.text, "68481^")[5]) for r in am.received]
    assert kinds[:2] == [("patient_call", "start"), ("bath_emergency", "start")]
    assert ("system_fault", "start") in kinds and ("system_fault", "end") in kinds
    assert kinds.count(("patient_call", "end")) == 1 and kinds.count(("bath_emergency", "end")) == 1


async def test_queued_messages_survive_a_restart_of_the_controller(am, room):
    port = am.port
    await am.stop()
    service = IntegrationService(room.c, options(port))
    await service.start()
    await room.press("bedside-a", "call")
    await room.press("bedside-b", "call")
    await until(lambda: service.reporter.stats.queued == 2 and service.reporter.stats.link_failures >= 1,
                "two queued, undelivered")
    await service.stop()
    await room.restart(down_s=5)
    await room.press("bath", "cord")               # while integrations are not running: read from the log later
    await am.start(port)
    async with IntegrationService(room.c, options(port)) as again:
        await until(lambda: len(am.received) == 3 and again.reporter.stats.outbox == 0, "all three delivered")
    types = [obx(r.text, "196616^")[3].split("^")[3] for r in am.received]
    assert types == ["patient_call", "patient_call", "bath_emergency"]
    assert len(set(am.control_ids)) == 3


async def test_a_message_whose_ack_is_lost_is_resent_with_the_same_control_id(am, room):
    am.mode = "silent"
    # 1 s: short enough for a quick resend while the manager is silent, long enough that its ACKs
    # still arrive in time on a saturated machine (0.2 s did not, under pytest-xdist)
    async with IntegrationService(room.c, options(am.port, ack_timeout_s=1.0)) as service:
        await room.press("bedside-a", "call")
        await until(lambda: len(am.received) >= 2, "a resend after the ACK timeout")
        am.mode = "AA"
        await until(lambda: service.reporter.stats.outbox == 0, "the ACK of a resend")
    first = am.received[0]
    assert all(r.control_id == first.control_id and r.text == first.text for r in am.received)
    assert service.reporter.stats.resent >= 1


async def test_a_rejected_message_is_shown_on_the_call_and_raises_a_technical_alarm(am, room):
    am.mode = "AR"
    async with IntegrationService(room.c, options(am.port)) as service:
        await room.press("bedside-a", "call")
        call = room.call("patient_call")
        await until(lambda: room.c.room.call_from(None, "system:alarm_manager", "system_fault") is not None,
                    "the fault")
        timeline = room.c.room.calls[call["id"]].timeline
        assert [s["status"] for s in timeline if s["step"] == "delivery"] == [
            "rejected by the alarm manager (start): test NAK"]
        am.mode = "AA"
        await room.press("bedside-b", "call")     # the next message is accepted: the link works again
        await until(lambda: room.c.room.call_from(None, "system:alarm_manager", "system_fault") is None,
                    "the fault cleared")
        assert service.reporter.stats.rejected >= 1


async def test_an_error_ack_is_resent_until_accepted(am, room):
    am.mode = "AE"
    async with IntegrationService(room.c, options(am.port)) as service:
        await room.press("bedside-a", "call")
        call = room.call("patient_call")
        await until(lambda: len(am.received) >= 3, "resends after AE")
        am.mode = "AA"
        await until(lambda: service.reporter.stats.outbox == 0, "accepted")
    steps = [s["status"] for s in room.c.room.calls[call["id"]].timeline if s["step"] == "delivery"]
    assert steps[:2] == ["alarm manager error (start), resending: test NAK", ACCEPTED]  # the NAK noted once


async def test_status_can_also_come_in_on_the_listener(am, room):
    async with IntegrationService(room.c, options(am.port)) as service:
        await room.press("bedside-a", "call")
        call = room.call("patient_call")
        client = await MllpClient.connect(service.listener.port)
        ack = await client.send(ora_r41(call["id"], "declined by Nurse Lee", "AM-9"))
        bad = await client.send("MSH|^~\\&|AM|H|SR||2026||ORA^R41^ORA_R41|AM-10|P|2.6\rOBR|1|")
        await client.close()
    assert fields(ack, "MSA")[1:3] == ["AA", "AM-9"]
    assert fields(bad, "MSA")[1] == "AE" and "OBR-2" in fields(bad, "ERR")[8]
    steps = [s["status"] for s in room.c.room.calls[call["id"]].timeline if s["step"] == "delivery"]
    assert "declined by Nurse Lee" in steps


async def test_reporting_starts_with_the_calls_open_now_not_the_rooms_history(am, room):
    await room.press("bedside-a", "call")
    await room.press("door", "cancel")           # an old, finished call: not reported
    await room.press("bath", "cord")             # open when reporting starts: reported as a start
    now = room.c.room.cursor
    async with IntegrationService(room.c, options(am.port)) as service:
        await until(lambda: len(am.received) == 1 and service.reporter.stats.outbox == 0, "the open call")
        cursor, _ = await service.outbox.cursor(CURSOR)
    assert obx(am.received[0].text, "196616^")[3].split("^")[3] == "bath_emergency"
    assert cursor == now                         # saved with the start it sent; the history before is skipped


async def test_mllp_over_tls_to_the_alarm_manager_and_on_the_listener(tmp_path, room):
    """Both directions over TLS, with certificates checked: the reporter trusts only the given CA."""
    import ssl

    from controller.security.tls import load_or_create, ssl_context
    from integrations.config import TlsOptions

    am_tls = load_or_create(tmp_path / "am.pem", tmp_path / "am.key", ["127.0.0.1"])
    room_tls = load_or_create(tmp_path / "room.pem", tmp_path / "room.key", ["127.0.0.1"])
    manager = AlarmManager()
    await manager.start(ssl_context=ssl_context(am_tls))
    base = options(manager.port)
    opts = Integrations(**{**{f: getattr(base, f) for f in base.__dataclass_fields__},
                           "alarm_manager": AlarmManagerOptions(
                               "127.0.0.1", manager.port, tls=TlsOptions(ca=str(tmp_path / "am.pem")), **FAST),
                           "mllp": ListenerOptions("127.0.0.1", 0, ("127.0.0.1",), TlsOptions(
                               cert=str(tmp_path / "room.pem"), key=str(tmp_path / "room.key")))})
    try:
        async with IntegrationService(room.c, opts) as service:
            await room.press("bedside-a", "call")
            await until(lambda: len(manager.received) == 1 and service.reporter.stats.outbox == 0, "delivery")
            trusting = ssl.create_default_context(cafile=str(tmp_path / "room.pem"))
            client = await MllpClient.connect(service.listener.port, trusting)
            ack = await client.send(ora_r41(room.call("patient_call")["id"], "read", "AM-1"))
            await client.close()
            assert fields(ack, "MSA")[1] == "AA"
            with pytest.raises(ssl.SSLError):  # a peer that does not trust our certificate cannot talk
                await MllpClient.connect(service.listener.port, ssl.create_default_context())
    finally:
        await manager.stop()
    assert manager.received[0].valid


async def test_the_reporter_refuses_an_alarm_manager_it_does_not_trust(tmp_path, room):
    from controller.security.tls import load_or_create, ssl_context
    from integrations.config import TlsOptions

    am_tls = load_or_create(tmp_path / "am.pem", tmp_path / "am.key", ["127.0.0.1"])
    load_or_create(tmp_path / "other.pem", tmp_path / "other.key", ["127.0.0.1"])
    manager = AlarmManager()
    await manager.start(ssl_context=ssl_context(am_tls))
    opts = Integrations(hl7_room="412", alarm_manager=AlarmManagerOptions(
        "127.0.0.1", manager.port, tls=TlsOptions(ca=str(tmp_path / "other.pem")), **FAST))
    try:
        async with IntegrationService(room.c, opts) as service:
            await room.press("bedside-a", "call")
            await until(lambda: service.reporter.stats.link_failures >= 2, "failed handshakes")
            assert "CERTIFICATE_VERIFY_FAILED" in service.reporter.stats.last_error
    finally:
        await manager.stop()
    assert manager.received == []


# ---------------------------------------------------------------------------------- heartbeat
def _am_metrics(service) -> dict[str, float]:
    """The alarm manager's figures as /metrics shows them (room_api/metrics.py)."""
    from prometheus_client.parser import text_string_to_metric_families

    from room_api.metrics import Metrics

    text = Metrics(service.controller, lambda: None, lambda: 0, integrations=lambda: service).render().decode()
    return {s.name.removeprefix("smartroom_alarm_manager_").removesuffix("_total"): s.value
            for f in text_string_to_metric_families(text) for s in f.samples
            if s.name.startswith("smartroom_alarm_manager_") and not s.name.endswith("_created")}


def _fault(room):
    return room.c.room.call_from(None, "system:alarm_manager", "system_fault")


async def test_an_idle_link_is_checked_by_heartbeats_that_are_not_alarms(am, room):
    """No call for a while: the reporter sends ACM heartbeats (196614^MDC_EVT_ACTIVE), valid ORU^R40s,
    each with its own control id, and none of them is an alarm or touches a call."""
    async with IntegrationService(room.c, options(am.port, heartbeat_s=0.02)) as service:
        await until(lambda: len(am.heartbeats) >= 3, "three heartbeats")
        await room.press("bedside-a", "call")                # an alarm between heartbeats goes as before
        await until(lambda: len(am.received) == 1, "the call's start")
        count = len(am.heartbeats)
        await until(lambda: len(am.heartbeats) > count, "heartbeats again once the outbox is empty")
        stats = service.reporter.stats
    assert all(h.valid for h in am.heartbeats), [h.problem for h in am.heartbeats if not h.valid]
    assert len({h.control_id for h in am.heartbeats}) == len(am.heartbeats)
    for h in am.heartbeats:
        assert fields(h.text, "OBR")[4] == "196614^MDC_EVT_ACTIVE^MDC"
        assert obx(h.text, "196614^MDC_EVT_ACTIVE")[5] == "heartbeat"
        assert "196616^" not in h.text                     # no alarm in it
    assert [obx(r.text, "68481^")[5] for r in am.received] == ["start"]
    assert stats.heartbeats >= len(am.heartbeats) - 1 and stats.heartbeats_refused == 0
    assert _fault(room) is None


async def test_a_dead_link_with_no_call_waiting_raises_the_fault_after_fault_after_s_and_clears_when_back(am, room):
    """Fail loud before a call needs the link: with nothing to send, the heartbeat finds the alarm manager
    gone; the fault comes at fault_after_s after its last answer exactly (not a second before), and goes
    when a heartbeat is answered again."""
    port = am.port
    async with IntegrationService(room.c, options(port, heartbeat_s=0.02)) as service:
        reporter = service.reporter
        await until(lambda: reporter.stats.heartbeats >= 1, "a first answered heartbeat")
        await am.stop()
        room.clock.ms += 29_999                            # 1 ms short of fault_after_s (30 s) since the answer
        failures = reporter.stats.link_failures
        await until(lambda: reporter.stats.link_failures >= failures + 2, "failed heartbeats")
        assert _fault(room) is None
        assert reporter.stats.outbox == 0                  # nothing was waiting: only the heartbeat saw it
        room.clock.ms += 1
        await until(lambda: _fault(room) is not None, "the alarm-manager fault")
        assert "has not answered for 30 s (heartbeat)" in _fault(room).detail["reason"]
        assert _am_metrics(service) | {"heartbeats": 0} == {"connected": 0, "outbox": 0, "acked": 0, "rejected": 0,
                                                            "link_failures": reporter.stats.link_failures,
                                                            "heartbeats": 0}
        assert _am_metrics(service)["link_failures"] >= 2 and _am_metrics(service)["heartbeats"] >= 1
        await am.start(port)
        await until(lambda: _fault(room) is None, "the fault cleared by an answered heartbeat")
        await until(lambda: reporter.stats.outbox == 0 and len(am.received) >= 2, "the fault's start and end")
    kinds = [(obx(r.text, "196616^")[3].split("^")[3], obx(r.text, "68481^")[5]) for r in am.received]
    assert kinds == [("system_fault", "start"), ("system_fault", "end")]


async def test_a_rejection_fault_is_not_cleared_by_a_heartbeat(am, room):
    """A rejected alarm is lost to the alarm manager: an answered heartbeat proves the link, not that
    alarms are taken, so the fault stays until an alarm is accepted again."""
    am.mode = "AR"
    async with IntegrationService(room.c, options(am.port, heartbeat_s=0.02)) as service:
        await room.press("bedside-a", "call")
        await until(lambda: _fault(room) is not None, "the rejection fault")
        await until(lambda: service.reporter.stats.heartbeats_refused >= 2, "heartbeats, refused too")
        assert _fault(room) is not None
        am.mode = "AA"
        count = service.reporter.stats.heartbeats
        await until(lambda: service.reporter.stats.heartbeats >= count + 2, "answered heartbeats")
        assert _fault(room) is not None                    # the link works; alarms are still not known taken
        await room.press("bath", "cord")                   # an alarm accepted: now the fault goes
        await until(lambda: _fault(room) is None, "the fault cleared by an accepted alarm")
