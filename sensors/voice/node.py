"""A voice node of the room: microphone -> Listener -> ``controller.local_event`` -> spoken confirmation.

One :class:`VoiceNode` per ``transport = "voice"`` node of the room file. The recogniser runs in a
worker thread (it is CPU work); each detection is handed to the event loop, stored by the
controller like a button press (input name = intent, ``detail = {"phrase", "confidence"}``), and
only then confirmed to the patient ("Calling your nurse."). While the confirmation plays, the
audio heard meanwhile is dropped, so the room never answers itself.

    service = VoiceService(controller)            # every voice node of controller.config
    await service.start()
    ...
    await service.stop()

Privacy: audio stays in this process's memory, an utterance at a time; nothing is written, logged
or sent. Only the intent, the phrase's text and the confidence leave the recogniser.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from typing import Any, Callable, Mapping, Protocol

from controller.room.config import NodeConfig
from .audio import AudioError, FrameSource, MicrophoneSource
from .listener import Detection, Listener
from .recognizer import PhraseRecognizer

log = logging.getLogger("smartroom.voice")

FW = "voice 1"
RETRY_FIRST_S = 5.0      # microphone missing: try again after this, doubling ...
RETRY_MAX_S = 60.0       # ... up to this
SPEAK_TIMEOUT_S = 10.0   # a confirmation that takes longer is abandoned (a stuck audio device)
STOP_TIMEOUT_S = 2.0     # a closed microphone ends its reader within MIC_GET_TIMEOUT_S; then we cancel

# What the patient hears, by what the intent means in the room.
CONFIRMATIONS: Mapping[str, str] = {
    "patient_call": "Calling your nurse.",
    "patient_emergency": "Calling for help now.",
    "request_water": "Asking for water.",
    "request_pain": "Telling your nurse you are in pain.",
    "request_toilet": "Asking for help to the toilet.",
    "patient_cancel": "Your call is cancelled.",
}
NOTHING_TO_CANCEL = "There is no call to cancel."
REPEATED = "Your nurse has been called again."


class Player(Protocol):
    """Plays the confirmation. Tests pass a fake that records what would be said."""

    async def say(self, text: str, voice: str) -> None: ...

    async def tone(self) -> None: ...


class EspeakPlayer:
    """Speaks with ``espeak-ng`` to the default audio output; a tone with sox's ``play``.

    espeak-ng plays directly (no file); a missing program or audio device is logged once, and
    the call is made all the same.
    """

    def __init__(self) -> None:
        self._warned: set[str] = set()

    async def _run(self, *argv: str) -> None:
        if shutil.which(argv[0]) is None:
            self._warn(argv[0], f"{argv[0]} is not installed: no spoken confirmation")
            return
        proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.PIPE)
        try:
            async with asyncio.timeout(SPEAK_TIMEOUT_S):
                _, err = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            self._warn(argv[0] + "-timeout", f"{argv[0]} took over {SPEAK_TIMEOUT_S:.0f} s; stopped it")
            return
        if proc.returncode:
            self._warn(argv[0] + "-rc", f"{argv[0]} failed: {err.decode(errors='replace').strip()[:200]}")

    def _warn(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("%s", message)

    async def say(self, text: str, voice: str) -> None:
        await self._run("espeak-ng", "-v", voice, text)

    async def tone(self) -> None:
        await self._run("play", "-q", "-n", "synth", "0.15", "sine", "880", "synth", "0.15", "sine", "1320")


SourceFactory = Callable[[NodeConfig], FrameSource]


def microphone(node: NodeConfig) -> FrameSource:
    return MicrophoneSource(node.options.get("device"))


def recognizer_for(node: NodeConfig) -> PhraseRecognizer:
    """The recogniser for the intents this node's ``inputs`` name (other phrases are not listened for)."""
    phrases = {intent: words for intent, words in node.options["phrases"].items() if intent in node.inputs}
    return PhraseRecognizer(phrases, language=node.options["language"], threshold=node.options["threshold"])


