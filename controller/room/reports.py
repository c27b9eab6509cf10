"""Response-time reports computed from the room's append-only event log.

Pure functions over :class:`~controller.store.LogRecord` sequences: no I/O, no clock. The API
reads the log and hands the records here.

A call's lifecycle is reconstructed in one pass over the records in log order:

* ``call.raised`` opens a call. Only calls **raised** in the half-open window
  ``[from_ms, to_ms)`` (by the raise's ``at_ms``) are reported; their later transitions count
  even when they happen after ``to_ms`` (a call raised in the window and cleared later shows
  its clear time). A second ``call.raised`` for an id already seen is ignored.
* ``call.annunciated``, ``call.acknowledged`` and ``call.present``: the **first** one counts
  (a call acknowledged again after a reminder keeps its first acknowledgement).
* ``call.escalated``: the highest escalation level reached (1 when never escalated).
* ``call.reminded``: the number of distinct reminders (by ``n``; a duplicated record counts once).
* ``call.repeated``: the highest press count seen (1 when never repeated).
* ``call.cleared``: the first one closes the call; transitions logged after it are ignored.
* Transitions for call ids not raised in the window, and all other record kinds, are ignored.

Durations are float seconds from the raise. Tier statistics are the median
(:func:`statistics.median`) and the 90th percentile by the nearest-rank method
(:func:`nearest_rank`) over the calls that reached that step.

Also :func:`parse_time`, the parser for the API's ``from``/``to`` query parameters.
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any, Iterable, Mapping, Sequence

from ..store import LogRecord

#: IEC 60601-1-8 alarm tiers, most urgent first; this is the order of the report's ``tiers``.
TIER_ORDER: tuple[str, ...] = ("high", "medium", "low", "info")
#: Tier key for calls whose ``call.raised`` carries no ``level``.
UNKNOWN_TIER = "unknown"
#: Responder key for transitions that carry no ``by``.
UNKNOWN_RESPONDER = "unknown"

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MS = timedelta(milliseconds=1)
_EPOCH_MS_RE = re.compile(r"\d+")
_SPACE_OFFSET_RE = re.compile(r"(T\d{2}(?::?\d{2}(?::?\d{2}(?:[.,]\d+)?)?)?) (\d{2}(?::?\d{2})?)$")


# ---------------------------------------------------------------------------------- call times
@dataclass(frozen=True, slots=True)
class CallTimes:
    """The timeline of one call, as reconstructed from the log."""

    call_id: str
    type: str | None
    level: str | None
    bed: str | None
    source: str | None
    raised_at_ms: int
    annunciated_at_ms: int | None = None
    acknowledged_at_ms: int | None = None
    acknowledged_by: str | None = None
    present_at_ms: int | None = None
    present_by: str | None = None
    cleared_at_ms: int | None = None
    cleared_by: str | None = None
    cleared_how: str | None = None
    escalations: int = 1
    reminders: int = 0
    presses: int = 1
    patient: Mapping[str, str] | None = None  # named by the hospital's admissions, where known

    @property
    def open(self) -> bool:
        """True while the call has not been cleared."""
        return self.cleared_at_ms is None

    @property
    def to_ack_s(self) -> float | None:
        return self._since_raised(self.acknowledged_at_ms)

    @property
    def to_present_s(self) -> float | None:
        return self._since_raised(self.present_at_ms)

    @property
    def to_clear_s(self) -> float | None:
        return self._since_raised(self.cleared_at_ms)

    def _since_raised(self, at_ms: int | None) -> float | None:
        return None if at_ms is None else (at_ms - self.raised_at_ms) / 1000

    def to_json(self) -> dict[str, Any]:
        """All fields, the three durations and ``open``."""
        out = asdict(self)
        out.update(to_ack_s=self.to_ack_s, to_present_s=self.to_present_s, to_clear_s=self.to_clear_s,
                   open=self.open)
        return out


@dataclass(slots=True)
class _Builder:
    """One call's :class:`CallTimes` fields while the log is folded (mutable), then frozen."""

    f: dict[str, Any]
    reminder_keys: set[Any] = field(default_factory=set)

    def freeze(self) -> CallTimes:
        return CallTimes(**self.f, reminders=len(self.reminder_keys))


