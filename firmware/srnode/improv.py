# Improv Wi-Fi, serial flavour (https://www.improv-wifi.com/serial/), device side: packet codec and
# the provisioning state machine, no I/O (improv_serial.py moves the bytes; docs/provisioning.md).
#
#     packet = "IMPROV" | version 1 | type | length | data (length bytes) | checksum
#
# checksum: the low byte of the sum of every byte before it, header included. An RPC command's data
# is `command | data length | data`; strings inside are length-prefixed. Besides the public
# commands the node takes two vendor commands: CERT (0xA1), the node link certificate (DER) in
# chunks, held in RAM; then TRUST (0xA0): node id, per-node key, controller host, port and TLS
# fingerprint, so the key travels only over the physically local session. TRUST stores nothing
# unless the chunks so far are exactly the certificate whose SHA-256 is the fingerprint.
from micropython import const

HEADER = b"IMPROV"
VERSION = const(1)
TYPE_STATE = const(1)
TYPE_ERROR = const(2)
TYPE_RPC = const(3)
TYPE_RESULT = const(4)

STATE_AUTH_REQUIRED = const(1)  # BLE only: waiting for the button press
STATE_READY = const(2)
STATE_PROVISIONING = const(3)
STATE_PROVISIONED = const(4)

ERR_NONE = const(0)
ERR_INVALID_RPC = const(1)
ERR_UNKNOWN_RPC = const(2)
ERR_UNABLE_TO_CONNECT = const(3)
ERR_NOT_AUTHORIZED = const(4)
ERR_UNKNOWN = const(0xFF)

CMD_WIFI = const(1)
CMD_GET_STATE = const(2)
CMD_DEVICE_INFO = const(3)
CMD_SCAN = const(4)
CMD_TRUST = const(0xA0)  # vendor: node id, key hex, controller host, port, TLS fingerprint hex
_CMD_CERT = const(0xA1)  # vendor: offset (decimal), the next bytes of the certificate's DER

_MAX_DATA = const(255)       # the length is one byte
_MAX_BUFFER = const(600)     # bytes kept while looking for a header: two whole packets and change
_KEY_HEX = const(64)         # 32-byte key, docs/protocol.md section 6
_FP_HEX = const(64)          # SHA-256 of the controller certificate (DER)
# The node link certificate (EC P-256, self-signed) is ~480 bytes of DER; 1536 leaves room for
# longer names and stays a small, bounded allocation on a 64 KB heap.
_MAX_CERT = const(1536)
# (New names here cost qstrs on the node's first boot, which runs Improv and then the node in one
# heap: docs/firmware.md "Heap". Hence private consts and the CERT check inline in _rpc.)
_HEX = "0123456789abcdef"
_ID_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-"


class ImprovError(Exception):
    pass  # args[0]: an ERR_ code


def checksum(data):
    return sum(data) & 0xFF


def packet(ptype, data=b""):
    if len(data) > _MAX_DATA:
        raise ValueError("improv data over 255 bytes")
    body = HEADER + bytes((VERSION, ptype, len(data))) + bytes(data)
    return body + bytes((checksum(body),))


def strings(items):
    """Length-prefixed strings, as RPC data carries them."""
    out = b""
    for s in items:
        b = s.encode() if isinstance(s, str) else bytes(s)
        if len(b) > _MAX_DATA:
            raise ValueError("improv string over 255 bytes")
        out += bytes((len(b),)) + b
    return out


def parse_strings(data):
    out = []
    i = 0
    while i < len(data):
        n = data[i]
        if i + 1 + n > len(data):
            raise ImprovError(ERR_INVALID_RPC)
        out.append(bytes(data[i + 1:i + 1 + n]))
        i += 1 + n
    return out


def rpc(cmd, payload=b""):
    return packet(TYPE_RPC, bytes((cmd, len(payload))) + payload)


def result(cmd, items=()):
    payload = strings(items)
    return packet(TYPE_RESULT, bytes((cmd, len(payload))) + payload)


class Decoder:
    """feed(bytes) -> [(type, data)]. Bytes outside packets (log lines share the port) are skipped;
    a packet with a bad checksum or version counts in `bad` and is skipped."""

    def __init__(self):
        self._buf = b""
        self.bad = 0

    def feed(self, chunk):
        buf = self._buf + bytes(chunk)
        out = []
        while True:
            i = buf.find(HEADER)
            if i < 0:
                buf = buf[-(len(HEADER) - 1):]  # a header may be split across reads
                break
            buf = buf[i:]
            if len(buf) < 9:
                break
            total = 9 + buf[8] + 1
            if len(buf) < total:
                break
            if buf[6] != VERSION or checksum(buf[:total - 1]) != buf[total - 1]:
                self.bad += 1
                buf = buf[1:]  # resynchronise on the next header
                continue
            out.append((buf[7], buf[9:total - 1]))
            buf = buf[total:]
        self._buf = buf[-_MAX_BUFFER:]
        return out


def _hex_ok(s, n):
    if len(s) != n:
        return False
    for c in s:
        if c not in _HEX:
            return False
    return True


