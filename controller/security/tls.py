"""The API's TLS certificate: the hospital's own, or a self-signed one made once and kept.

``load_or_create`` is called at every start with the two file paths:

* both files exist: the hospital's certificate (PEM, leaf first, intermediates may follow) and its
  unencrypted private key are loaded and checked to belong together;
* neither exists: a self-signed certificate (EC P-256, 825 days, SAN = the given hostnames +
  ``localhost`` + ``127.0.0.1``) is generated and written, the key with mode 0600; later starts load
  it again, so its fingerprint stays the same and clients that pinned it keep working;
* only one exists: an error, never a silent replacement of half a pair.

Clients of a self-signed controller pin the SHA-256 fingerprint of the certificate (the value
``smartroom run`` prints and the controller advertises; docs/network.md)::

    material = load_or_create(Path("state/tls-cert.pem"), Path("state/tls-key.pem"), ["room-4b.local"])
    site = web.TCPSite(runner, "0.0.0.0", 8443, ssl_context=ssl_context(material))
    # a client:
    async with session.get(url, ssl=pin(material.fingerprint_sha256)) as resp: ...
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

SELF_SIGNED_VALIDITY_DAYS = 825  # the longest validity Apple and browsers accept for a TLS server certificate
# The node link's certificate (``node_link=True``) is pinned by every node, so it must never need
# renewing (a new one breaks every pin), and a board checks its dates with a clock that starts at
# 2000-01-01 (MicroPython's epoch; no RTC, no time until it is online): valid from before that to
# RFC 5280's "no well-defined expiration" date.
NODE_LINK_NOT_BEFORE = dt.datetime(1999, 12, 31, tzinfo=dt.timezone.utc)
NODE_LINK_NOT_AFTER = dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.timezone.utc)
BACKDATE = dt.timedelta(minutes=5)  # tolerate a client clock a little behind the Pi's (the Pi has no RTC)
KEY_FILE_MODE = 0o600
ALWAYS_IN_SAN = ("localhost", "127.0.0.1")


class TlsError(ValueError):
    """A certificate or key file is missing, unreadable, malformed or does not match; the message names the file."""


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    cert_path: Path
    key_path: Path
    fingerprint_sha256: str  # "AA:BB:…", SHA-256 of the leaf certificate's DER bytes
    self_signed: bool
    not_after: dt.datetime   # UTC, timezone-aware

    @property
    def fingerprint_hex(self) -> str:
        """The fingerprint without colons (lower case), as advertised in the mDNS TXT record."""
        return self.fingerprint_sha256.replace(":", "").lower()


def load_or_create(cert_path: Path, key_path: Path, hostnames: Iterable[str] = (), *,
                   node_link: bool = False) -> TlsMaterial:
    """Load the certificate and key, or make a self-signed pair if neither file exists.

    ``node_link``: a new pair is the node link's (dates above), not the API's (825 days)."""
    cert_path, key_path = Path(cert_path), Path(key_path)
    cert_exists, key_exists = cert_path.exists(), key_path.exists()
    if cert_exists != key_exists:
        present, missing = (cert_path, key_path) if cert_exists else (key_path, cert_path)
        raise TlsError(f"{missing}: missing, but {present} exists; supply both the certificate and its key, "
                       f"or remove both to have a self-signed pair generated")
    if not cert_exists:
        _create_self_signed(cert_path, key_path, hostnames, node_link)
    return _load(cert_path, key_path)


def ssl_context(material: TlsMaterial) -> ssl.SSLContext:
    """A server context for aiohttp's ``TCPSite(..., ssl_context=...)``: TLS 1.2 or newer."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(material.cert_path, material.key_path, password=_no_password(material.key_path))
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"{material.cert_path}, {material.key_path}: cannot be used for TLS: {exc}") from exc
    return ctx


def pin(fingerprint: str) -> aiohttp.Fingerprint:
    """An aiohttp client ``ssl=`` value accepting exactly the certificate with this SHA-256 fingerprint.

    Accepts "AA:BB:…" or plain hex. Only the fingerprint is checked (not names, dates or issuer), which
    is what a self-signed certificate needs; the fingerprint must come from a source you trust.
    """
    digest = bytes.fromhex(fingerprint.replace(":", ""))
    return aiohttp.Fingerprint(digest)


