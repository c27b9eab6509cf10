# Improv over BLE on the simulated `bluetooth` module: the GATT service (UUIDs, flags), the
# "authorization required" state released by the button for AUTH_WINDOW_MS, Identify, RPC framing
# with its checksum, the key (TRUST) only over an encrypted link, and provisioning to the end.
import asyncio

from mpcheck import FakeClock, check, done
from srnode import improv as i
from srnode.improv_ble import AUTH_WINDOW_MS, SERVICE_UUID, ImprovBle

import bluetooth

STATE = "00467768-6228-2272-4663-277478268001"
ERROR = "00467768-6228-2272-4663-277478268002"
RPC = "00467768-6228-2272-4663-277478268003"
RESULT = "00467768-6228-2272-4663-277478268004"
CAPS = "00467768-6228-2272-4663-277478268005"


class Board:
    def __init__(self):
        self.stored = {}

    def info(self):
        return ("srnode", "0.1.0", "esp32s3-devkitc-1", "srnode-x")

    async def connect(self, ssid, password):
        return password == "pw"

    async def scan(self):
        return [("ward", -50, True)]

    def store(self, fields):
        self.stored.update(fields)

    def trusted(self):
        return "key_hex" in self.stored


def frame(cmd, payload=b""):
    body = bytes((cmd, len(payload))) + payload
    return body + bytes((i.checksum(body),))


import hashlib
from binascii import hexlify

CERT = bytes(range(200))  # stands for the node link certificate's DER
TRUST = i.strings(("bed-a", "00" * 32, "10.0.0.2", "7700", hexlify(hashlib.sha256(CERT).digest()).decode()))


async def main():
    clock = FakeClock()
    ble = bluetooth.BLE()
    board = Board()
    identified = []
    dev = ImprovBle(ble, board, clock, lambda: identified.append(clock.now))
    task = asyncio.create_task(dev.run())

    def last(char):
        h = ble.handle_of(char)
        got = [n[2] for n in ble.notified if n[1] == h]
        return got[-1] if got else None

    async def write(conn, payload):
        ble.write(conn, RPC, payload)
        await clock.advance(5)

    # the service as a client sees it
    svc_uuid, chars = ble.services[0]
    check("service uuid", svc_uuid == bluetooth.UUID(SERVICE_UUID))
    check("five characteristics", len(chars) == 5)
    check("rpc is writable", ble.flags_of(RPC) & 0x0008 and not ble.flags_of(RPC) & 0x0002)
    check("state is read + notify", ble.flags_of(STATE) == 0x0012)
    check("capabilities: identify, device info, scan", ble.values[ble.handle_of(CAPS)] == b"\x07")
    check("starts: authorization required", ble.values[ble.handle_of(STATE)] == bytes((i.STATE_AUTH_REQUIRED,)))
    adv = ble.adverts[-1][1]
    check("advertises Improv service data (0x4677, state 1)", b"\x09\x16\x77\x46\x01\x07" in adv, adv)
    check("advert fits 31 bytes", len(adv) <= 31, len(adv))

    ble.connect(7)
    await write(7, frame(i.CMD_WIFI, i.strings(("ward", "pw"))))
    check("wifi before the press: not authorized", last(ERROR) == bytes((i.ERR_NOT_AUTHORIZED,)), last(ERROR))
    check("nothing stored", board.stored == {})
    await write(7, frame(0x02))
    check("identify needs no press", identified == [clock.now] or len(identified) == 1, identified)
    await write(7, frame(i.CMD_DEVICE_INFO))
    res = last(RESULT)
    check("device info result, BLE checksum", res is not None and res[0] == i.CMD_DEVICE_INFO
          and res[-1] == i.checksum(res[:-1]) and b"esp32s3-devkitc-1" in res, res)

    # the button
    dev.press()
    await clock.advance(5)
    check("press: authorized", last(STATE) == bytes((i.STATE_READY,)))
    bad = bytearray(frame(i.CMD_WIFI, i.strings(("ward", "pw"))))
    bad[-1] ^= 0xFF
    await write(7, bytes(bad))
    check("bad checksum: invalid rpc", last(ERROR) == bytes((i.ERR_INVALID_RPC,)))
    await write(7, b"\x01\x09ab")
    check("length mismatch: invalid rpc", last(ERROR) == bytes((i.ERR_INVALID_RPC,)))
    check("still nothing stored", board.stored == {})

    # the key only over an encrypted link
    await write(7, frame(i.CMD_TRUST, TRUST))
    check("trust in clear: refused", last(ERROR) == bytes((i.ERR_NOT_AUTHORIZED,)) and "key_hex" not in board.stored)
    ble.encrypt(7)
    await write(7, frame(i.CMD_TRUST, TRUST))
    check("trust before the certificate: refused", last(ERROR) == bytes((i.ERR_INVALID_RPC,))
          and board.stored == {}, board.stored)
    for at in (0, 120):  # CERT (0xA1): offset, the next bytes; each answered with the bytes held
        await write(7, frame(0xA1, i.strings((str(at), CERT[at:at + 120]))))
    check("certificate held", last(RESULT)[:-1] == bytes((0xA1, 4)) + i.strings(("200",)), last(RESULT))
    # the longest frame (255 data bytes, 258 in all) arrives whole: MicroPython would keep 20 bytes
    longest = frame(0xA1, i.strings(("0", bytes(252))))
    await write(7, longest)
    check("a 258-byte RPC frame is taken whole", len(longest) == 258
          and last(RESULT)[:-1] == bytes((0xA1, 4)) + i.strings(("252",)), last(RESULT))
    for at in (0, 120):
        await write(7, frame(0xA1, i.strings((str(at), CERT[at:at + 120]))))
    await write(7, frame(i.CMD_TRUST, TRUST))
    check("trust when encrypted: stored", board.stored.get("node_id") == "bed-a"
          and board.stored.get("ctl_cert") == hexlify(CERT).decode(), board.stored)
    await write(7, frame(i.CMD_WIFI, i.strings(("ward", "pw"))))
    await clock.advance(5)
    check("wifi: provisioned", last(STATE) == bytes((i.STATE_PROVISIONED,)), last(STATE))
    check("readvertised as provisioned", b"\x77\x46\x04" in ble.adverts[-1][1])

    # the authorization window: at, under and over its edge
    clock2 = FakeClock()
    ble2 = bluetooth.BLE()
    dev2 = ImprovBle(ble2, Board(), clock2, lambda: None)
    t2 = asyncio.create_task(dev2.run())
    ble2.connect(1)
    dev2.press()
    await clock2.advance(AUTH_WINDOW_MS - 1)
    check("just inside the window: still authorized", dev2.device.state == i.STATE_READY, dev2.device.state)
    await clock2.advance(1)
    check("at the edge: closed (checked each second and before every command)",
          dev2.device.state == i.STATE_AUTH_REQUIRED, dev2.device.state)
    h = ble2.handle_of(STATE)
    check("and notified", [n[2] for n in ble2.notified if n[1] == h][-1] == bytes((i.STATE_AUTH_REQUIRED,)))
    dev2.press()
    check("a new press opens it again", dev2.device.state == i.STATE_READY)
    ble2.disconnect(1)
    await clock2.advance(5)
    check("readvertises after a disconnect", len(ble2.adverts) >= 2)
    task.cancel()
    t2.cancel()


asyncio.run(main())
done()
