"""Tests for controller.room.reports: response times reconstructed from hand-built event logs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.room.reports import CallTimes, nearest_rank, parse_time, response_times
from controller.store import LogRecord

T0 = 1_795_946_400_000  # 2026-11-29T10:00:00Z


def at(seconds: float) -> int:
    """Epoch ms ``seconds`` after T0."""
    return T0 + round(seconds * 1000)


@dataclass
class Log:
    """Builds a log by hand: each method appends one record (ids and ts_ms follow the call order)."""

    records: list[LogRecord] = field(default_factory=list)

    def add(self, kind: str, t: float, **data: Any) -> Log:
        ms = at(t)
        self.records.append(LogRecord(len(self.records) + 1, ms, kind, {**data, "at_ms": ms}))
        return self

    def raised(self, cid: str, t: float, level: str | None = "high", type: str = "patient_call",
               bed: str | None = "A", node: str | None = "bedside-a", input: str | None = "call") -> Log:
        data: dict[str, Any] = {"call_id": cid, "type": type, "node": node, "input": input, "bed": bed,
                                "by": f"{node}/{input}", "detail": {}}
        if level is not None:
            data["level"] = level
        return self.add("call.raised", t, **data)

    def annunciated(self, cid: str, t: float, by: str = "station-1") -> Log:
        return self.add("call.annunciated", t, call_id=cid, by=by)

    def ack(self, cid: str, t: float, by: str = "nurse Kim") -> Log:
        return self.add("call.acknowledged", t, call_id=cid, by=by)

    def present(self, cid: str, t: float, by: str = "nurse Kim") -> Log:
        return self.add("call.present", t, call_id=cid, by=by)

    def cleared(self, cid: str, t: float, by: str = "nurse Kim", how: str = "presence") -> Log:
        return self.add("call.cleared", t, call_id=cid, by=by, how=how)

    def reminded(self, cid: str, t: float, n: int) -> Log:
        return self.add("call.reminded", t, call_id=cid, n=n, due_ms=at(t))

    def escalated(self, cid: str, t: float, level: int, to: str = "charge nurse") -> Log:
        return self.add("call.escalated", t, call_id=cid, level=level, to=to, due_ms=at(t))

    def repeated(self, cid: str, t: float, presses: int) -> Log:
        return self.add("call.repeated", t, call_id=cid, presses=presses)

    def other(self, kind: str, t: float, **data: Any) -> Log:
        return self.add(kind, t, **data)


def report(log: Log, from_s: float = -3600, to_s: float = 3600) -> dict[str, Any]:
    return response_times(log.records, at(from_s), at(to_s))


def only_call(log: Log, **window: float) -> dict[str, Any]:
    calls = report(log, **window)["calls"]
    assert len(calls) == 1
    return calls[0]


# ------------------------------------------------------------------------------ durations
@pytest.mark.parametrize(
    ("build", "expected"),
    [
        pytest.param(lambda L: L.raised("c", 0).ack("c", 12).present("c", 45).cleared("c", 60),
                     (12.0, 45.0, 60.0), id="full lifecycle"),
        pytest.param(lambda L: L.raised("c", 0).ack("c", 0.25), (0.25, None, None), id="ack only, ms precision"),
        pytest.param(lambda L: L.raised("c", 0).present("c", 30).cleared("c", 30),
                     (None, 30.0, 30.0), id="presence clears without ack"),
        pytest.param(lambda L: L.raised("c", 0).cleared("c", 5, how="in_room_cancel"),
                     (None, None, 5.0), id="cancelled at bedside"),
        pytest.param(lambda L: L.raised("c", 0), (None, None, None), id="nothing happened"),
        pytest.param(lambda L: L.raised("c", 10).annunciated("c", 10.5).ack("c", 20).cleared("c", 25),
                     (10.0, None, 15.0), id="durations are from the raise, not from T0"),
    ],
)
def test_durations(build, expected):
    call = only_call(build(Log()))
    assert (call["to_ack_s"], call["to_present_s"], call["to_clear_s"]) == expected


def test_call_fields():
    log = (Log().raised("c1", 0, level="medium", type="bed_exit", bed="B", node="bed-b", input="exit")
           .annunciated("c1", 1).repeated("c1", 2, presses=2).repeated("c1", 3, presses=3)
           .escalated("c1", 60, level=2).escalated("c1", 120, level=3)
           .ack("c1", 130, by="nurse Lee").present("c1", 140, by="nurse Ana")
           .cleared("c1", 150, by="bedside-b/cancel", how="in_room_cancel"))
    assert only_call(log) == {
        "call_id": "c1", "type": "bed_exit", "level": "medium", "bed": "B", "source": "bed-b/exit",
        "raised_at_ms": at(0), "annunciated_at_ms": at(1),
        "acknowledged_at_ms": at(130), "acknowledged_by": "nurse Lee",
        "present_at_ms": at(140), "present_by": "nurse Ana",
        "cleared_at_ms": at(150), "cleared_by": "bedside-b/cancel", "cleared_how": "in_room_cancel",
        "escalations": 3, "reminders": 0, "presses": 3, "patient": None,
        "to_ack_s": 130.0, "to_present_s": 140.0, "to_clear_s": 150.0, "open": False,
    }


def test_defaults_when_never_escalated_reminded_or_repeated():
    call = only_call(Log().raised("c", 0).cleared("c", 1))
    assert (call["escalations"], call["reminders"], call["presses"]) == (1, 0, 1)


def test_source_is_none_without_node_or_input():
    assert only_call(Log().raised("c", 0, node=None, input=None))["source"] is None


def test_calltimes_properties():
    c = CallTimes("c", "fall", "high", "A", "wear-1/fall", raised_at_ms=1000, acknowledged_at_ms=3500)
    assert (c.to_ack_s, c.to_present_s, c.to_clear_s, c.open) == (2.5, None, None, True)


# ------------------------------------------------------------------------------ first-ack semantics
def test_first_ack_counts_when_reacknowledged_after_reminder():
    log = (Log().raised("c", 0).ack("c", 20, by="nurse Kim")
           .reminded("c", 120, n=1).ack("c", 150, by="nurse Lee")
           .reminded("c", 240, n=2).ack("c", 260, by="nurse Lee")
           .present("c", 300, by="nurse Lee").present("c", 310, by="nurse Kim").cleared("c", 320))
    rep = report(log)
    call = rep["calls"][0]
    assert (call["acknowledged_at_ms"], call["acknowledged_by"], call["to_ack_s"]) == (at(20), "nurse Kim", 20.0)
    assert (call["present_at_ms"], call["present_by"]) == (at(300), "nurse Lee")
    assert call["reminders"] == 2
    assert rep["tiers"]["high"]["acknowledged"] == 1
    assert rep["responders"] == {"nurse Kim": {"acknowledged": 1, "present": 0},
                                 "nurse Lee": {"acknowledged": 0, "present": 1}}


# ------------------------------------------------------------------------------ window
@pytest.mark.parametrize(
    ("raised_s", "included"),
    [(-0.001, False), (0, True), (30, True), (59.999, True), (60, False), (61, False)],
)
def test_window_boundaries(raised_s, included):
    rep = report(Log().raised("c", raised_s), from_s=0, to_s=60)
    assert [c["call_id"] for c in rep["calls"]] == (["c"] if included else [])
    assert (rep["from_ms"], rep["to_ms"]) == (at(0), at(60))


def test_transitions_after_window_still_count():
    log = Log().raised("c", 50).ack("c", 70).present("c", 600).cleared("c", 3000)
    call = only_call(log, from_s=0, to_s=60)
    assert (call["to_ack_s"], call["to_present_s"], call["to_clear_s"], call["open"]) == (20.0, 550.0, 2950.0, False)


def test_call_raised_before_window_is_left_out_even_if_cleared_inside():
    log = Log().raised("old", -10).ack("old", 5).cleared("old", 10).raised("new", 20)
    rep = report(log, from_s=0, to_s=60)
    assert [c["call_id"] for c in rep["calls"]] == ["new"]
    assert rep["responders"] == {}
    assert rep["tiers"]["high"]["count"] == 1


def test_empty_window_and_reversed_window():
    log = Log().raised("c", 0)
    assert report(log, from_s=0, to_s=0)["calls"] == []
    with pytest.raises(ValueError, match="before"):
        report(log, from_s=10, to_s=0)


def test_calls_ordered_by_raise_time():
    # Log order is not always raise order (e.g. a record written late): the report sorts by raise time.
    log = Log().raised("b", 20).raised("a", 10).raised("c", 30).raised("d", 10)
    assert [c["call_id"] for c in report(log)["calls"]] == ["a", "d", "b", "c"]


# ------------------------------------------------------------------------------ open calls
def test_open_calls():
    log = Log().raised("open1", 0).ack("open1", 5).raised("open2", 10).raised("done", 20).cleared("done", 30)
    rep = report(log)
    by_id = {c["call_id"]: c for c in rep["calls"]}
    assert by_id["open1"]["open"] is True and by_id["open2"]["open"] is True
    assert by_id["done"]["open"] is False
    assert by_id["open1"]["to_ack_s"] == 5.0
    for key in ("cleared_at_ms", "cleared_by", "cleared_how", "to_clear_s", "present_at_ms", "to_present_s"):
        assert by_id["open1"][key] is None
    assert by_id["open2"]["acknowledged_at_ms"] is None and by_id["open2"]["to_ack_s"] is None
    assert rep["tiers"]["high"]["cleared"] == 1


# ------------------------------------------------------------------------------ tiers
def test_tier_median_and_p90_on_known_numbers():
    log = Log()
    for i, ack_s in enumerate([30, 10, 50, 20, 40]):  # log order deliberately unsorted
        cid = f"h{i}"
        log.raised(cid, i * 100).ack(cid, i * 100 + ack_s)
        if i < 4:
            log.cleared(cid, i * 100 + ack_s + 10 * (i + 1))  # clears at 40, 30, 80, 60 s
    tier = report(log)["tiers"]["high"]
    assert (tier["count"], tier["acknowledged"], tier["present"], tier["cleared"]) == (5, 5, 0, 4)
    assert tier["to_ack_s"] == {"median": 30.0, "p90": 50.0}
    assert tier["to_present_s"] == {"median": None, "p90": None}
    assert tier["to_clear_s"] == {"median": 50.0, "p90": 80.0}  # even count: mean of the middle two


def test_one_tier_entry_per_level_present_in_severity_order():
    log = (Log().raised("i", 0, level="info").raised("l", 1, level="low").raised("h", 2, level="high")
           .raised("x", 3, level=None).ack("l", 11))
    tiers = report(log)["tiers"]
    assert list(tiers) == ["high", "low", "info", "unknown"]
    assert tiers["low"]["to_ack_s"] == {"median": 10.0, "p90": 10.0}
    assert tiers["info"] == {"count": 1, "acknowledged": 0, "present": 0, "cleared": 0,
                             "to_ack_s": {"median": None, "p90": None},
                             "to_present_s": {"median": None, "p90": None},
                             "to_clear_s": {"median": None, "p90": None}}


def test_empty_log():
    assert report(Log()) == {"from_ms": at(-3600), "to_ms": at(3600), "calls": [], "tiers": {}, "responders": {}}


# ------------------------------------------------------------------------------ nearest rank
@pytest.mark.parametrize(
    ("values", "pct", "expected"),
    [
        ([], 90, None),
        ([7], 90, 7),
        ([10, 20, 30, 40, 50], 90, 50),      # ceil(4.5) = rank 5
        ([10, 20, 30, 40, 50], 80, 40),      # ceil(4.0) = rank 4: exactly 80 % are <= 40
        ([10, 20, 30, 40, 50], 50, 30),      # ceil(2.5) = rank 3
        (list(range(1, 11)), 90, 9),         # ceil(9.0) = rank 9
        (list(range(1, 21)), 90, 18),        # ceil(18.0) = rank 18
        (list(range(1, 12)), 90, 10),        # ceil(9.9) = rank 10
        ([3, 1, 2, 4], 50, 2),               # unsorted input; ceil(2.0) = rank 2
        ([3, 1, 2, 4], 100, 4),
        ([5, 1, 3], 1, 1),                   # ceil(0.03) = rank 1
        ([1.5, 1.5, 9.0], 90, 9.0),
    ],
)
def test_nearest_rank(values, pct, expected):
    assert nearest_rank(values, pct) == expected


@pytest.mark.parametrize("values", [[1], [4, 2, 9, 9, 1], list(range(37)), [0.1 * i for i in range(13)]])
@pytest.mark.parametrize("pct", [1, 25, 50, 90, 99, 100])
def test_nearest_rank_matches_its_definition(values, pct):
    # The smallest v in values such that at least pct % of the values are <= v.
    v = nearest_rank(values, pct)
    share = lambda x: sum(1 for y in values if y <= x) / len(values) * 100  # noqa: E731
    assert share(v) >= pct
    assert all(share(w) < pct for w in values if w < v)


@pytest.mark.parametrize("pct", [0, -5, 100.1])
def test_nearest_rank_rejects_bad_percentile(pct):
    with pytest.raises(ValueError, match="percentile"):
        nearest_rank([1, 2, 3], pct)


# ------------------------------------------------------------------------------ responders
def test_responders_tally():
    log = (Log()
           .raised("a", 0).ack("a", 5, by="nurse Kim").present("a", 20, by="nurse Kim").cleared("a", 30)
           .raised("b", 40).ack("b", 45, by="nurse Kim").present("b", 60, by="nurse Lee")
           .raised("c", 70).ack("c", 75, by="dashboard@10.0.0.5")
           .raised("d", 80).present("d", 90, by="nurse Kim").cleared("d", 95, by="bedside-a/cancel")
           .raised("e", 100))
    assert report(log)["responders"] == {
        "nurse Kim": {"acknowledged": 2, "present": 2},
        "nurse Lee": {"acknowledged": 0, "present": 1},
        "dashboard@10.0.0.5": {"acknowledged": 1, "present": 0},
    }


def test_responder_without_by_is_unknown():
    log = Log().raised("c", 0)
    log.records.append(LogRecord(99, at(5), "call.acknowledged", {"call_id": "c", "at_ms": at(5)}))
    assert report(log)["responders"] == {"unknown": {"acknowledged": 1, "present": 0}}


# ------------------------------------------------------------------------------ robustness
def test_unknown_call_ids_and_other_kinds_are_ignored():
    log = (Log().other("node.online", 0, node="bedside-a", boot=1, fw="1", hw="x", caps=[], peer="p")
           .ack("ghost", 1).present("ghost", 2).cleared("ghost", 3).reminded("ghost", 4, n=1)
           .raised("c", 10).other("presence.changed", 11, area="room", present=True, node="door", input="pir")
           .other("node.event", 12, call_id="c", node="bedside-a")
           .ack("ghost", 13).cleared("c", 20))
    rep = report(log)
    assert [c["call_id"] for c in rep["calls"]] == ["c"]
    assert rep["calls"][0]["to_ack_s"] is None and rep["calls"][0]["to_clear_s"] == 10.0
    assert rep["responders"] == {}


def test_transitions_logged_before_the_raise_are_ignored():
    log = Log().ack("c", 0).raised("c", 5).ack("c", 15)
    assert only_call(log)["to_ack_s"] == 10.0


def test_duplicate_transitions():
    log = (Log().raised("c", 0).raised("c", 3)  # a duplicated raise does not restart the call
           .annunciated("c", 1).annunciated("c", 2)
           .ack("c", 10, by="nurse Kim").ack("c", 10, by="nurse Kim")
           .reminded("c", 60, n=1).reminded("c", 60, n=1)  # same reminder logged twice counts once
           .escalated("c", 70, level=3).escalated("c", 80, level=2)  # max level, not the last
           .repeated("c", 85, presses=4).repeated("c", 86, presses=2)
           .present("c", 90, by="nurse Kim").present("c", 95, by="nurse Lee")
           .cleared("c", 100, by="nurse Kim", how="presence")
           .cleared("c", 120, by="dashboard@10.0.0.5", how="api")
           .ack("c", 130, by="nurse Lee").reminded("c", 140, n=2))  # after the clear: ignored
    rep = report(log)
    call = rep["calls"][0]
    assert call["raised_at_ms"] == at(0)
    assert call["annunciated_at_ms"] == at(1)
    assert (call["acknowledged_by"], call["to_ack_s"]) == ("nurse Kim", 10.0)
    assert (call["reminders"], call["escalations"], call["presses"]) == (1, 3, 4)
    assert (call["present_by"], call["to_present_s"]) == ("nurse Kim", 90.0)
    assert (call["cleared_by"], call["cleared_how"], call["to_clear_s"]) == ("nurse Kim", "presence", 100.0)
    assert rep["tiers"]["high"]["cleared"] == 1
    assert rep["responders"] == {"nurse Kim": {"acknowledged": 1, "present": 1}}


def test_raised_again_inside_window_after_first_raise_before_it_is_ignored():
    log = Log().raised("c", -5).raised("c", 5)
    assert report(log, from_s=0, to_s=60)["calls"] == []


def test_malformed_records_are_skipped():
    log = Log().raised("c", 0)
    log.records += [
        LogRecord(50, at(1), "call.acknowledged", {"by": "nurse Kim", "at_ms": at(1)}),  # no call_id
        LogRecord(51, at(2), "call.escalated", {"call_id": "c", "level": "two", "at_ms": at(2)}),
        LogRecord(52, at(3), "call.present", {"call_id": "c", "by": "nurse Kim"}),  # no at_ms: ts_ms is used
        LogRecord(53, at(4), "call.reminded", {"call_id": "c", "n": [1], "at_ms": at(4)}),  # odd n: counted by record
        LogRecord(54, at(5), "call.reminded", {"call_id": "c", "at_ms": at(5)}),
    ]
    call = only_call(log)
    assert (call["to_ack_s"], call["escalations"], call["to_present_s"], call["reminders"]) == (None, 1, 3.0, 2)


def test_report_is_json_serialisable():
    log = Log().raised("c", 0).ack("c", 1).present("c", 2).cleared("c", 3).raised("d", 4, level=None)
    rep = report(log)
    assert json.loads(json.dumps(rep)) == rep


def test_accepts_a_generator_and_reads_it_once():
    log = Log().raised("c", 0).ack("c", 7)
    consumed = []

    def records():
        for r in log.records:
            consumed.append(r.id)
            yield r

    assert response_times(records(), at(-1), at(1))["calls"][0]["to_ack_s"] == 7.0
    assert consumed == [1, 2]


# ------------------------------------------------------------------------------ parse_time
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("1795946400000", T0),
        ("  1795946400000 ", T0),
        ("2026-11-29T10:00:00Z", T0),
        ("2026-11-29T10:00:00z", T0),
        ("2026-11-29T10:00:00+00:00", T0),
        ("2026-11-29T10:00:00+01:00", T0 - 3_600_000),
        ("2026-11-29T10:00:00 01:00", T0 - 3_600_000),  # '+' decoded to a space in a query string
        ("2026-11-29T05:30:00-04:30", T0),
        ("2026-11-29T10:00:00", T0),                    # naive: UTC
        ("2026-11-29 10:00:00", T0),
        ("2026-11-29T10:00", T0),
        ("2026-11-29T10:00:00.250Z", T0 + 250),
        ("2026-11-29T10:00:00.250999Z", T0 + 250),      # sub-ms truncated
        ("2026-11-29", T0 - 10 * 3_600_000),            # date only: midnight UTC
        ("1970-01-01", 0),
        ("1970-01-01T00:00:00.001Z", 1),
    ],
)
def test_parse_time(text, expected):
    assert parse_time(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "   ", "now", "yesterday", "-5", "1.5", "1e12", "0x10", "2026-13-01", "2026-11-31",
     "2026-11-29T25:00:00Z", "2026-11-29T10:00:00+25:00", "2026-11-29T10:00:00Zjunk", "29/11/2026",
     "Sun, 29 Nov 2026 10:00:00 GMT", "T10:00:00"],
)
def test_parse_time_rejects(text):
    with pytest.raises(ValueError, match="expected epoch milliseconds .* or ISO 8601"):
        parse_time(text)


def test_parse_time_rejects_non_strings():
    with pytest.raises(ValueError, match="must be a string"):
        parse_time(1795946400000)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ property
OPTIONAL_DELAY_MS = st.one_of(st.none(), st.integers(min_value=0, max_value=600_000))


@st.composite
def lifecycles(draw) -> tuple[list[LogRecord], int, int, list[int]]:
    """Random calls with non-decreasing step times, interleaved in time order like the real log."""
    n = draw(st.integers(min_value=0, max_value=12))
    events: list[tuple[int, int, str, dict[str, Any]]] = []  # (at_ms, order, kind, data)
    raised_at: list[int] = []
    for i in range(n):
        cid = f"c{i}"
        t = draw(st.integers(min_value=0, max_value=3_600_000))
        level = draw(st.sampled_from(["high", "medium", "low", "info"]))
        raised_at.append(t)
        steps = [("call.raised", t, {"type": "patient_call", "level": level, "node": "n", "input": "i",
                                     "bed": "A", "by": "n/i", "detail": {}})]
        ack, present, clear = draw(OPTIONAL_DELAY_MS), draw(OPTIONAL_DELAY_MS), draw(OPTIONAL_DELAY_MS)
        if ack is not None:
            steps.append(("call.acknowledged", t + ack, {"by": draw(st.sampled_from(["nurse Kim", "nurse Lee"]))}))
            if draw(st.booleans()):  # reminder and re-acknowledgement
                steps.append(("call.reminded", t + ack + 1, {"n": 1, "due_ms": t + ack + 1}))
                steps.append(("call.acknowledged", t + ack + 2, {"by": "nurse Lee"}))
        if present is not None:
            steps.append(("call.present", t + present, {"by": "nurse Kim"}))
        if clear is not None:
            last = max(s[1] for s in steps)
            steps.append(("call.cleared", last + clear, {"by": "nurse Kim", "how": "presence"}))
        events += [(ms, len(events) + k, kind, {"call_id": cid, **d, "at_ms": ms})
                   for k, (kind, ms, d) in enumerate(steps)]
    if draw(st.booleans()):  # noise: transitions for a call nobody raised
        events.append((draw(st.integers(0, 3_600_000)), len(events), "call.acknowledged",
                       {"call_id": "ghost", "by": "nurse X", "at_ms": 0}))
    events.sort(key=lambda e: (e[0], e[1]))
    records = [LogRecord(i + 1, ms, kind, data) for i, (ms, _, kind, data) in enumerate(events)]
    a = draw(st.integers(min_value=0, max_value=3_600_000))
    b = draw(st.integers(min_value=0, max_value=3_600_000))
    return records, min(a, b), max(a, b), raised_at


@settings(max_examples=300, deadline=None)
@given(lifecycles())
def test_property_lifecycles(case):
    records, from_ms, to_ms, raised_at = case
    rep = response_times(records, from_ms, to_ms)
    expected = sum(1 for t in raised_at if from_ms <= t < to_ms)
    assert len(rep["calls"]) == expected
    assert sum(tier["count"] for tier in rep["tiers"].values()) == expected
    assert sum(r["acknowledged"] for r in rep["responders"].values()) == \
        sum(tier["acknowledged"] for tier in rep["tiers"].values())
    assert [c["raised_at_ms"] for c in rep["calls"]] == sorted(c["raised_at_ms"] for c in rep["calls"])
    for call in rep["calls"]:
        assert from_ms <= call["raised_at_ms"] < to_ms
        assert call["open"] is (call["cleared_at_ms"] is None)
        for key in ("to_ack_s", "to_present_s", "to_clear_s"):
            assert call[key] is None or call[key] >= 0
        if call["to_ack_s"] is not None and call["to_clear_s"] is not None:
            assert call["to_ack_s"] <= call["to_clear_s"]
        if call["to_present_s"] is not None and call["to_clear_s"] is not None:
            assert call["to_present_s"] <= call["to_clear_s"]
