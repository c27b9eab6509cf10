# Improv over Bluetooth LE (https://www.improv-wifi.com/ble/): the GATT service on MicroPython's
# `bluetooth` module, aioble-style: the IRQ handler only queues what happened, a task does the work.
# The protocol is improv.py's state machine; this file maps it onto characteristics:
#
#     capabilities (read)  state (read, notify)  error (read, notify)
#     rpc command (write)  rpc result (read, notify)
#
# BLE frames an RPC as `command | length | data | checksum` (no "IMPROV" header). The node starts in
# "authorization required": nothing that changes it is taken until someone presses its button
# (press_ms), which authorises for AUTH_WINDOW_MS. BLE command 0x02 is Identify (on serial it asks
# for the state). The vendor TRUST command (the key) is refused unless the link is encrypted
# (LE Secure Connections): Improv BLE itself is plain radio, and a key never travels in clear.
#
#     ble = ImprovBle(bluetooth.BLE(), provisioning, hal, identify)
#     ble.press()      # from the button task; asyncio.create_task(ble.run())
import asyncio
from micropython import const

import bluetooth

from srnode import improv

SERVICE_UUID = "00467768-6228-2272-4663-277478268000"
_CHAR_STATE = "00467768-6228-2272-4663-277478268001"
_CHAR_ERROR = "00467768-6228-2272-4663-277478268002"
_CHAR_RPC = "00467768-6228-2272-4663-277478268003"
_CHAR_RESULT = "00467768-6228-2272-4663-277478268004"
_CHAR_CAPS = "00467768-6228-2272-4663-277478268005"
SERVICE_DATA_UUID16 = const(0x4677)

_FLAG_READ = const(0x0002)
_FLAG_WRITE = const(0x0008)
_FLAG_NOTIFY = const(0x0010)
_IRQ_CENTRAL_CONNECT = const(1)
_IRQ_CENTRAL_DISCONNECT = const(2)
_IRQ_GATTS_WRITE = const(3)
_IRQ_ENCRYPTION_UPDATE = const(28)

_CAPS = const(0x07)  # identify, device info, Wi-Fi scan (Improv BLE capabilities bits)
_BLE_IDENTIFY = const(0x02)
# Improv's own suggestion: a press authorises for a minute, long enough to type a Wi-Fi password on a
# phone, short enough that a node left authorised does not stay open to anyone passing by.
AUTH_WINDOW_MS = const(60000)
_ADV_INTERVAL_US = const(100000)  # 100 ms: found within a second by a phone or the controller
_RX_QUEUE = const(4)              # RPC writes waiting for the task; a client sends one at a time
# The longest RPC frame: command, length, 255 data bytes, checksum. MicroPython keeps 20 bytes of a
# characteristic's remote write unless told otherwise: TRUST (~115) and CERT (~130) would be cut.
_RPC_BUFFER = const(258)


def _uuid(s):
    return bluetooth.UUID(s)


