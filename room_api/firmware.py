"""Firmware updates on the facilities page: versions per node, the bundles on offer, staged rollouts.

``GET /api/v1/firmware`` and ``POST /api/v1/firmware/rollouts`` over ``controller/ota/server.py``
(docs/firmware.md, "Updates"). Starting a rollout is audited by the API's middleware (who, when)
and by the rollout itself (each node's offer, confirmation, refusal or rollback).
"""

from __future__ import annotations

import json

from aiohttp import web

from .base import CONTROLLER, GATEWAY, PRINCIPAL, ApiError

from controller.ota.bundle import BundleError

MAX_ROLLOUT_NODES = 500  # a ward's nodes, with room to spare; more is a mistake in the request


def _ota(request: web.Request):  # type: ignore[no-untyped-def]
    gateway = request.app.get(GATEWAY)
    if gateway is None or gateway.ota is None:
        raise ApiError(404, "no_updates", "this controller serves no firmware updates")
    return gateway.ota


async def get_firmware(request: web.Request) -> web.Response:
    ota = _ota(request)
    config = request.app[CONTROLLER].config
    return web.json_response(ota.status(sorted(n.id for n in config.nodes.values() if n.transport == "tcp")))


async def post_rollout(request: web.Request) -> web.Response:
    ota = _ota(request)
    try:
        body = json.loads(await request.read())
    except (ValueError, RecursionError):
        raise ApiError(400, "bad_body", "the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise ApiError(400, "bad_body", "the body must be a JSON object")
    bundle, nodes = body.get("bundle"), body.get("nodes")
    known = set(request.app[CONTROLLER].config.nodes)
    if not isinstance(bundle, str) or not bundle:
        raise ApiError(400, "bad_parameter", "'bundle' must be a bundle's folder name or hash")
    if (not isinstance(nodes, list) or not nodes or len(nodes) > MAX_ROLLOUT_NODES
            or not all(isinstance(n, str) for n in nodes) or len(set(nodes)) != len(nodes)):
        raise ApiError(400, "bad_parameter", f"'nodes' must be 1 to {MAX_ROLLOUT_NODES} distinct node ids")
    unknown = [n for n in nodes if n not in known]
    if unknown:
        raise ApiError(400, "bad_parameter", f"not nodes of this room: {', '.join(unknown[:10])}")
    try:
        found = ota.find(bundle)
    except BundleError as exc:
        raise ApiError(404, "bundle_not_found", str(exc)) from None
    try:
        rollout = ota.start_rollout(found, nodes, request[PRINCIPAL].name)
    except ValueError as exc:
        raise ApiError(409, "rollout_running", str(exc)) from None
    return web.json_response(rollout.to_json(), status=201)
