# Over-the-air update, the node's side (docs/protocol.md section 9, docs/firmware.md "Updates").
# Loaded at boot by a node whose config has an "ota" section (runtime.py), with ed25519.py.
#
# offer (cmd ota) -> refuse (wrong board, not newer, busy, no key) or accept -> fetch the manifest
# chunk by chunk, check its hash and its Ed25519 signature -> fetch every file into FLASH/fw/stage,
# checking each one's hash -> rename the stage to the slot that is not running -> boot.json
# "next" (the trial) = that slot -> reset. bootsel.py boots the trial once; the new firmware confirms on its
# first verified welcome, or the node rolls back by itself.
# A download cut short (the link dropped, the power went) goes on where it stopped when the same
# bundle is offered again: the stage keeps the verified manifest and the bytes of each file written
# so far, which the hash of the whole file checks in the end. The same offer during the download
# (the controller offers again after a reconnect) asks again for the chunk it waits for.
import asyncio
import json
import os
from binascii import a2b_base64, hexlify, unhexlify
from hashlib import sha256
from micropython import const

import bootsel
from srnode import ed25519  # with this module, while the heap is whole (runtime.py)

# One chunk is one frame each way; 10 s covers a controller busy with fsyncs and a Wi-Fi hiccup.
_CHUNK_TIMEOUT_MS = const(10000)
_CHUNK_TRIES = const(3)
# The largest manifest accepted (a bundle's is ~3 KB): a bigger offer is refused before any download.
_MAX_MANIFEST_BYTES = const(8192)
# After staging: time for the `staged` report and any acks in flight before the reset; then up to
# a minute more while events wait for their acks (the queue is in RAM: a reset would lose them).
_RESET_GRACE_MS = const(2000)
_RESET_WAIT_MS = const(60000)
_POLL_MS = const(250)
# A new bundle must reach the controller (a verified welcome) this soon after it boots, or the
# node resets and rolls back: 2 min is 24 connect attempts at the longest backoff.
CONFIRM_MS = const(120000)
_SIG_CONTEXT = b"smartroom firmware manifest v1\0"
_DIR = const(0x4000)


def vtuple(v):
    try:
        t = tuple(int(p) for p in v.split("."))
    except (ValueError, AttributeError):
        return None
    return t if len(t) == 3 else None


def rmtree(path):
    try:
        entries = list(os.ilistdir(path))
    except OSError:
        return
    for e in entries:
        p = path + "/" + e[0]
        if e[1] == _DIR:
            rmtree(p)
        else:
            os.remove(p)
    os.rmdir(path)


def _mkdir(path):
    try:
        os.mkdir(path)
    except OSError:
        pass  # exists


def _kept(path, size, h):
    """Bytes of `path` already staged (0: none, or more than the file's `size`), hashed into `h`."""
    try:
        n = os.stat(path)[6]
    except OSError:
        return 0
    if n > size:
        return 0
    buf = bytearray(512)
    with open(path, "rb") as f:
        while True:
            k = f.readinto(buf)
            if not k:
                break
            h.update(memoryview(buf)[:k])
    return n


def start(node, hal, fw, cfg):
    return Ota(node, hal, fw, cfg)


