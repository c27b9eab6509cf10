"""GET /api/v1/readings: a measure's history, downsampled into buckets (controller/store/history.py).

    GET /api/v1/readings?measure=temp_c&from=2026-11-29&to=2026-11-30&step=5m&node=env

``measure`` (required) is one of the measures the controller stores (temp_c, rh_pct, co2_ppm,
noise_db, pressure_pa, batt_v). ``from``/``to``: epoch milliseconds or ISO 8601 (default: the last
24 hours). ``step``: whole seconds (``300``) or with a unit (``30s``, ``5m``, ``1h``, ``1d``); by
default the smallest round step that gives at most 500 buckets. ``node`` (optional): one node's
readings only. The answer::

    {"measure": "temp_c", "node": null, "from_ms": ..., "to_ms": ..., "step_ms": 300000,
     "requested_step_ms": 60000, "step_rounded": true, "source": "raw" | "rollup" | "mixed",
     "buckets": [{"start_ms": ..., "n": 30, "min": 21.9, "max": 22.4, "mean": 22.13}, ...],
     "limits": {"low": 21.0, "high": 24.0}}

``from_ms``/``to_ms`` are widened to whole buckets; empty buckets are left out; ``step_ms`` is
rounded up to the rollup period where the range holds rolled-up readings; ``limits`` are the room's
alarm limits for the measure (null where it has none).
"""

from __future__ import annotations

import re

from aiohttp import web

from .base import CONTROLLER, ApiError

from controller.room import reports
from controller.store.history import DAY_MS, HistoryError, ReadingsHistory
from controller.service import MEASURES

HISTORY = web.AppKey("readings_history", ReadingsHistory)
_HISTORY_KEY = web.AppKey("readings_history_key", web.AppKey)  # which key add_routes was given

MEASURE_NAMES = tuple(sorted(name for name, _divisor in MEASURES.values()))
DEFAULT_SPAN_MS = DAY_MS          # no 'from': the last day
DEFAULT_BUCKETS = 500             # no 'step': about one bucket per two pixels of a wide chart
MAX_STEP_MS = 366 * DAY_MS
MAX_TIME_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z; keeps every time within SQLite's integers
MAX_NODE_LEN = 64
# Round steps for the default; past the last one, whole days.
_NICE_STEPS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
_STEP_RE = re.compile(r"(\d{1,9})\s*(s|m|h|d)?")
_UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": DAY_MS}


def add_routes(app: web.Application, history_key: web.AppKey[ReadingsHistory] = HISTORY) -> None:
    """Serve GET /api/v1/readings from ``app[history_key]``. (An app with a route table registers
    :func:`get_readings` itself and sets ``app[HISTORY]``, the key the handler uses by default.)"""
    app[_HISTORY_KEY] = history_key
    app.router.add_get("/api/v1/readings", get_readings)


def parse_step(text: str) -> int:
    """A step parameter in milliseconds: whole seconds (``"300"``) or ``"30s"``, ``"5m"``, ``"1h"``, ``"1d"``."""
    match = _STEP_RE.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(f"'step' must be whole seconds or a number with s, m, h or d (e.g. 300, 5m, 1h), "
                         f"got {text!r}")
    step_ms = int(match[1]) * _UNIT_MS[match[2] or "s"]
    if not 1000 <= step_ms <= MAX_STEP_MS:
        raise ValueError(f"'step' must be from 1 s to {MAX_STEP_MS // DAY_MS} d, got {text!r}")
    return step_ms


def default_step(span_ms: int, buckets: int = DEFAULT_BUCKETS) -> int:
    """The smallest round step that splits ``span_ms`` into at most ``buckets`` buckets."""
    wanted_s = -(-span_ms // (buckets * 1000))
    for step_s in _NICE_STEPS_S:
        if step_s >= wanted_s:
            return step_s * 1000
    return -(-wanted_s // 86400) * DAY_MS


def _limits(config: object, measure: str) -> dict[str, float | None]:
    rule = getattr(config, "environment", {}).get(measure)
    if rule is not None:
        return {"low": rule.low, "high": rule.high}
    if measure == "batt_v":
        supervision = getattr(config, "supervision", None)
        return {"low": getattr(supervision, "low_battery_v", None), "high": None}
    return {"low": None, "high": None}


async def get_readings(request: web.Request) -> web.Response:
    def bad(message: str) -> ApiError:
        return ApiError(400, "bad_parameter", message)

    controller = request.app[CONTROLLER]
    history = request.app[request.app.get(_HISTORY_KEY, HISTORY)]
    query = request.query

    measure = query.get("measure")
    if measure is None:
        raise bad(f"'measure' is required: one of {', '.join(MEASURE_NAMES)}")
    if measure not in MEASURE_NAMES:
        raise bad(f"unknown measure {measure!r}: one of {', '.join(MEASURE_NAMES)}")

    def time_param(name: str, default: int) -> int:
        raw = query.get(name)
        if raw is None:
            return default
        try:
            value = reports.parse_time(raw)
        except ValueError as exc:
            raise bad(f"'{name}': {exc}") from None
        if not 0 <= value <= MAX_TIME_MS:
            raise bad(f"'{name}' must be from 1970 to 9999")
        return value

    to_ms = time_param("to", controller.clock() + 1)
    from_ms = time_param("from", max(0, to_ms - DEFAULT_SPAN_MS))
    if from_ms >= to_ms:
        raise bad("'from' must be before 'to'")
    raw_step = query.get("step")
    try:
        step_ms = default_step(to_ms - from_ms) if raw_step is None else parse_step(raw_step)
    except ValueError as exc:
        raise bad(str(exc)) from None
    node = query.get("node")
    if node is not None and not 0 < len(node) <= MAX_NODE_LEN:
        raise bad(f"'node' must be a node id (1 to {MAX_NODE_LEN} characters)")

    try:
        series = await history.query(measure, from_ms, to_ms, step_ms, node=node)
    except HistoryError as exc:
        raise bad(str(exc)) from None
    body = series.to_json()
    body["limits"] = _limits(controller.config, measure)
    return web.json_response(body)