def node_pin(material: TlsMaterial) -> dict[str, str]:
    """The node config keys that pin this certificate on a node's link (docs/protocol.md, Transport):
    ``ctl_fp`` (SHA-256 of the DER, hex) and ``ctl_cert`` (the DER itself, hex; builds whose ``ssl``
    cannot give the peer's certificate verify the handshake against it)."""
    return node_pin_file(material.cert_path)


def node_pin_file(cert_path: Path) -> dict[str, str]:
    """``node_pin`` from the certificate file alone (no key needed: ``smartroom nodes provision`` may
    run as a user who cannot read it). TlsError when the file is missing or not a certificate."""
    der = _read_certs(Path(cert_path))[0].public_bytes(serialization.Encoding.DER)
    return {"ctl_fp": hashlib.sha256(der).hexdigest(), "ctl_cert": der.hex()}


def format_fingerprint(digest: bytes) -> str:
    return ":".join(f"{b:02X}" for b in digest)


# --------------------------------------------------------------------------- loading


def _load(cert_path: Path, key_path: Path) -> TlsMaterial:
    certs = _read_certs(cert_path)
    leaf = certs[0]
    key = _read_key(key_path)
    if _spki(key.public_key()) != _spki(leaf.public_key()):
        raise TlsError(f"{key_path}: this private key does not belong to the certificate in {cert_path} "
                       f"(subject {leaf.subject.rfc4514_string()})")
    return TlsMaterial(cert_path=cert_path, key_path=key_path,
                       fingerprint_sha256=format_fingerprint(leaf.fingerprint(hashes.SHA256())),
                       self_signed=_is_self_signed(leaf), not_after=leaf.not_valid_after_utc)


def _read_certs(path: Path) -> list[x509.Certificate]:
    data = _read(path)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise TlsError(f"{path}: not a PEM certificate file (expected '-----BEGIN CERTIFICATE-----')")
    return certs


def _read_key(path: Path):
    data = _read(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:  # the key is encrypted
        raise TlsError(f"{path}: the private key is encrypted; the controller starts unattended, "
                       f"so supply an unencrypted key readable only by its user (mode 0600)") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise TlsError(f"{path}: not a PEM private key ({exc})") from exc
    return key


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def _spki(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _is_self_signed(cert: x509.Certificate) -> bool:
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _no_password(key_path: Path):
    def refuse() -> bytes:  # without this, OpenSSL would prompt on the terminal for a passphrase
        raise TlsError(f"{key_path}: the private key is encrypted")
    return refuse


# --------------------------------------------------------------------------- generating


def _create_self_signed(cert_path: Path, key_path: Path, hostnames: Iterable[str], node_link: bool = False) -> None:
    names = _san_names(hostnames)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    not_before, not_after = now - BACKDATE, now + dt.timedelta(days=SELF_SIGNED_VALIDITY_DAYS)
    if node_link:
        not_before, not_after = NODE_LINK_NOT_BEFORE, NODE_LINK_NOT_AFTER
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64]),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "smartroom room controller")])
    san = [x509.IPAddress(ip) if (ip := _as_ip(n)) else x509.DNSName(n) for n in names]
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, content_commitment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    # The key goes in place first: a crash between the two renames leaves a key without a certificate,
    # which the next start reports (never a certificate whose key is lost).
    _write_atomically(key_path, key_pem, KEY_FILE_MODE)
    _write_atomically(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _san_names(hostnames: Iterable[str]) -> list[str]:
    names: list[str] = []
    for name in [*hostnames, *ALWAYS_IN_SAN]:
        name = name.strip().rstrip(".").lower()
        if name and name not in names:
            names.append(name)
    return names


def _as_ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # os.open's mode is filtered by the umask
        os.replace(tmp, path)
    except OSError as exc:
        raise TlsError(f"{path}: cannot write: {exc.strerror or exc}") from exc