class VoiceNode:
    def __init__(self, controller: Any, node: NodeConfig, *, source: SourceFactory = microphone,
                 player: Player | None = None, recognizer: PhraseRecognizer | None = None) -> None:
        if node.transport != "voice":
            raise ValueError(f"node {node.id!r} has transport {node.transport!r}, not 'voice'")
        self.controller = controller
        self.node = node
        self.options = node.options
        self._source_factory = source
        self._player = player if player is not None else EspeakPlayer()
        self._recognizer = recognizer
        self._source: FrameSource | None = None
        self._stopping = False
        self._stop_event: asyncio.Event | None = None
        self._faulty = False
        self.delivered: list[Detection] = []

    @property
    def enabled(self) -> bool:
        return bool(self.options.get("enabled", True))

    async def run(self) -> None:
        """Listen until :meth:`stop` (or the end of a file source); reopen a failed microphone."""
        if not self.enabled:
            log.info("voice node %s: voice is off for this bed (enabled = false): not listening", self.node.id)
            return
        loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        if self._recognizer is None:
            self._recognizer = await asyncio.to_thread(recognizer_for, self.node)
        listener = Listener(self._recognizer, vad_mode=self.options["vad_mode"],
                            max_utterance_s=self.options["max_utterance_s"])
        retry_s = RETRY_FIRST_S
        while not self._stopping:
            try:
                self._source = await asyncio.to_thread(self._source_factory, self.node)
                await self.controller.local_online(self.node.id, FW, f"pocketsphinx {self.options['language']}",
                                                   ("voice",))
                await self._fault(False, "")
                retry_s = RETRY_FIRST_S
                await asyncio.to_thread(self._listen, listener, loop)
                return  # the source ended (a file)
            except AudioError as exc:
                if self._stopping:
                    return
                log.warning("voice node %s: %s; trying again in %.0f s", self.node.id, exc, retry_s)
                await self._fault(True, str(exc))
                try:
                    async with asyncio.timeout(retry_s):
                        await self._stop_event.wait()
                except TimeoutError:
                    pass
                retry_s = min(RETRY_MAX_S, retry_s * 2)
            finally:
                if self._source is not None:
                    self._source.close()
                    self._source = None
                listener.reset()

    def _listen(self, listener: Listener, loop: asyncio.AbstractEventLoop) -> None:
        """Worker thread: frames -> detections, each delivered (stored and confirmed) before going on."""
        assert self._source is not None
        seen_every = max(1, int(self.controller.config.heartbeat_ms / 1000 / 0.03))
        frames = 0

        def counted():
            nonlocal frames
            for frame in self._source.frames():
                frames += 1
                if frames % seen_every == 0:   # audio is arriving: the node is alive
                    loop.call_soon_threadsafe(self.controller.local_seen, self.node.id)
                yield frame

        for detection in listener.detections(counted()):
            if self._stopping:
                return
            asyncio.run_coroutine_threadsafe(self.deliver(detection), loop).result()
            drain = getattr(self._source, "drain", None)
            if drain is not None:   # what the microphone heard while we spoke is dropped
                drain()
            listener.reset()

    async def deliver(self, detection: Detection) -> None:
        """Store the intent as the node's input, then confirm it to the patient."""
        records = await self.controller.local_event(
            self.node.id, "button", detection.intent, 1,
            detail={"phrase": detection.phrase, "confidence": detection.confidence})
        self.delivered.append(detection)
        meaning = self.node.inputs.get(detection.intent)
        kinds = {r.kind for r in records}
        if meaning == "patient_cancel" and "call.cleared" not in kinds:
            text = NOTHING_TO_CANCEL
        elif "call.repeated" in kinds:
            text = REPEATED
        else:
            text = CONFIRMATIONS.get(meaning or "", "")
        await self._confirm(text)

    async def _confirm(self, text: str) -> None:
        mode = self.options.get("confirm", "speech")
        try:
            if mode == "speech" and text:
                await self._player.say(text, self.options.get("confirm_voice", "en-us"))
            elif mode == "tone" or (mode == "speech" and not text):
                await self._player.tone()
        except Exception:  # the call is stored; a failed confirmation must not stop listening
            log.exception("voice node %s: confirmation failed", self.node.id)

    async def _fault(self, faulty: bool, error: str) -> None:
        if faulty != self._faulty:
            self._faulty = faulty
            await self.controller.system_fault(f"voice:{self.node.id}", faulty,
                                               {"node": self.node.id, "error": error} if faulty else {})

    def stop(self) -> None:
        self._stopping = True
        if self._stop_event is not None:
            self._stop_event.set()
        if self._source is not None:
            self._source.close()


class VoiceService:
    """Runs every voice node of the controller's room; ``start`` at room start, ``stop`` at its end."""

    def __init__(self, controller: Any, *, source: SourceFactory = microphone, player: Player | None = None) -> None:
        self.nodes = [VoiceNode(controller, cfg, source=source, player=player)
                      for cfg in controller.config.nodes.values() if cfg.transport == "voice"]
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        for node in self.nodes:
            self._tasks.append(asyncio.create_task(self._run(node), name=f"voice-{node.node.id}"))

    @staticmethod
    async def _run(node: VoiceNode) -> None:
        try:
            await node.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("voice node %s stopped", node.node.id)

    async def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        for task in self._tasks:
            try:
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    await asyncio.shield(task)
            except TimeoutError:   # waiting to retry a microphone: nothing to finish
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._tasks.clear()