class ImprovBle:
    """ble: bluetooth.BLE(); board: what improv.Improv needs (improv_serial.Provisioning is one);
    identify(): blink the light."""

    def __init__(self, ble, board, hal, identify, name="srnode"):
        self._ble = ble
        self._hal = hal
        self._identify = identify
        self._name = name
        self._conns = []
        self._encrypted = []
        self._rx = []
        self._wake = asyncio.Event()
        self._auth_until = -1
        ble.active(True)
        ble.irq(self._irq)
        service = (_uuid(SERVICE_UUID), (
            (_uuid(_CHAR_CAPS), _FLAG_READ),
            (_uuid(_CHAR_STATE), _FLAG_READ | _FLAG_NOTIFY),
            (_uuid(_CHAR_ERROR), _FLAG_READ | _FLAG_NOTIFY),
            (_uuid(_CHAR_RPC), _FLAG_WRITE),
            (_uuid(_CHAR_RESULT), _FLAG_READ | _FLAG_NOTIFY),
        ))
        ((self._h_caps, self._h_state, self._h_error, self._h_rpc, self._h_result),) = \
            ble.gatts_register_services((service,))
        ble.gatts_set_buffer(self._h_rpc, _RPC_BUFFER)
        ble.gatts_write(self._h_caps, bytes((_CAPS,)))
        self.device = improv.Improv(board, self._send, state=improv.STATE_AUTH_REQUIRED)
        ble.gatts_write(self._h_state, bytes((improv.STATE_AUTH_REQUIRED,)))
        ble.gatts_write(self._h_error, bytes((improv.ERR_NONE,)))
        self.advertise()

    # --- interrupt context: note it, wake the task
    def _irq(self, event, data):
        if event == _IRQ_CENTRAL_CONNECT:
            self._conns.append(data[0])
        elif event == _IRQ_CENTRAL_DISCONNECT:
            if data[0] in self._conns:
                self._conns.remove(data[0])
            if data[0] in self._encrypted:
                self._encrypted.remove(data[0])
            self._rx.append(None)  # advertise again
        elif event == _IRQ_ENCRYPTION_UPDATE:
            if data[1] and data[0] not in self._encrypted:
                self._encrypted.append(data[0])
        elif event == _IRQ_GATTS_WRITE and data[1] == self._h_rpc:
            if len(self._rx) < _RX_QUEUE:
                self._rx.append((data[0], bytes(self._ble.gatts_read(self._h_rpc))))
        self._wake.set()

    def advertise(self):
        name = self._name.encode()
        svc = bytes((0x77, 0x46, self.device.state, _CAPS, 0, 0, 0, 0))
        adv = bytes((2, 0x01, 0x06)) + bytes((len(svc) + 1, 0x16)) + svc + bytes((len(name) + 1, 0x09)) + name
        resp = bytes((17, 0x07)) + bytes(reversed(bluetooth_uuid_bytes(SERVICE_UUID)))
        self._ble.gap_advertise(_ADV_INTERVAL_US, adv_data=adv, resp_data=resp)

    # --- what improv.Improv sends, onto the characteristics
    def _send(self, pkt):
        ptype = pkt[7]
        data = pkt[9:-1]
        if ptype == improv.TYPE_STATE:
            handle = self._h_state
        elif ptype == improv.TYPE_ERROR:
            handle = self._h_error
        else:  # a result: BLE adds its own checksum
            handle = self._h_result
            data = data + bytes((improv.checksum(data),))
        self._ble.gatts_write(handle, data)
        for conn in self._conns:
            self._ble.gatts_notify(conn, handle, data)

    # --- the button, the clock
    def press(self):
        """The node's button was pressed: authorise for AUTH_WINDOW_MS."""
        self._auth_until = self._hal.ticks_ms() + AUTH_WINDOW_MS
        self.device.authorize()
        self._hal.log("improv_ble", "authorized")

    def _expire(self):
        d = self.device
        if d.state == improv.STATE_READY and 0 <= self._auth_until <= self._hal.ticks_ms():
            self._auth_until = -1
            d.state = improv.STATE_AUTH_REQUIRED
            self._send(improv.packet(improv.TYPE_STATE, bytes((d.state,))))
            self._hal.log("improv_ble", "authorization expired")

    async def _tick(self):
        while True:
            await self._hal.sleep_ms(1000)
            self._expire()

    async def run(self):
        tick = asyncio.create_task(self._tick())
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._rx:
                    item = self._rx.pop(0)
                    if item is None:
                        self.advertise()
                    else:
                        await self._rpc(item[0], item[1])
        finally:
            tick.cancel()

    async def _rpc(self, conn, frame):
        d = self.device
        self._expire()
        if len(frame) < 3 or frame[1] != len(frame) - 3 or improv.checksum(frame[:-1]) != frame[-1]:
            d._set_error(improv.ERR_INVALID_RPC)
            return
        cmd = frame[0]
        if cmd == _BLE_IDENTIFY:
            self._identify()
            return
        if cmd == improv.CMD_TRUST and conn not in self._encrypted:
            d._set_error(improv.ERR_NOT_AUTHORIZED)  # the key only over an encrypted link
            self._hal.log("improv_ble", "refused trust: link not encrypted")
            return
        await d.handle(improv.TYPE_RPC, frame[:-1])
        if d.state == improv.STATE_PROVISIONED:
            self.advertise()


def bluetooth_uuid_bytes(s):
    h = s.replace("-", "")
    return bytes(int(h[i:i + 2], 16) for i in range(0, 32, 2))
