"""Node adoption and lifecycle routes (facilities): the registry's nodes, assign a waiting node to a bed
and a role, identify, rotate its key, replace it, decommission it (controller/link/lifecycle.py).
Every change is audited twice: the API's request audit, and the registry's own node audit."""

from __future__ import annotations

from aiohttp import web

from controller.link.lifecycle import LifecycleError, NodeLifecycle

from .base import GATEWAY, PRINCIPAL, ApiError

MAX_NAME_LEN = 64


def _lifecycle(request: web.Request) -> NodeLifecycle:
    gateway = request.app.get(GATEWAY)
    nodes = getattr(gateway, "nodes", None)
    if nodes is None:
        raise ApiError(404, "no_registry", "this room runs without a node registry")
    return nodes


async def _json(request: web.Request) -> dict[str, object]:
    if not (await request.read()).strip():
        return {}
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_json", "body is not a JSON object")
    return body


def _who(request: web.Request, body: dict[str, object]) -> str:
    by = body.get("by")
    if by is None:
        return request[PRINCIPAL].name if PRINCIPAL in request else "?"
    if not isinstance(by, str) or not by.strip() or len(by) > MAX_NAME_LEN:
        raise ApiError(400, "bad_parameter", f"'by' must name who does this (1 to {MAX_NAME_LEN} characters)")
    return by.strip()


def _refused(exc: LifecycleError) -> ApiError:
    code = {404: "node_not_found", 409: "node_state"}.get(exc.status, "bad_parameter")
    return ApiError(exc.status, code, str(exc))


async def get_nodes(request: web.Request) -> web.Response:
    lifecycle = _lifecycle(request)
    return web.json_response({"nodes": lifecycle.nodes(),
                              "audit": [a.to_json() for a in lifecycle.registry.audit(limit=50)]})


async def post_assign(request: web.Request) -> web.Response:
    lifecycle = _lifecycle(request)
    body = await _json(request)
    bed, role, inputs = body.get("bed"), body.get("role"), body.get("inputs")
    if bed is not None and not isinstance(bed, str) or not isinstance(role, str):
        raise ApiError(400, "bad_parameter", "'role' must be a string and 'bed' a string or null")
    if inputs is not None and (not isinstance(inputs, dict)
                               or not all(isinstance(k, str) and isinstance(v, str) for k, v in inputs.items())):
        raise ApiError(400, "bad_parameter", "'inputs' must map input names to meanings")
    try:
        record = await lifecycle.assign(request.match_info["node"], bed or None, role, _who(request, body), inputs)
    except LifecycleError as exc:
        raise _refused(exc) from None
    return web.json_response(record.to_json())


async def post_identify(request: web.Request) -> web.Response:
    lifecycle = _lifecycle(request)
    node = request.match_info["node"]
    try:
        await lifecycle.identify(node, _who(request, await _json(request)))
    except LifecycleError as exc:
        raise _refused(exc) from None
    return web.json_response({"node": node, "identify": True})


async def post_rotate(request: web.Request) -> web.Response:
    lifecycle = _lifecycle(request)
    try:
        record = await lifecycle.rotate(request.match_info["node"], _who(request, await _json(request)))
    except LifecycleError as exc:
        raise _refused(exc) from None
    return web.json_response(record.to_json())


async def post_replace(request: web.Request) -> web.Response:
    lifecycle = _lifecycle(request)
    body = await _json(request)
    new = body.get("new")
    if not isinstance(new, str):
        raise ApiError(400, "bad_parameter", "'new' must name the node that takes over")
    try:
        record = await lifecycle.replace(request.match_info["node"], new, _who(request, body))
    except LifecycleError as exc:
        raise _refused(exc) from None
    return web.json_response(record.to_json())


async def post_decommission(request: web.Request) -> web.Response:
    lifecycle = _lifecycle(request)
    try:
        record = await lifecycle.decommission(request.match_info["node"], _who(request, await _json(request)))
    except LifecycleError as exc:
        raise _refused(exc) from None
    return web.json_response(record.to_json())