class Ota:
    """`fw`: bootsel.select's [slot, version, trial, rolled back]; `cfg`: the node config's "ota"
    section, {"pub_hex": the firmware key's public half, "confirm_ms": optional deadline}."""

    def __init__(self, node, hal, fw, cfg):
        self._node = node
        self._hal = hal
        self._dev = hal.ota()  # board, flash, reset(), cut(step)
        self._fw = fw
        self._pub = unhexlify(cfg["pub_hex"])
        if len(self._pub) != 32:
            raise ValueError("ota.pub_hex must be 32 bytes")
        self._confirm_ms = cfg.get("confirm_ms", CONFIRM_MS)
        self._boot = self._dev.flash + "/fw/boot.json"
        self.busy = False
        self._mh = None
        self._want = None    # the (item, offset) awaited
        self._got = None
        self._ev = asyncio.Event()
        self.chunks = 0

    def report(self, st, ver, why=None):
        node = self._node
        msg = {"v": 2, "t": "ota", "n": node.node_id, "b": node.boot, "st": st, "ver": ver}
        if why:
            msg["why"] = why
        if self._mh:
            msg["mh"] = self._mh
        self._hal.log("ota", "st=%s ver=%s why=%s" % (st, ver, why or "-"))
        node.link.post(msg)

    # --- after a boot
    def on_welcome(self):
        fw = self._fw
        if not (fw[2] or fw[3]):
            return
        st = bootsel.load(self._boot)
        if fw[2]:  # the new bundle reached the controller: it becomes the active one
            if st.get("next") == fw[0]:
                st["active"] = fw[0]
                st["next"] = None
                st["count"] = 0
            fw[2] = False
            self.report("confirmed", fw[1])
        if fw[3]:
            self.report("rolled_back", fw[3], "not_confirmed")
            st.pop("rb", None)
            fw[3] = None
        bootsel.dump(self._boot, st)

    async def run(self):  # the confirm deadline of a new bundle
        if not self._fw[2]:
            return
        await self._hal.sleep_ms(self._confirm_ms)
        if self._fw[2]:
            self._hal.log("fw", "confirm_timeout ms=%d" % self._confirm_ms)
            self._dev.reset()

    # --- from the controller
    def on_cmd(self, msg):
        if msg["c"] == "ota":
            self._offer(msg)
        elif self._want is not None and msg.get("mh") == self._mh and (msg.get("f"), msg.get("o")) == self._want:
            self._got = a2b_base64(msg["d"])
            self._want = None
            self._ev.set()

    def _refusal(self, ver, board):
        if board != self._dev.board:
            return "wrong_board"
        new = vtuple(ver)
        cur = vtuple(self._node.fw)
        if new is None:
            return "bad_version"
        if cur is not None and new < cur:
            return "downgrade"
        if new == cur:
            return "same_version"
        return None

    def _offer(self, msg):
        ver, board, mh, msz, sig = msg["ver"], msg["board"], msg["mh"], msg["msz"], msg["sig"]
        if type(ver) is not str or type(mh) is not str or len(mh) != 64 or type(msz) is not int \
                or type(sig) is not str or len(sig) != 128:
            raise ValueError("ota")
        sig = unhexlify(sig)  # a bad one raises here, before anything changed (bad_command)
        if self.busy and mh == self._mh:  # offered again after a reconnect: this download goes on
            self.report("accepted", ver)
            self._ask()
            return
        if self.busy or self._fw[2]:
            self.report("refused", ver, "busy")
            return
        why = self._refusal(ver, board)
        if why is None and not 0 < msz <= _MAX_MANIFEST_BYTES:
            why = "too_large"
        self._mh = mh
        if why:
            self.report("refused", ver, why)
            return
        self.busy = True
        self.report("accepted", ver)
        asyncio.create_task(self._run(ver, mh, msz, sig))

    async def _run(self, ver, mh, msz, sig):
        try:
            why = await self._download(ver, mh, msz, sig)
        except Exception as e:  # flash full, a malformed manifest, no heap: the update fails, never the node
            why = "io_error" if isinstance(e, OSError) else "error_" + type(e).__name__
        if why:
            self.busy = False
            # refused: this bundle will never do (hash, signature, board, version); failed: try again
            self.report("failed" if why == "timeout" or why == "io_error" or why[:6] == "error_" else "refused",
                        ver, why)
            return
        self.report("staged", ver)
        await self._hal.sleep_ms(_RESET_GRACE_MS)
        waited = 0
        while len(self._node.queue) and waited < _RESET_WAIT_MS:
            await self._hal.sleep_ms(_POLL_MS)
            waited += _POLL_MS
        self._dev.reset()

    def _ask(self):
        if self._want is not None:
            node = self._node
            node.link.post({"v": 2, "t": "ota_get", "n": node.node_id, "b": node.boot, "mh": self._mh,
                            "f": self._want[0], "o": self._want[1]})

    async def _chunk(self, item, offset):
        for _ in range(_CHUNK_TRIES):
            self._want = (item, offset)
            self._ev.clear()
            self._ask()
            try:
                await self._hal.wait_for_ms(self._ev.wait(), _CHUNK_TIMEOUT_MS)
            except asyncio.TimeoutError:
                self._hal.log("stage", "f=%d o=%d timed_out" % (item, offset))
                continue
            return self._got
        self._want = None
        return None

    async def _fetch(self, item, size, write, h, n=0):
        while n < size:
            d = await self._chunk(item, n)
            if d is None:
                return "timeout"
            if not d or n + len(d) > size:
                return "bad_size"
            write(d)
            h.update(d)
            n += len(d)
            self.chunks += 1
            self._dev.cut("chunk:%d" % self.chunks)
        return None

    async def _download(self, ver, mh, msz, sig):
        fw = self._dev.flash + "/fw"
        stage = fw + "/stage"
        _mkdir(fw)
        h = sha256()
        n = _kept(stage + "/manifest.json", msz, h)  # staged only once its signature was checked
        digest = h.digest()
        if n == msz and hexlify(digest).decode() == mh:
            with open(stage + "/manifest.json", "rb") as f:
                manifest = f.read()
        else:  # nothing staged, or another bundle's download: start afresh
            rmtree(stage)
            os.mkdir(stage)
            manifest = bytearray()
            h = sha256()
            why = await self._fetch(0, msz, manifest.extend, h)
            if why:
                return why
            n = 0
            digest = h.digest()
        if hexlify(digest).decode() != mh:
            return "bad_hash"
        if not ed25519.verify(self._pub, _SIG_CONTEXT + digest, sig):
            return "bad_signature"
        doc = json.loads(manifest)
        why = self._refusal(doc["version"], doc["board"])  # the signed manifest decides, not the offer
        if why:
            return why
        if not n:
            with open(stage + "/manifest.json", "wb") as f:
                f.write(manifest)
        del manifest
        for i, spec in enumerate(doc["files"]):
            path = spec["p"]
            if path.startswith("/") or ".." in path:
                return "bad_manifest"
            parts = path.split("/")
            d = stage
            for p in parts[:-1]:
                d += "/" + p
                _mkdir(d)
            path = stage + "/" + path
            while True:
                h = sha256()
                n = _kept(path, spec["n"], h)
                if n:
                    self._hal.log("stage", "f=%d kept=%d" % (i + 1, n))
                with open(path, "ab" if n else "wb") as out:
                    why = await self._fetch(i + 1, spec["n"], out.write, h, n)
                if why:
                    return why
                if hexlify(h.digest()).decode() == spec["h"]:
                    break
                if not n:
                    return "bad_hash"
                os.remove(path)  # what was kept is not this file's start: fetch it whole
        self._dev.cut("staged")
        slot = "b" if self._fw[0] == "a" else "a"
        rmtree(fw + "/" + slot)  # never the running slot
        self._dev.cut("cleared")
        os.rename(stage, fw + "/" + slot)
        self._dev.cut("renamed")
        st = bootsel.load(self._boot)
        st["next"] = slot
        st["count"] = 0
        bootsel.dump(self._boot, st)
        self._dev.cut("switched")
        return None
