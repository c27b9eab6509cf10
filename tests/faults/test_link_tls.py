"""Issue 15, item 6: the node link over TLS, the controller's certificate pinned on the node.

Real firmware (MicroPython, mbedtls) against the real gateway: it connects over TLS; pinned to
another certificate it refuses the controller, counts it and backs off; a plain-TCP node is refused
by a TLS gateway, loudly; plain TCP works only behind the explicit switch."""

from __future__ import annotations

import asyncio
import logging
import ssl

import aiohttp
import pytest

from controller.link.gateway import CANNOT_DELIVER_SESSIONS
from controller.link.nodeclient import NodeClient, PinMismatch
from controller.security.tls import load_or_create, node_pin
from controller.sim.nodes import SimNode
from tests.faults.linkfaults import WAIT_S, firmware, metric, room_server, until
from tests.helpers import node_key

CALL = {"inputs": [{"name": "call", "kind": "button", "pin": "call"}], "indicator": {"pin": "led"}}


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """The controller's certificate and another one (a different controller, or an impostor)."""
    d = tmp_path_factory.mktemp("certs")
    return (load_or_create(d / "a-cert.pem", d / "a-key.pem", ["room-a"], node_link=True),
            load_or_create(d / "b-cert.pem", d / "b-key.pem", ["room-b"], node_link=True))


def pinned(cfg: dict, pin: dict) -> dict:
    """A firmware config as provisioning leaves it: ctl_fp / ctl_cert instead of plain TCP."""
    cfg = {k: v for k, v in cfg.items() if k != "link_plain"}
    return {**cfg, **pin}


def alarms(server, ctype: str) -> list[dict]:
    return [c for c in server.controller.snapshot()["calls"] if c["type"] == ctype]


async def test_firmware_connects_over_tls_and_a_call_goes_both_ways(tmp_path, certs):
    mine, _ = certs
    async with room_server(tmp_path, node_tls=mine) as server:
        cfg = pinned(firmware("bedside-a", server.endpoints.node_port, tmp_path,
                              [{"at_ms": 300, "pin": "call", "press_ms": 100}], **CALL), node_pin(mine))
        async with SimNode(cfg, tmp_path / "nodes") as node:
            await node.wait_for("acked", timeout_s=WAIT_S)
            await node.wait_for("indicator", pattern="received", timeout_s=WAIT_S)  # controller -> node, encrypted
            conn = server.gateway.connections["bedside-a"]
            cipher = conn.writer.get_extra_info("cipher")
        stats = server.gateway.stats
    assert cipher is not None and conn.encrypted
    assert stats.transport == {"tls": 1} and "tls_required" not in stats.rejected
    assert [c["type"] for c in server.controller.snapshot()["calls"]] == ["patient_call"]
    assert server.endpoints.node_tls_fingerprint == mine.fingerprint_sha256


async def test_a_node_pinned_to_another_certificate_refuses_counts_and_backs_off(tmp_path, certs, caplog):
    mine, other = certs
    caplog.set_level(logging.WARNING, logger="smartroom.gateway")
    async with room_server(tmp_path, node_tls=mine) as server:
        cfg = pinned(firmware("bedside-a", server.endpoints.node_port, tmp_path,
                              [{"at_ms": 300, "pin": "call", "press_ms": 100}], **CALL), node_pin(other))
        async with SimNode(cfg, tmp_path / "nodes") as node:
            first = await node.wait_for("link", reason="tls_pin", n=1, timeout_s=WAIT_S)
            third = await node.wait_for("link", reason="tls_pin", n=3, timeout_s=WAIT_S)
            waits = [ln for ln in node.lines[node.lines.index(first):node.lines.index(third)] if ln.tag == "backoff"]
            await until(lambda: server.gateway.stats.rejected["tls_handshake"] >= 3, "the gateway counted them")
            assert not [ln for ln in node.lines if ln.tag == "link" and "up" in ln.raw.split()]
            assert not [ln for ln in node.lines if ln.tag == "sent"], "no event left for a controller it does not trust"
        stats = server.gateway.stats
    assert len(waits) == 2 and all(int(w.fields["ms"]) > 0 for w in waits), "each refusal is followed by a backoff"
    assert stats.transport == {} and stats.accepted == {}, "nothing reached the room"
    assert "bedside-a" not in server.gateway.connections
    assert any("TLS handshake" in r.getMessage() for r in caplog.records)


