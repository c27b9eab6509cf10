# A node provisioned over Improv (docs/provisioning.md): the runtime's Node and Link, plus the
# adoption commands of docs/protocol.md section 9 — setup (its inputs, intervals, bed and role, kept
# on flash), identify (flash the light), rotate (derive the next key from the current one and the
# controller's nonce), forget (wipe the flash config and restart) — and factory reset by a long press.
# Subclasses, loaded only on such a node: a hand-configured node runs runtime.py unchanged (its
# 64 KB heap budget has no room to spare; tests/test_firmware_link.py).
import asyncio
from binascii import hexlify, unhexlify
from micropython import const

from drivers.indicator import INDICATOR_PATTERNS, PatternOutput
from srnode.hmac256 import Hmac256
from srnode.link import Link, LinkDown
from srnode.runtime import Node

# Identify: the indicator flashes fast this long, so a technician finds the node the page named.
IDENTIFY_MS = const(10000)
_IDENTIFY_ON_MS = const(100)   # 5 Hz: unlike any pattern the room uses (1 Hz received, steady acknowledged)
_ROTATE_NONCE_HEX = const(32)  # 16 random bytes from the controller
_MIN_READING_MS = const(1000)
_DEFAULT_PORT = const(7700)
_ROLES = ("bedside", "bathroom", "door", "wearable", "environment")
CAPS = ("setup", "identify", "rotate", "forget")  # announced in hello: the commands this node takes


class AdoptedLink(Link):
    """The link, plus: a rotated key takes over at the next session; a `forget` may come instead of
    the welcome (the controller tells a decommissioned node so)."""

    def __init__(self, hal, mac, queue, host, port, node, pin=None):
        super().__init__(hal, mac, queue, host, port, node, pin)
        self.next_mac = None

    def rekey(self, mac):
        self.next_mac = mac
        self._fail = "rekey"  # end this session; the next one signs with the new key
        self._wake.set()

    async def _session(self):
        if self.next_mac is not None:
            self._mac, self.next_mac = self.next_mac, None
        return await super()._session()

    async def _await_welcome(self, reader, sid):
        self._last_s = 0
        while True:
            msg = await self._read_msg(reader, sid)
            if msg is None:
                continue
            if msg["t"] == "welcome":
                return msg
            if msg["t"] == "cmd" and msg.get("c") == "forget":
                self._node.on_cmd(msg)  # wipes and restarts; a board never comes back here
                raise LinkDown("forgotten")
            self._hal.log("reject", "reason=welcome_required")


class ProvisionedNode(Node):
    """cfg: flashcfg.node_config(); flash: its FlashConfig, which also carries the board's restart().
    Until a setup arrives the inputs send nothing: a node waiting for adoption belongs to no bed, so
    a press there would reach nobody."""

    def __init__(self, cfg, hal, flash, fw=None):
        super().__init__(cfg, hal, fw)
        self._flash = flash
        self._key = unhexlify(cfg["key_hex"])
        ctrl = cfg["controller"]
        # the same controller and TLS pin Node's link got (runtime.py), with the adoption commands
        self.link = AdoptedLink(hal, Hmac256(self._key), self.queue, ctrl["host"], ctrl.get("port", _DEFAULT_PORT),
                                self, self.link._pin)
        self.enabled = ()  # the input names the setup maps; the others' events are not sent
        for inp in self.inputs:
            inp._emit = self._input_event
        self.caps += CAPS
        self._identify_until = -1
        self.after_identify = "off"  # the light's pattern once identify ends
        out = self.indicator or self.tone
        if out is not None:
            out._patterns = out._patterns + (("identify", _IDENTIFY_ON_MS, _IDENTIFY_ON_MS),)
        self._reset = None
        if cfg.get("reset"):
            from srnode.reset import FactoryReset
            self._reset = FactoryReset(hal.pin_in(cfg["reset"]["pin"], True), hal, flash, flash.restart)
        self._apply(cfg.get("setup"))

    def _input_event(self, kind, src, val, at_ms, x=None):
        if src in self.enabled:
            self.emit(kind, src, val, at_ms, x)
        else:
            self._hal.log("ignored", "kind=%s src=%s" % (kind, src))

    def _apply(self, setup):
        if not setup:
            return
        inputs = setup.get("inputs")
        if inputs is not None:
            self.enabled = list(inputs)
        self._adopt_hb(setup.get("hb_ms"))
        r = setup.get("reading_ms")
        if type(r) is int and r >= _MIN_READING_MS:
            self._reading_ms = r  # the readings task takes it when it starts (at the next boot)

    def on_cmd(self, msg):
        c = msg.get("c")
        if c == "indicator" and self.indicator is not None and self.indicator.pattern == "identify":
            p = msg.get("p")
            if p == "undelivered" or p not in [x[0] for x in INDICATOR_PATTERNS]:
                self._hal.log("reject", "reason=bad_command c=indicator")
                return
            self.after_identify = self.indicator.p = p  # shown once identify ends, kept over a call
            self._hal.log("cmd", "c=indicator p=%s(after_identify)" % p)
            return
        if c not in CAPS:
            Node.on_cmd(self, msg)
            return
        try:
            if c == "forget":
                self._flash.wipe()
                self._hal.log("cmd", "c=forget")
                self._flash.restart()
                return
            p = self._setup(msg) if c == "setup" else self._rotate(msg) if c == "rotate" else self._identify()
        except (ValueError, TypeError):
            self._hal.log("reject", "reason=bad_command c=%s" % c)
            return
        self._hal.log("cmd", "c=%s p=%s" % (c, p))

    def _setup(self, msg):
        inputs = msg.get("inputs")
        if msg.get("role") not in _ROLES or type(inputs) is not dict:
            raise ValueError("setup")
        setup = {"role": msg["role"], "bed": msg.get("bed", ""), "inputs": inputs}
        for k in ("hb_ms", "reading_ms"):
            if type(msg.get(k)) is int:
                setup[k] = msg[k]
        if self._flash.load().get("setup") != setup:
            self._flash.update({"setup": setup})  # flash is written only when it changes
        self._apply(setup)
        return "role:%s inputs:%s" % (setup["role"], ",".join(sorted(inputs)))

    def _rotate(self, msg):
        nonce = msg.get("nonce")
        if type(nonce) is not str or len(nonce) != _ROTATE_NONCE_HEX:
            raise ValueError("rotate")
        key = Hmac256(self._key).digest(b"rotate" + unhexlify(nonce))
        self._flash.update({"key_hex": hexlify(key).decode()})  # on flash first: a reset keeps the new key
        self._key = key
        self.link.rekey(Hmac256(key))
        return "rotated"

    def _identify(self):
        out = self.indicator or self.tone
        if out is None:
            raise ValueError("identify")
        self._identify_until = self._hal.ticks_ms() + IDENTIFY_MS
        if out.pattern != "identify":
            self.after_identify = out.pattern
            # the node's own pattern, like "undelivered": Indicator.set takes only the controller's
            PatternOutput.set(out, "identify")
            asyncio.create_task(self._end_identify(out))
        return "ms:%d" % IDENTIFY_MS

    async def _end_identify(self, out):
        while self._hal.ticks_ms() < self._identify_until:
            await self._hal.sleep_ms(self._identify_until - self._hal.ticks_ms())
        if out.pattern == "identify":
            PatternOutput.set(out, self.after_identify)

    async def run(self):
        if self._reset is not None:
            asyncio.create_task(self._reset.run())
        await Node.run(self)
