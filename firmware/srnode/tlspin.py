# The node link over TLS with the controller's certificate pinned (docs/protocol.md, "Transport").
#
#     pin = Pin(cfg["ctl_fp"], cfg.get("ctl_cert"), cfg.get("ctl_name"))  # at boot: ValueError if unusable
#     reader, writer = await hal.open_connection(host, port, *pin.args())
#     await pin.handshake(hal, writer, hello_frame)  # LinkDown("tls_pin ...") unless it is the pinned one
#
# Two ways to pin, by what the build's `ssl` offers:
# - `ctl_cert` (the certificate's DER, hex) given: it is the only trust anchor (CERT_REQUIRED), so
#   mbedtls refuses any other certificate inside the handshake, before the node sends a byte. Works
#   on every mbedtls build (unix port, rp2, esp32). Its SHA-256 must equal `ctl_fp`.
# - only `ctl_fp`: the handshake accepts any certificate and `check` compares SHA-256 of the peer's
#   DER (`getpeercert(True)`) before anything but the hello (which carries no secret) has left.
#   Needs MBEDTLS_SSL_KEEP_PEER_CERTIFICATE: the ESP-IDF builds have it; the unix and rp2 builds
#   do not, so there a node without `ctl_cert` refuses to start (`fp_only_supported`).
import asyncio
import hashlib
import io
import ssl
from binascii import unhexlify
from micropython import const

from srnode.link import LinkDown

_FP_BYTES = const(32)
# The TLS handshake (ECDHE + ECDSA on P-256, in software on an RP2040) takes a few seconds on the
# slowest board; 10 s bounds it against a peer that never answers the ClientHello.
_HANDSHAKE_TIMEOUT_MS = const(10000)
# The name checked in the pinned certificate: the controller's self-signed one always carries it
# (controller/security/tls.py ALWAYS_IN_SAN). The pin, not the name, is what authenticates the
# controller; mbedtls only insists on some name when it verifies.
DEFAULT_NAME = "localhost"


class PinError(ValueError):
    pass


def fp_only_supported():
    """True when this build's TLS sockets can give the peer's certificate (getpeercert)."""
    s = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).wrap_socket(io.BytesIO(), server_side=True,
                                                            do_handshake_on_connect=False)
    try:
        return hasattr(s, "getpeercert")
    finally:
        s.close()


def _unhex(name, text):
    try:
        return unhexlify(text.replace(":", ""))
    except (ValueError, AttributeError):
        raise ValueError(name + " is not hex")


class Pin:
    def __init__(self, fp_hex, cert_hex=None, name=None):
        self.fp = _unhex("ctl_fp", fp_hex)
        if len(self.fp) != _FP_BYTES:
            raise ValueError("ctl_fp must be the SHA-256 of the certificate (32 bytes)")
        self.cert = _unhex("ctl_cert", cert_hex) if cert_hex else None
        if self.cert is not None and hashlib.sha256(self.cert).digest() != self.fp:
            raise ValueError("ctl_cert does not match ctl_fp")
        if self.cert is None and not fp_only_supported():
            raise ValueError("this build's ssl has no getpeercert: give ctl_cert with ctl_fp")
        self.name = name or DEFAULT_NAME
        self.failures = 0  # sessions refused because the controller was not the pinned one
        self._ctx = None

    def args(self):
        """The TLS arguments of hal.open_connection: the context (made once: parsing the pinned
        certificate again at every reconnect fragments a 64 KB heap) and the name to check."""
        if self._ctx is None:
            self._ctx = self.context()
        return self._ctx, self.name

    async def handshake(self, hal, writer, hello):
        """Send the hello: the handshake runs first (in the write or the drain); then check the pin.
        Another certificate ends the session as LinkDown("tls_pin n=<sessions refused so far>")."""
        try:
            writer.write(hello)
            await hal.wait_for_ms(writer.drain(), _HANDSHAKE_TIMEOUT_MS)
            self.check(writer)
        except asyncio.TimeoutError:
            raise LinkDown("handshake_timeout")
        except ValueError:  # mbedtls: not signed by the pinned certificate; or PinError from check()
            self.failures += 1
            raise LinkDown("tls_pin n=%d" % self.failures)

    def context(self):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if self.cert is not None:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cadata=self.cert)
        else:
            ctx.verify_mode = ssl.CERT_NONE  # checked by fingerprint after the handshake
        return ctx

    def check(self, writer):
        """After the handshake: PinError unless the peer is the pinned certificate."""
        get = getattr(getattr(writer, "s", writer), "getpeercert", None)
        if get is None:
            if self.cert is not None:
                return  # mbedtls already verified against the one pinned certificate
            raise PinError("no getpeercert")
        der = get(True)
        if not der or hashlib.sha256(der).digest() != self.fp:
            raise PinError("fingerprint")