def _at(record: LogRecord) -> int:
    """When the transition happened: ``data["at_ms"]``, else the record's own timestamp."""
    at = record.data.get("at_ms")
    return int(at) if isinstance(at, (int, float)) and not isinstance(at, bool) else record.ts_ms


def _source(data: Mapping[str, Any]) -> str | None:
    node, inp = data.get("node"), data.get("input")
    return None if node is None or inp is None else f"{node}/{inp}"


def _new_call(record: LogRecord) -> _Builder:
    d = record.data
    return _Builder({"call_id": d["call_id"], "type": d.get("type"), "level": d.get("level"), "bed": d.get("bed"),
                     "source": _source(d), "raised_at_ms": _at(record),
                     "patient": d.get("patient") if isinstance(d.get("patient"), Mapping) else None})


def _first(call: _Builder, at_key: str, at: int, by_key: str | None = None, by: Any = None) -> None:
    if call.f.get(at_key) is None:
        call.f[at_key] = at
        if by_key is not None:
            call.f[by_key] = by


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _apply(call: _Builder, record: LogRecord) -> None:
    """Fold one transition into an open call (first ack/presence/clear win)."""
    d, kind, at, f = record.data, record.kind, _at(record), call.f
    if kind == "call.annunciated":
        _first(call, "annunciated_at_ms", at)
    elif kind == "call.acknowledged":
        _first(call, "acknowledged_at_ms", at, "acknowledged_by", d.get("by"))
    elif kind == "call.present":
        _first(call, "present_at_ms", at, "present_by", d.get("by"))
    elif kind == "call.escalated" and (level := _count(d.get("level"))) is not None:
        f["escalations"] = max(f.get("escalations", 1), level)
    elif kind == "call.reminded":
        n = d.get("n")
        call.reminder_keys.add(n if isinstance(n, int) else ("record", record.id))
    elif kind == "call.repeated" and (presses := _count(d.get("presses"))) is not None:
        f["presses"] = max(f.get("presses", 1), presses)
    elif kind == "call.cleared":
        f["cleared_at_ms"], f["cleared_by"], f["cleared_how"] = at, d.get("by"), d.get("how")


def collect_calls(records: Iterable[LogRecord], from_ms: int, to_ms: int) -> list[CallTimes]:
    """The calls raised in ``[from_ms, to_ms)``, ordered by raise time (log order on ties)."""
    calls: dict[str, _Builder] = {}
    seen: set[str] = set()  # every call id raised, in the window or not: a re-raise is a duplicate
    for record in records:
        if not record.kind.startswith("call."):
            continue
        call_id = record.data.get("call_id")
        if not isinstance(call_id, str):
            continue
        if record.kind == "call.raised":
            if call_id not in seen:
                seen.add(call_id)
                if from_ms <= _at(record) < to_ms:
                    calls[call_id] = _new_call(record)
            continue
        call = calls.get(call_id)
        if call is not None and call.f.get("cleared_at_ms") is None:
            _apply(call, record)
    return sorted((c.freeze() for c in calls.values()), key=lambda c: c.raised_at_ms)


# ---------------------------------------------------------------------------------- statistics
def nearest_rank(values: Sequence[float], pct: float) -> float | None:
    """Percentile by the nearest-rank method; None for no values.

    The smallest value ``v`` such that at least ``pct`` % of the values are ``<= v``: sort, and
    take the element at 1-based rank ``ceil(pct / 100 * n)`` (at least 1). The result is always one
    of the values, never an interpolation.
    """
    if not 0 < pct <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {pct}")
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def summarize(durations: Sequence[float]) -> dict[str, float | None]:
    """``{"median": ..., "p90": ...}`` over ``durations``; both None when there are none."""
    if not durations:
        return {"median": None, "p90": None}
    return {"median": statistics.median(durations), "p90": nearest_rank(durations, 90)}


def _tier_key(level: str | None) -> str:
    return level if isinstance(level, str) and level else UNKNOWN_TIER


def _tier_sort_key(tier: str) -> tuple[int, str]:
    return (TIER_ORDER.index(tier), "") if tier in TIER_ORDER else (len(TIER_ORDER), tier)


