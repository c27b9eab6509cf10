# The node: builds the drivers its config names, numbers every event (boot, e) and every frame
# (boot, s), queues events until acked (in RAM and in the flash journal, so they survive power
# loss), and keeps heartbeats, readings and the accelerometer going.
#
#     node = Node(json.load(open("config.json")), hal)   # hal: hal/board.py or hal/sim.py
#     asyncio.run(node.run())
import asyncio
import gc
from binascii import unhexlify
from micropython import const

from srnode import FW_VERSION, proto
from srnode.equeue import AT_MS, BOOT, EV, KIND, SRC, VAL, X, EventQueue, entry
from srnode.hmac256 import Hmac256
from srnode.journal import Journal
from srnode.link import Link

_DEFAULT_HB_MS = const(10000)        # section 3: the controller's offline timer is 3 x hb_ms
_MIN_HB_MS = const(1000)             # a faster heartbeat would crowd out events on a weak link
_MAX_HB_MS = const(600000)
_DEFAULT_READING_MS = const(30000)   # room climate changes over minutes
_MAX_CALL_INPUTS = const(8)          # section 5's guarantee needs fewer inputs than places
_INT31 = const(0x7FFFFFFF)           # wire integers are 32-bit signed; uptime wraps there
_KEY_BYTES = const(32)               # section 6
_DEFAULT_PORT = const(7700)


