"""FHIR R4 reads under ``/fhir/r4`` (read and search only; resources from integrations/fhir.py):

    GET /fhir/r4/metadata                         CapabilityStatement
    GET /fhir/r4/Device[/{id}]                    the room's nodes
    GET /fhir/r4/Observation[/{id}]?code=temp_c   the newest reading of each measure (code: ours or LOINC)
    GET /fhir/r4/Communication[/{id}]?sent=ge2026-11-30&sent=lt2026-12-01   calls (default: the last day)
    GET /fhir/r4/Flag[/{id}]                      the calls active now (a cleared call's Flag by id)

Answers are ``application/fhir+json``; errors keep the API's one error shape.
"""

from __future__ import annotations

import asyncio
import sys
from types import ModuleType

from aiohttp import web

from controller.room import reports

from .base import CONTROLLER, ApiError

FHIR_BASE = "/fhir/r4"
DEFAULT_SPAN_MS = 24 * 3600 * 1000  # a Communication search without 'sent' covers the last day
NO_END_MS = 2**62                   # no upper bound on 'sent'
CONTENT_TYPE = "application/fhir+json"


async def _models() -> ModuleType:
    """integrations.fhir, imported by the first FHIR request, in a worker thread so the event loop
    (node events, the nurses' stream) keeps running meanwhile. Its models (pydantic) take ~0.3 s and
    ~16 MB to load: a room whose FHIR API nobody reads never pays either, and a restarting
    controller takes calls without waiting for them (README, Performance)."""
    module = sys.modules.get("integrations.fhir")
    if module is None:  # (two first requests at once: the import lock makes the second wait for the first)
        module = await asyncio.get_running_loop().run_in_executor(None, _import_models)
    return module


def _import_models() -> ModuleType:
    from integrations import fhir

    return fhir


def _respond(resource: dict) -> web.Response:
    return web.json_response(resource, content_type=CONTENT_TYPE)


def _base_url(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}{FHIR_BASE}"


def _found(fhir: ModuleType, fn, *args):  # noqa: ANN001, ANN202 - a resource, or the API's 404
    try:
        return fn(*args)
    except fhir.NotFound as exc:
        raise ApiError(404, "not_found", str(exc)) from None


async def get_metadata(request: web.Request) -> web.Response:
    fhir = await _models()
    return _respond(fhir.capability_statement(request.app[CONTROLLER].clock(), _base_url(request)))


async def search_devices(request: web.Request) -> web.Response:
    fhir = await _models()
    return _respond(fhir.bundle(fhir.devices(request.app[CONTROLLER]), _base_url(request)))


async def read_device(request: web.Request) -> web.Response:
    fhir = await _models()
    return _respond(_found(fhir, fhir.device, request.app[CONTROLLER], request.match_info["id"]))


async def search_observations(request: web.Request) -> web.Response:
    fhir = await _models()
    code = request.query.get("code")
    if code is not None and "|" in code:
        code = code.split("|", 1)[1]  # system|code token: the code alone identifies a measure here
    found = fhir.observations(request.app[CONTROLLER], code or None)
    return _respond(fhir.bundle(found, _base_url(request)))


async def read_observation(request: web.Request) -> web.Response:
    fhir = await _models()
    return _respond(_found(fhir, fhir.observation_by_id, request.app[CONTROLLER], request.match_info["id"]))


def _sent_range(request: web.Request, now_ms: int) -> tuple[int, int]:
    """FHIR date search on 'sent': ge/gt (from) and lt/le (to), each at most once."""
    from_ms, to_ms = now_ms - DEFAULT_SPAN_MS, NO_END_MS
    for raw in request.query.getall("sent", []):
        prefix, value = raw[:2], raw[2:]
        if prefix not in ("ge", "gt", "le", "lt"):
            raise ApiError(400, "bad_parameter", f"'sent' must be ge<date>, gt<date>, le<date> or lt<date>, got {raw!r}")
        try:
            ms = reports.parse_time(value)
        except ValueError as exc:
            raise ApiError(400, "bad_parameter", f"'sent': {exc}") from None
        if prefix in ("ge", "gt"):
            from_ms = ms + (prefix == "gt")
        else:
            to_ms = ms + (prefix == "le")
    if from_ms > to_ms:
        raise ApiError(400, "bad_parameter", "'sent': the range is empty (from after to)")
    return from_ms, to_ms


async def _calls(request: web.Request, from_ms: int, to_ms: int) -> list[reports.CallTimes]:
    controller = request.app[CONTROLLER]
    return (await _models()).calls(controller, await controller.call_history(from_ms), from_ms, to_ms)


async def search_communications(request: web.Request) -> web.Response:
    controller = request.app[CONTROLLER]
    from_ms, to_ms = _sent_range(request, controller.clock())
    fhir = await _models()
    found = [fhir.communication(controller, c) for c in await _calls(request, from_ms, to_ms)]
    return _respond(fhir.bundle(found, _base_url(request)))


async def _one_call(request: web.Request) -> reports.CallTimes:
    call_id = request.match_info["id"]
    for call in await _calls(request, 0, request.app[CONTROLLER].clock() + 1):
        if call.call_id == call_id:
            return call
    raise ApiError(404, "not_found", f"no call with id '{call_id}'")


async def read_communication(request: web.Request) -> web.Response:
    fhir = await _models()
    return _respond(fhir.communication(request.app[CONTROLLER], await _one_call(request)))


async def search_flags(request: web.Request) -> web.Response:
    controller = request.app[CONTROLLER]
    fhir = await _models()
    active = [c for c in fhir.calls(controller, [], 0, 0)]  # the active calls only
    return _respond(fhir.bundle([fhir.flag(controller, c) for c in active], _base_url(request)))


async def read_flag(request: web.Request) -> web.Response:
    fhir = await _models()
    return _respond(fhir.flag(request.app[CONTROLLER], await _one_call(request)))