def tier_stats(calls: Iterable[CallTimes]) -> dict[str, dict[str, Any]]:
    """Per alarm tier: how many calls, how many reached each step, and median/p90 per step."""
    by_tier: dict[str, list[CallTimes]] = {}
    for call in calls:
        by_tier.setdefault(_tier_key(call.level), []).append(call)
    out: dict[str, dict[str, Any]] = {}
    for tier in sorted(by_tier, key=_tier_sort_key):
        group = by_tier[tier]
        to_ack = [c.to_ack_s for c in group if c.to_ack_s is not None]
        to_present = [c.to_present_s for c in group if c.to_present_s is not None]
        to_clear = [c.to_clear_s for c in group if c.to_clear_s is not None]
        out[tier] = {
            "count": len(group), "acknowledged": len(to_ack), "present": len(to_present), "cleared": len(to_clear),
            "to_ack_s": summarize(to_ack), "to_present_s": summarize(to_present), "to_clear_s": summarize(to_clear),
        }
    return out


def responder_tally(calls: Iterable[CallTimes]) -> dict[str, dict[str, int]]:
    """Per actor: calls they acknowledged first and calls where they were first present.

    Only the first acknowledgement/presence of a call is credited, so the ``acknowledged`` counts
    sum to the number of acknowledged calls. Actors are listed in order of first appearance.
    """
    tally: dict[str, dict[str, int]] = {}
    for call in calls:
        if call.acknowledged_at_ms is not None:
            _credit(tally, call.acknowledged_by, "acknowledged")
        if call.present_at_ms is not None:
            _credit(tally, call.present_by, "present")
    return tally


def _credit(tally: dict[str, dict[str, int]], by: str | None, step: str) -> None:
    who = by if isinstance(by, str) and by else UNKNOWN_RESPONDER
    tally.setdefault(who, {"acknowledged": 0, "present": 0})[step] += 1


def response_times(records: Iterable[LogRecord], from_ms: int, to_ms: int) -> dict[str, Any]:
    """Response-time report for the calls raised in ``[from_ms, to_ms)`` (see the module docstring).

    Raises ValueError when ``to_ms < from_ms``; an empty window (``from_ms == to_ms``) reports no calls.
    """
    if to_ms < from_ms:
        raise ValueError(f"'to' ({to_ms}) is before 'from' ({from_ms})")
    calls = collect_calls(records, from_ms, to_ms)
    return {
        "from_ms": from_ms,
        "to_ms": to_ms,
        "calls": [c.to_json() for c in calls],
        "tiers": tier_stats(calls),
        "responders": responder_tally(calls),
    }


# ---------------------------------------------------------------------------------- time parsing
def parse_time(text: str) -> int:
    """Parse an API time parameter into epoch milliseconds.

    Accepts integer epoch milliseconds (digits only, e.g. ``1795946400000``) or ISO 8601:
    ``2026-11-29T10:00:00Z``, ``2026-11-29T10:00:00+01:00``, ``2026-11-29T10:00:00.250Z`` and a
    date alone, ``2026-11-29``, meaning midnight UTC. A date-time without an offset is UTC; an
    offset whose ``+`` arrived as a space (unencoded in a query string) is read as ``+``.
    Sub-millisecond digits are truncated. Raises ValueError with the accepted forms otherwise.
    """
    if not isinstance(text, str):
        raise ValueError(f"time must be a string, got {type(text).__name__}")
    s = text.strip()
    if _EPOCH_MS_RE.fullmatch(s):
        return int(s)
    try:
        when = _parse_iso(s)
    except ValueError as exc:
        raise ValueError(
            f"invalid time {text!r}: expected epoch milliseconds (e.g. 1795946400000) or ISO 8601 "
            f"(e.g. 2026-11-29, 2026-11-29T10:00:00Z, 2026-11-29T10:00:00+01:00)") from exc
    return (when - _EPOCH) // _MS


def _parse_iso(s: str) -> datetime:
    if not s[:4].isdigit():
        raise ValueError("not an ISO 8601 date")
    if len(s) == 10:  # a date alone: midnight UTC
        d = date.fromisoformat(s)
        return datetime(d.year, d.month, d.day, tzinfo=timezone.utc)
    # An unencoded '+' in a query string arrives as a space: "10:00:00 01:00" means "+01:00".
    s = _SPACE_OFFSET_RE.sub(r"\1+\2", s)
    if s.endswith("z"):  # RFC 3339 allows a lower-case UTC designator
        s = s[:-1] + "Z"
    when = datetime.fromisoformat(s)
    return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when