class Node:
    """`fw`: the loader's choice (bootsel.select: slot, version, trial, rolled back), or None
    where there is no loader (unit tests); cfg["ota"]: the firmware key's public half and the
    confirm deadline (srnode/ota.py), loaded with the update code only when needed."""

    def __init__(self, cfg, hal, fw=None):
        self._hal = hal
        self.fw = fw and fw[1] or FW_VERSION
        self.ota = None
        self.node_id = cfg["node_id"]
        self.hw = cfg.get("hw", "unknown")
        self.hb_ms = cfg.get("hb_ms", _DEFAULT_HB_MS)
        self._reading_ms = cfg.get("reading_ms", _DEFAULT_READING_MS)
        self.journal = Journal(hal.flash_path("journal"))
        items = self.journal.load()  # events of earlier boots the controller never acked
        state = hal.load_state()
        self.boot = state.get("boot", 0) + 1
        for e in items:  # a state file lost or rolled back must not make a boot number twice
            if e[BOOT] >= self.boot:
                self.boot = e[BOOT] + 1
        state["boot"] = self.boot
        hal.save_state(state)
        self._seq = 0       # frame numbers: one per frame written, in the order they leave
        self._ev = 0        # event numbers: one per event, kept by the event through every resend
        self.queue = EventQueue()
        self._faults = {}
        self._build(cfg, hal)
        for e in items:  # resent first, each once per connection until acked, as (its boot, its e)
            self.queue.push(e)
        self._kept(0)
        if fw and cfg.get("ota"):
            # Imported now, while the heap is whole: compiling it when an offer comes needs blocks a
            # running node's fragmented heap may lack (a MemoryError seen in the tests). A node too
            # full for it runs without updates rather than not at all (docs/firmware.md, Heap).
            try:
                from srnode import ota
                self.ota = ota.start(self, hal, fw, cfg["ota"])
                self.caps.append("ota")
            except MemoryError:
                hal.log("fw", "no_updates reason=heap")
        key = unhexlify(cfg["key_hex"])
        if len(key) != _KEY_BYTES:
            raise ValueError("key_hex must be %d bytes" % _KEY_BYTES)
        # The provisioned ctl_host, ctl_port, ctl_fp (+ ctl_cert, ctl_name) or the older "controller"
        # object; plain TCP only with link_plain (docs/firmware.md, node config).
        c = cfg.get("controller", {})
        pin = None
        if cfg.get("link_plain"):
            hal.log("warning", "link=plain_tcp")
        else:
            from srnode.tlspin import Pin
            pin = Pin(cfg["ctl_fp"], cfg.get("ctl_cert"), cfg.get("ctl_name"))
        self.link = Link(hal, Hmac256(key), self.queue, cfg.get("ctl_host", c.get("host")),
                         cfg.get("ctl_port", c.get("port", _DEFAULT_PORT)), self, pin)

    def _build(self, cfg, hal):
        caps = []
        self.inputs = []
        buttons = 0
        for spec in cfg.get("inputs", ()):
            if spec["kind"] == "button":
                from drivers.button import Button
                buttons += 1
                self.inputs.append(Button(hal.pin_in(spec["pin"], True), hal, spec["name"], self.emit))
            elif spec["kind"] == "presence":
                from drivers.pir import Presence
                self.inputs.append(Presence(hal.pin_in(spec["pin"], False), hal, spec["name"], self.emit))
            else:
                raise ValueError("unknown input kind " + spec["kind"])
            if spec["kind"] not in caps:
                caps.append(spec["kind"])
        if buttons > _MAX_CALL_INPUTS:
            raise ValueError("at most %d call inputs per node" % _MAX_CALL_INPUTS)
        caps.append("journal")  # section 9: events may come from an earlier boot (`ob`)
        self.indicator = self.tone = None
        if "indicator" in cfg:
            from drivers.indicator import Indicator
            self.indicator = Indicator(hal.pin_out(cfg["indicator"]["pin"]), hal)
            caps.append("indicator")
        if "tone" in cfg:
            from drivers.tone import Tone
            self.tone = Tone(hal.pin_out(cfg["tone"]["pin"]), hal)
            caps.append("tone")
        self._env = []
        self._accel = None
        if cfg.get("i2c") or cfg.get("uart") or cfg.get("accel"):
            from srnode import sensing
            self._env, self._accel = sensing.build(cfg, hal, caps)
        self.caps = caps

    # --- messages
    def next_seq(self):
        self._seq += 1
        return self._seq

    def next_event_no(self):
        self._ev += 1
        return self._ev

    def uptime_ms(self):
        return self._hal.ticks_ms() & _INT31

    def hello_msg(self, nonce):
        return proto.hello(self.node_id, self.boot, self.next_seq(), self.fw, self.hw, self.caps,
                           self.hb_ms, nonce)

    def event_msg(self, e, s):
        return proto.event(self.node_id, self.boot, s, e[EV], e[KIND], e[SRC], e[VAL], e[AT_MS], e[X],
                           e[BOOT] if e[BOOT] != self.boot else None)

    def emit(self, kind, src, val, at_ms, x=None):
        """A driver saw something: number it, queue it, journal it, wake the link."""
        ev = self.next_event_no()
        e = entry(ev, kind, src, val, at_ms & _INT31, x, self.boot)
        q = self.queue
        dropped = q.push(e)
        if dropped is not e:  # on flash before it is sent, and before its line is logged
            code = self.journal.add(e, q.items)
        extra = ""
        if x:
            extra = "".join(" %s=%d" % (k, x[k]) for k in sorted(x))
        self._hal.log("event", "e=%d kind=%s src=%s val=%d q=%d%s" % (ev, kind, src, val, len(q), extra))
        if dropped is not None:
            self._hal.log("dropped", "e=%d kind=%s src=%s" % (dropped[EV], dropped[KIND], dropped[SRC]))
        if dropped is not e:
            self._kept(code)  # a fault it raises is logged after this event's line
            if dropped is not None:
                self._kept(self.journal.ack(dropped[BOOT], dropped[EV], q.items))
        self.link.wake()

    def acked(self, ev, ob):
        """The controller acked event ev (of boot ob when it names one); True if it was queued."""
        b = ob or self.boot
        if self.queue.ack(ev, b) is None:
            return False
        self._kept(self.journal.ack(b, ev, self.queue.items))
        return True

    def _kept(self, code):
        # After a journal write (code: 0, or its fault code). An event the journal did not take is
        # still queued and sent; the fault says it would not outlive a power loss (1: the flash
        # failed, 5: no room), and clears (code 0) once the journal keeps everything again.
        if code:
            self.fault("journal", code)
        else:
            self.clear_fault("journal")
        # The reassurance light blinks fast while a call (a press, a fall) waits for its ack.
        if self.indicator is not None:
            for e in self.queue.items:
                if e[VAL] and (e[KIND] == "button" or e[KIND] == "fall"):
                    self.indicator.pending(True)
                    return
            self.indicator.pending(False)

    def fault(self, src, code):
        # One event per new fault; a part that keeps failing the same way stays quiet.
        if self._faults.get(src) != code:
            self._faults[src] = code
            self._hal.log("fault", "src=%s code=%d" % (src, code))
            self.emit("fault", src, code, self._hal.ticks_ms())

    def clear_fault(self, src):
        # A part that failed and works again says so once (val 0), so the controller can clear its alarm.
        if self._faults.pop(src, None) is not None:
            self._hal.log("fault", "src=%s code=0" % src)
            self.emit("fault", src, 0, self._hal.ticks_ms())

    # --- from the controller
    def _adopt_hb(self, hb_ms):
        if type(hb_ms) is int and _MIN_HB_MS <= hb_ms <= _MAX_HB_MS:
            self.hb_ms = hb_ms
            return True
        return False

    def on_welcome(self, msg):
        self._adopt_hb(msg.get("hb_ms"))
        if self.ota:
            self.ota.on_welcome()  # a new bundle confirms; a rollback is reported

    def on_cmd(self, msg):
        c = msg.get("c")
        p = msg.get("p")
        try:
            if c[:3] == "ota":  # ota, ota_data
                if not self.ota:
                    raise ValueError(c)
                self.ota.on_cmd(msg)
                return
            if c == "indicator" and self.indicator is not None:
                self.indicator.set(p)
            elif c == "tone" and self.tone is not None:
                self.tone.set(p)
            elif c == "config" and self._adopt_hb(msg.get("hb_ms")):
                p = "hb_ms:%d" % self.hb_ms
            else:
                raise ValueError(c)
        except (ValueError, TypeError, KeyError):
            self._hal.log("reject", "reason=bad_command c=%s" % c)
            return
        self._hal.log("cmd", "c=%s p=%s" % (c, p))

    # --- tasks
    async def run(self):
        gc.collect()
        self._hal.log("boot", "node=%s boot=%d heap_free=%d held=%d torn=%d" % (
            self.node_id, self.boot, gc.mem_free(), len(self.queue), self.journal.torn))
        tasks = [self.link.run(), self._heartbeats()]
        if self.ota:  # a new bundle on trial: confirm in time or reset (ota.py)
            tasks.append(self.ota.run())
        tasks += [i.run() for i in self.inputs]
        for out in (self.indicator, self.tone):
            if out is not None:
                tasks.append(out.run())
        if self._env or self._accel is not None:
            from srnode import sensing
            if self._env:
                tasks.append(sensing.readings(self, self._hal, self._env, self._reading_ms))
            if self._accel is not None:
                tasks.append(sensing.accel(self, self._hal, self._accel))
        await asyncio.gather(*tasks)

    async def _heartbeats(self):
        hal = self._hal
        grid_ms = hal.ticks_ms()  # heartbeats keep to a grid: a late one does not delay the next
        while True:
            now = hal.ticks_ms()
            wait_ms = grid_ms + self.hb_ms - now
            if wait_ms > 0:
                # in steps of at most the shortest period, so a new hb_ms applies promptly
                await hal.sleep_ms(min(wait_ms, _MIN_HB_MS))
                continue
            grid_ms += self.hb_ms
            if now - grid_ms >= self.hb_ms:
                grid_ms = now  # more than a period behind (hb_ms shrank): start a new grid
            gc.collect()
            alloc = gc.mem_alloc()
            free = gc.mem_free()
            q = len(self.queue)
            hal.log("hb", "heap_alloc=%d heap_free=%d q=%d" % (alloc, free, q))
            if self.link.up:
                state = {}
                for i in self.inputs:
                    state[i.name] = i.active
                self.link.post(proto.heartbeat(self.node_id, self.boot, self.uptime_ms(), q, free,
                                               self.queue.drops, hal.rssi(), hal.battery_mv(), state))
