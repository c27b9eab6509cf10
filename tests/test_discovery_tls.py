"""HTTPS for the room API (controller/security/tls.py) and mDNS discovery of rooms (controller/security/discovery.py).

TLS tests run a real aiohttp server on 127.0.0.1. Discovery tests run real zeroconf responders and
browsers on the loopback interface only: Linux delivers multicast sent out of ``lo`` back to every
socket that joined the group on ``lo`` (no root, no ``ip link set lo multicast on``; see
``test_loopback_carries_multicast``). Each test uses its own service type, so runs of this file in
parallel processes on one machine never see each other's rooms.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
import socket
import ssl
import stat
import uuid
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from zeroconf import ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncZeroconf

from controller.security.discovery import SERVICE_TYPE, RoomAdvertiser, browse, package_version
from controller.security.tls import SELF_SIGNED_VALIDITY_DAYS, TlsError, load_or_create, pin, ssl_context

LOOPBACK = ["127.0.0.1"]
MDNS_GROUP = "224.0.0.251"
FOUND_TIMEOUT_S = 10.0  # a guard only: browse returns as soon as the expected rooms are resolved (~1 s)
ABSENT_WAIT_S = 2.5     # showing that a room is *not* there takes waiting; mDNS answers come within ~1.1 s


# --------------------------------------------------------------------------- helpers


def make_cert(path: Path, key, subject: str, *, issuer: tuple[str, object] | None = None, ca: bool = False,
              names: tuple[str, ...] = ("localhost",)) -> x509.Certificate:
    """A certificate for ``key``: self-signed, or signed by ``issuer`` = (name, issuer key)."""
    now = dt.datetime.now(dt.timezone.utc)
    issuer_name, issuer_key = issuer or (subject, key)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    with path.open("ab") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    return cert


def write_key(path: Path, key, password: bytes | None = None) -> None:
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))


@pytest.fixture
def hospital_pki(tmp_path):
    """A hospital CA, and a server certificate it issued: cert file = leaf + CA (a chain), key file."""
    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_cert = make_cert(tmp_path / "ca.pem", ca_key, "Hospital Test CA", ca=True)
    leaf = make_cert(tmp_path / "room.pem", leaf_key, "room-4b.ward.example", issuer=("Hospital Test CA", ca_key),
                     names=("room-4b.ward.example", "localhost"))
    with (tmp_path / "room.pem").open("ab") as chain:
        chain.write(ca_cert.public_bytes(serialization.Encoding.PEM))
    write_key(tmp_path / "room.key", leaf_key)
    return tmp_path / "room.pem", tmp_path / "room.key", tmp_path / "ca.pem", leaf


async def hello(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@pytest.fixture
async def https_server():
    """Start an https server for given TLS material; yields a function returning its base URL."""
    runners: list[web.AppRunner] = []

    async def start(material) -> str:
        app = web.Application()
        app.router.add_get("/api/v1/health", hello)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context(material)).start()
        return f"https://127.0.0.1:{runner.addresses[0][1]}"

    yield start
    for runner in runners:
        await runner.cleanup()


# --------------------------------------------------------------------------- TLS material


def test_self_signed_pair_is_generated_once_and_reused(tmp_path):
    cert_path, key_path = tmp_path / "state" / "tls-cert.pem", tmp_path / "state" / "tls-key.pem"

    first = load_or_create(cert_path, key_path, ["smartroom-4b.local", "10.20.30.40"])
    key_bytes = key_path.read_bytes()
    second = load_or_create(cert_path, key_path, ["another-name.local"])

    assert first.self_signed and second == first
    assert key_path.read_bytes() == key_bytes
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"smartroom-4b.local", "localhost"}
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"10.20.30.40", "127.0.0.1"}
    assert cert.not_valid_after_utc - cert.not_valid_before_utc >= dt.timedelta(days=SELF_SIGNED_VALIDITY_DAYS)
    assert first.not_after == cert.not_valid_after_utc


def test_fingerprint_is_sha256_of_the_der_certificate_as_ssl_sees_it(tmp_path):
    material = load_or_create(tmp_path / "c.pem", tmp_path / "k.pem", ["room.local"])

    der = ssl.PEM_cert_to_DER_cert((tmp_path / "c.pem").read_text())
    digest = hashlib.sha256(der).hexdigest().upper()
    assert material.fingerprint_sha256 == ":".join(digest[i:i + 2] for i in range(0, 64, 2))
    assert material.fingerprint_hex == digest.lower()


def test_supplied_certificate_chain_and_key_are_loaded(hospital_pki):
    cert_path, key_path, _, leaf = hospital_pki
    before = cert_path.read_bytes(), key_path.read_bytes()

    material = load_or_create(cert_path, key_path, ["ignored.local"])

    assert not material.self_signed
    assert material.fingerprint_sha256.replace(":", "") == leaf.fingerprint(hashes.SHA256()).hex().upper()
    assert (cert_path.read_bytes(), key_path.read_bytes()) == before


def test_key_that_does_not_match_the_certificate_is_refused_naming_the_key_file(hospital_pki, tmp_path):
    cert_path, _, _, _ = hospital_pki
    other_key = tmp_path / "other.key"
    write_key(other_key, ec.generate_private_key(ec.SECP256R1()))

    with pytest.raises(TlsError, match=f"{other_key}: this private key does not belong to the certificate in"):
        load_or_create(cert_path, other_key, [])


@pytest.mark.parametrize("present", ["cert", "key"])
def test_half_a_pair_is_an_error_naming_the_missing_file(tmp_path, present):
    cert_path, key_path = tmp_path / "c.pem", tmp_path / "k.pem"
    load_or_create(cert_path, key_path, [])
    (key_path if present == "cert" else cert_path).unlink()
    missing = key_path if present == "cert" else cert_path

    with pytest.raises(TlsError, match=f"^{missing}: missing, but"):
        load_or_create(cert_path, key_path, [])
    assert not missing.exists()  # nothing was generated over the survivor


def test_encrypted_key_and_garbage_certificate_are_errors_naming_the_file(hospital_pki, tmp_path):
    cert_path, _, _, _ = hospital_pki
    encrypted = tmp_path / "encrypted.key"
    write_key(encrypted, ec.generate_private_key(ec.SECP256R1()), password=b"secret")
    with pytest.raises(TlsError, match=f"{encrypted}: the private key is encrypted"):
        load_or_create(cert_path, encrypted, [])

    garbage = tmp_path / "garbage.pem"
    garbage.write_text("this is not a certificate\n")
    with pytest.raises(TlsError, match=f"{garbage}: not a PEM certificate file"):
        load_or_create(garbage, encrypted, [])


def test_server_context_refuses_tls_older_than_1_2(tmp_path):
    ctx = ssl_context(load_or_create(tmp_path / "c.pem", tmp_path / "k.pem", []))
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2


# --------------------------------------------------------------------------- HTTPS


async def test_https_with_a_pinned_fingerprint_connects_and_a_wrong_pin_fails(tmp_path, https_server):
    material = load_or_create(tmp_path / "c.pem", tmp_path / "k.pem", ["room.local"])
    base = await https_server(material)

    async with aiohttp.ClientSession() as session:
        async with session.get(base + "/api/v1/health", ssl=pin(material.fingerprint_sha256)) as resp:
            assert resp.status == 200 and await resp.json() == {"status": "ok"}

        wrong = "00:" * 31 + "00"
        with pytest.raises(aiohttp.ServerFingerprintMismatch):
            await session.get(base + "/api/v1/health", ssl=pin(wrong))
        with pytest.raises(aiohttp.ClientConnectorCertificateError):  # self-signed: normal verification fails
            await session.get(base + "/api/v1/health")


async def test_fingerprint_is_that_of_the_certificate_the_server_presents(tmp_path, https_server):
    material = load_or_create(tmp_path / "c.pem", tmp_path / "k.pem", ["room.local"])
    port = int((await https_server(material)).rsplit(":", 1)[1])
    look_only = ssl.create_default_context()
    look_only.check_hostname, look_only.verify_mode = False, ssl.CERT_NONE

    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=look_only)
    peer_der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    await writer.wait_closed()

    assert hashlib.sha256(peer_der).hexdigest() == material.fingerprint_hex


async def test_https_with_a_hospital_certificate_verifies_against_the_hospital_ca(hospital_pki, https_server):
    cert_path, key_path, ca_path, _ = hospital_pki
    base = await https_server(load_or_create(cert_path, key_path, []))

    trust_hospital = ssl.create_default_context(cafile=ca_path)
    async with aiohttp.ClientSession() as session:
        async with session.get(base.replace("127.0.0.1", "localhost") + "/api/v1/health", ssl=trust_hospital) as resp:
            assert resp.status == 200


# --------------------------------------------------------------------------- discovery


def unique_service_type() -> str:
    return f"_srt{uuid.uuid4().hex[:8]}._tcp.local."  # ≤ 15 characters before ._tcp, as DNS-SD requires


def test_loopback_carries_multicast():
    """The precondition of the discovery tests, checked with plain sockets so a failure says why.

    A socket that joined the mDNS group on 127.0.0.1 receives a datagram sent to the group with
    IP_MULTICAST_IF = 127.0.0.1 - unprivileged, and whether or not ``lo`` shows the MULTICAST flag.
    """
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with rx, tx:
        rx.bind(("", 0))  # any free port: this check does not touch 5353
        rx.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                      socket.inet_aton(MDNS_GROUP) + socket.inet_aton("127.0.0.1"))
        rx.settimeout(2.0)
        tx.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
        tx.sendto(b"ping", (MDNS_GROUP, rx.getsockname()[1]))
        try:
            data, (src, _) = rx.recvfrom(16)
        except TimeoutError:
            pytest.fail("multicast sent on the loopback interface did not come back: the discovery tests "
                        "need a Linux network namespace whose lo delivers multicast (the default)")
    assert (data, src) == (b"ping", "127.0.0.1")


def test_advertiser_uses_the_smartroom_service_type_by_default():
    advertiser = RoomAdvertiser("4b", "Room 4B", 8443, interfaces=LOOPBACK)
    assert advertiser.info.type == SERVICE_TYPE == "_smartroom._tcp.local."
    assert advertiser.name == "4b._smartroom._tcp.local."
    assert advertiser.info.server == "smartroom-4b.local."


async def test_browse_finds_two_rooms_with_their_txt_fields_and_loses_one_that_stops(tmp_path):
    service_type = unique_service_type()
    material = load_or_create(tmp_path / "c.pem", tmp_path / "k.pem", ["smartroom-4b.local"])
    secure = RoomAdvertiser("4b", "Room 4B, Ward 3", 8443, tls=material, interfaces=LOOPBACK,
                            service_type=service_type)
    plain = RoomAdvertiser("5c", "Room 5C", 8080, interfaces=LOOPBACK, service_type=service_type)
    await asyncio.gather(secure.start(), plain.start())  # probing takes ~1.5 s each; do both at once
    try:
        rooms = await browse(FOUND_TIMEOUT_S, LOOPBACK, expect=2, service_type=service_type)

        assert [(r.room, r.name, r.host, r.port, r.path, r.version, r.tls, r.fingerprint, r.url) for r in rooms] == [
            ("4b", "Room 4B, Ward 3", "127.0.0.1", 8443, "/api/v1", package_version(), True,
             material.fingerprint_sha256, "https://127.0.0.1:8443/api/v1"),
            ("5c", "Room 5C", "127.0.0.1", 8080, "/api/v1", package_version(), False, None,
             "http://127.0.0.1:8080/api/v1"),
        ]

        await secure.stop()
        rooms = await browse(ABSENT_WAIT_S, LOOPBACK, expect=2, service_type=service_type)
        assert [r.room for r in rooms] == ["5c"]
    finally:
        await asyncio.gather(secure.stop(), plain.stop())


async def test_leaving_the_context_sends_a_goodbye_that_browsers_see():
    service_type = unique_service_type()
    listener = AsyncZeroconf(interfaces=LOOPBACK)
    changes: asyncio.Queue[tuple[str, ServiceStateChange]] = asyncio.Queue()

    def on_change(zeroconf, service_type, name, state_change):
        changes.put_nowait((name, state_change))

    browser = AsyncServiceBrowser(listener.zeroconf, service_type, handlers=[on_change])
    try:
        async with RoomAdvertiser("7a", "Room 7A", 8443, interfaces=LOOPBACK, service_type=service_type) as room:
            name = room.name
            assert await asyncio.wait_for(changes.get(), FOUND_TIMEOUT_S) == (name, ServiceStateChange.Added)
        while (change := await asyncio.wait_for(changes.get(), FOUND_TIMEOUT_S))[1] is ServiceStateChange.Updated:
            pass
        assert change == (name, ServiceStateChange.Removed)
    finally:
        await browser.async_cancel()
        await listener.async_close()


async def test_browse_with_nothing_advertised_returns_empty_at_the_timeout():
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await browse(0.5, LOOPBACK, service_type=unique_service_type()) == []
    assert 0.5 <= loop.time() - started < 3.0


async def test_two_controllers_claiming_one_room_are_both_listed():
    """A copied configuration must not hide a room: the second gets "<room>-2" and both are listed.

    Two controllers are two hosts, so each advertiser has its own address (127.0.0.1 and 127.0.0.2,
    both on ``lo``). The second probes with a QU question and the first defends its name by
    *unicast* to the prober's address, port 5353. Were both bound to 127.0.0.1:5353 (one address,
    SO_REUSEPORT), the kernel would hand that datagram to one of the two sockets by a hash of the
    addresses and a per-namespace secret: the prober would miss the conflict on some machines and
    not on others (whatever their routes), which is not a real room. Each address binds its own
    port 5353, as on two Pis, so the result is the same on any Linux machine.
    """
    service_type = unique_service_type()
    async with RoomAdvertiser("4b", "Room 4B", 8443, interfaces=["127.0.0.1"], service_type=service_type) as first, \
            RoomAdvertiser("4b", "Room 4B (spare Pi)", 8444, interfaces=["127.0.0.2"],
                           service_type=service_type) as second:
        assert (first.name, second.name) == (f"4b.{service_type}", f"4b-2.{service_type}")
        # ... on a host name of its own: one name with both addresses would send clients to either.
        assert (first.info.server, second.info.server) == ("smartroom-4b.local.", "smartroom-4b-2.local.")
        rooms = await browse(FOUND_TIMEOUT_S, LOOPBACK, expect=2, service_type=service_type)
    assert sorted((r.room, r.port, r.host) for r in rooms) == [("4b", 8443, "127.0.0.1"), ("4b", 8444, "127.0.0.2")]