async def test_a_plain_tcp_node_is_refused_by_a_tls_gateway_and_becomes_an_alarm(tmp_path, certs, caplog):
    mine, _ = certs
    caplog.set_level(logging.WARNING, logger="smartroom.gateway")
    async with room_server(tmp_path, node_tls=mine) as server:
        host, port = server.endpoints.node_host, server.endpoints.node_port
        for session in range(1, CANNOT_DELIVER_SESSIONS + 1):
            old = NodeClient("bedside-a", node_key("bedside-a"))  # old firmware: plain TCP
            await old.connect(host, port, expect_welcome=False)
            assert await asyncio.wait_for(old.reader.read(), WAIT_S) == b"", "closed without a welcome"
            await old.close()
            await until(lambda: server.gateway.stats.rejected["tls_required"] == session, f"session {session} counted")
        alarm = (await until(lambda: alarms(server, "node_cannot_deliver"), "node cannot deliver"))[0]
        stats = server.gateway.stats
    assert stats.transport == {"plain": CANNOT_DELIVER_SESSIONS}
    assert alarm["detail"]["reason"] == "tls_required"
    assert any("requires TLS" in r.getMessage() and "bedside-a" in r.getMessage() for r in caplog.records)


async def test_plain_tcp_only_behind_the_switch_and_tls_still_works_beside_it(tmp_path, certs):
    mine, _ = certs
    async with room_server(tmp_path, node_tls=mine, gateway={"plain_tcp": True}) as server:
        host, port = server.endpoints.node_host, server.endpoints.node_port
        old = NodeClient("bedside-a", node_key("bedside-a"))
        assert (await old.connect(host, port))["t"] == "welcome"
        await old.close()
        new = NodeClient("bath", node_key("bath"), pin=mine.fingerprint_hex)
        assert (await new.connect(host, port))["t"] == "welcome"
        await new.close()
        stats = server.gateway.stats
        token = await server.create_token("facilities", "tech")
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
            async with http.get(server.endpoints.api_url + "/api/v1/gateway") as resp:
                gateway = await resp.json()
            async with http.get(server.endpoints.api_url + "/metrics") as resp:
                text = await resp.text()
    assert stats.transport == {"plain": 1, "tls": 1} and not stats.rejected
    assert gateway["transport"] == {"plain": 1, "tls": 1}
    assert metric(text, "smartroom_node_connections_total", 'transport="tls"') == 1
    assert server.gateway.transport_name() == "TLS, plain TCP allowed"


async def test_a_cpython_client_pinned_elsewhere_sends_nothing(tmp_path, certs):
    mine, other = certs
    async with room_server(tmp_path, node_tls=mine) as server:
        client = NodeClient("bedside-a", node_key("bedside-a"), pin=other.fingerprint_hex)
        with pytest.raises(PinMismatch):
            await client.connect(server.endpoints.node_host, server.endpoints.node_port)
        await until(lambda: server.gateway.stats.transport["tls"] == 1, "the gateway served the handshake")
        assert server.gateway.stats.accepted == {} and "bedside-a" not in server.gateway.connections


async def test_a_tls_node_at_a_plain_gateway_is_told_apart_from_garbage(tmp_path, certs, caplog):
    mine, _ = certs
    caplog.set_level(logging.WARNING, logger="smartroom.gateway")
    async with room_server(tmp_path) as server:  # no certificate: plain TCP only
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        with pytest.raises((ConnectionError, ssl.SSLError)):
            await asyncio.open_connection(server.endpoints.node_host, server.endpoints.node_port, ssl=ctx)
        await until(lambda: server.gateway.stats.rejected["tls_unavailable"] == 1, "counted")
    assert "oversized_frame" not in server.gateway.stats.rejected
    assert any("no certificate" in r.getMessage() for r in caplog.records)


def test_the_node_link_certificate_passes_a_board_clock_that_was_never_set(certs):
    """A board's clock starts at 2000-01-01 (MicroPython's epoch) until it is online, and mbedtls checks
    the dates of the pinned certificate; the pin must also never need renewing (it would break every node)."""
    from cryptography import x509

    mine, _ = certs
    cert = x509.load_pem_x509_certificate(mine.cert_path.read_bytes())
    assert cert.not_valid_before_utc.year < 2000 and cert.not_valid_after_utc.year == 9999
    assert "localhost" in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName), "the name the firmware checks in the pinned certificate (srnode/tlspin.py)"