def parse_trust(payload, cert=b""):
    """The vendor TRUST command's data -> dict of flash config keys, or ImprovError. `cert`: what
    CERT brought, which must hash to the fingerprint (the pin a node without getpeercert needs)."""
    items = parse_strings(payload)
    if len(items) != 5:
        raise ImprovError(ERR_INVALID_RPC)
    try:
        node_id, key_hex, host, port, fp = [b.decode() for b in items]
        port = int(port)
    except (UnicodeError, ValueError):
        raise ImprovError(ERR_INVALID_RPC)
    if not (1 <= len(node_id) <= 32) or any(c not in _ID_CHARS for c in node_id):
        raise ImprovError(ERR_INVALID_RPC)
    if not _hex_ok(key_hex, _KEY_HEX) or not _hex_ok(fp, _FP_HEX) or not host or not 0 < port < 65536:
        raise ImprovError(ERR_INVALID_RPC)
    from hashlib import sha256
    from binascii import hexlify
    if hexlify(sha256(cert).digest()).decode() != fp:  # none, cut short or another certificate
        raise ImprovError(ERR_INVALID_RPC)
    return {"node_id": node_id, "key_hex": key_hex, "ctl_host": host, "ctl_port": port, "ctl_fp": fp,
            "ctl_cert": hexlify(cert).decode()}


class Improv:
    """The device's state machine. `board` does the work: board.info() -> (fw name, version,
    hardware, device name); await board.connect(ssid, password) -> bool; await board.scan() ->
    [(ssid, rssi, secured)]; board.store(dict) saves config keys to flash; board.trusted() says
    whether the trust is stored. Every reply goes out through send(packet)."""

    def __init__(self, board, send, state=STATE_READY):
        self._board = board
        self._send = send
        self.state = state
        self.error = ERR_NONE
        self.cert = b""  # CERT's chunks so far: only TRUST writes it, and only when it matches

    def _set_state(self, state):
        self.state = state
        self._send(packet(TYPE_STATE, bytes((state,))))

    def _set_error(self, err):
        self.error = err
        self._send(packet(TYPE_ERROR, bytes((err,))))

    def authorize(self):
        # BLE: the button press releases "authorization required"
        if self.state == STATE_AUTH_REQUIRED:
            self._set_state(STATE_READY)

    async def handle(self, ptype, data):
        if ptype != TYPE_RPC:
            return  # states, errors and results travel the other way
        if len(data) < 2 or data[1] != len(data) - 2:
            self._set_error(ERR_INVALID_RPC)
            return
        cmd = data[0]
        payload = bytes(data[2:])
        try:
            await self._rpc(cmd, payload)
        except ImprovError as e:
            self._set_error(e.args[0])

    async def _rpc(self, cmd, payload):
        board = self._board
        if cmd == CMD_GET_STATE:
            self._set_state(self.state)
            return
        if cmd == CMD_DEVICE_INFO:
            self._send(result(cmd, board.info()))
            return
        if cmd == CMD_SCAN:
            for ssid, rssi, secured in await board.scan():
                self._send(result(cmd, (ssid, str(rssi), "YES" if secured else "NO")))
            self._send(result(cmd))  # an empty result ends the list
            return
        if self.state == STATE_AUTH_REQUIRED:
            raise ImprovError(ERR_NOT_AUTHORIZED)
        if cmd == _CMD_CERT:
            # offset, bytes: offset 0 starts again, any other must be where the last chunk ended
            items = parse_strings(payload)
            cert = b"" if items[:1] == [b"0"] else self.cert
            self.cert = b""  # a gap, an overrun or a bad packet: the client starts again at offset 0
            if len(items) != 2 or items[0] != str(len(cert)).encode() or not items[1] \
                    or len(cert) + len(items[1]) > _MAX_CERT:
                raise ImprovError(ERR_INVALID_RPC)
            self.cert = cert + items[1]
            self._send(result(cmd, (str(len(self.cert)),)))
            return
        if cmd == CMD_TRUST:
            board.store(parse_trust(payload, self.cert))
            self.cert = b""
            self.error = ERR_NONE
            self._send(result(cmd, ("trusted",)))
            return
        if cmd == CMD_WIFI:
            items = parse_strings(payload)
            if len(items) != 2 or not items[0]:
                raise ImprovError(ERR_INVALID_RPC)
            try:
                ssid, password = items[0].decode(), items[1].decode()
            except UnicodeError:
                raise ImprovError(ERR_INVALID_RPC)
            self.error = ERR_NONE
            self._set_state(STATE_PROVISIONING)
            if not await board.connect(ssid, password):
                self._set_state(STATE_READY)
                raise ImprovError(ERR_UNABLE_TO_CONNECT)
            board.store({"wifi_ssid": ssid, "wifi_password": password})
            if board.trusted():
                self._set_state(STATE_PROVISIONED)
                self._send(result(cmd))
            else:  # Wi-Fi alone is not enough: the node needs its key (TRUST) to join a room
                self._set_state(STATE_READY)
                self._send(result(cmd))
            return
        raise ImprovError(ERR_UNKNOWN_RPC)
