"""The room environment against its rules (ASHRAE 170 ranges): excursions, minimum durations,
hysteresis and clear times; an environment alarm is an information-level call.

One part of :class:`~controller.room.state.Room`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from ..store import LogEntry
from .calls import HOW_RESOLVED, CallRules, _ms

if TYPE_CHECKING:
    from .config import EnvRule, RoomConfig


@dataclass(slots=True)
class EnvState:
    """One environment measure against its rule; excursions and recoveries are logged."""

    out: bool = False
    bound: str | None = None         # "high" or "low" while out of range
    since_ms: int | None = None      # excursion start
    back_since_ms: int | None = None  # recovery start, while an alarm is still active
    value: float | None = None


class EnvironmentRules(CallRules):
    """Latest values of each measure and the excursion state of each measure with a rule."""

    config: RoomConfig
    environment: dict[str, dict[str, Any]]
    env: dict[str, EnvState]

    def _env_json(self, measure: str) -> dict[str, Any]:
        st = self.env.get(measure)
        if st is None:
            return {}
        rule = self.config.environment[measure]
        return {"low": rule.low, "high": rule.high, "in_range": not st.out,
                "alarm": self.call_from(None, f"env:{measure}") is not None}

    def _env_reading(self, rule: EnvRule, value: float, node: str, now_ms: int) -> list[LogEntry]:
        st = self.env[rule.measure]
        bound = "high" if rule.high is not None and value > rule.high else \
            "low" if rule.low is not None and value < rule.low else None
        if not st.out and bound is not None:
            return [LogEntry("environment.excursion", {
                "measure": rule.measure, "value": value, "bound": bound,
                "limit": rule.high if bound == "high" else rule.low, "node": node, "at_ms": now_ms})]
        if st.out:
            back = (rule.high is None or value <= rule.high - rule.hysteresis) and \
                   (rule.low is None or value >= rule.low + rule.hysteresis)
            if back:
                return [LogEntry("environment.recovered", {"measure": rule.measure, "value": value, "node": node,
                                                           "at_ms": now_ms})]
        return []

    def _env_due(self, measure: str, st: EnvState) -> int | None:
        rule = self.config.environment[measure]
        alarm = self.call_from(None, f"env:{measure}", "environment")
        if st.out and alarm is None and st.since_ms is not None:
            return st.since_ms + _ms(rule.min_duration_s)
        if not st.out and alarm is not None and st.back_since_ms is not None:
            return st.back_since_ms + _ms(rule.clear_s)
        return None

    def _envs_due(self) -> list[int]:
        return [d for measure, st in self.env.items() if (d := self._env_due(measure, st)) is not None]

    def _decide_environment(self, now_ms: int) -> list[LogEntry]:
        """Excursions that lasted their minimum duration alarm; recoveries that lasted clear_s clear."""
        entries: list[LogEntry] = []
        for measure, st in self.env.items():
            due = self._env_due(measure, st)
            if due is None or due > now_ms:
                continue
            alarm = self.call_from(None, f"env:{measure}", "environment")
            if alarm is None:
                rule = self.config.environment[measure]
                entries += self._raise_or_repeat("environment", None, f"env:{measure}", now_ms, {
                    "measure": measure, "value": st.value, "bound": st.bound,
                    "limit": rule.high if st.bound == "high" else rule.low, "since_ms": st.since_ms, "due_ms": due})
            else:
                entries.append(self._clear(alarm, f"{measure} back in range ({st.value:g})", HOW_RESOLVED, now_ms))
        return entries

    def _apply_excursion(self, d: dict[str, Any]) -> None:
        st = self.env.get(d["measure"])
        if st is not None:
            st.out, st.bound, st.since_ms, st.back_since_ms, st.value = True, d["bound"], d["at_ms"], None, d["value"]

    def _apply_recovered(self, d: dict[str, Any]) -> None:
        st = self.env.get(d["measure"])
        if st is not None:
            st.out, st.bound, st.since_ms, st.back_since_ms, st.value = False, None, None, d["at_ms"], d["value"]

    def note_reading(self, measure: str, value: float, node: str, ts_ms: int) -> None:
        latest = self.environment.get(measure)
        if latest is None:
            self.environment[measure] = {"value": value, "node": node, "ts_ms": ts_ms}
        else:  # the readings path: updated in place, nothing allocated
            latest["value"], latest["node"], latest["ts_ms"] = value, node, ts_ms


ENVIRONMENT_APPLY: dict[str, Callable[[Any, dict[str, Any]], None]] = {
    "environment.excursion": EnvironmentRules._apply_excursion,
    "environment.recovered": EnvironmentRules._apply_recovered,
}
