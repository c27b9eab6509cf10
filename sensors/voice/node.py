"""A voice node of the room: microphone -> Listener -> ``controller.local_event`` -> spoken confirmation.

One :class:`VoiceNode` per ``transport = "voice"`` node of the room file. Listening (the VAD) runs
in a worker thread per node; decoding runs in the room's one decoder thread behind a
:class:`~sensors.voice.budget.DecodeGate` (one utterance at a time, a bounded queue, a processor
budget), so neither ever runs on the event loop. Each detection is handed to the event loop,
stored by the controller like a button press (input name = intent, detail = intent, phrase,
transcript, confidence, engine), and only then confirmed to the patient ("Calling your nurse.").
While the confirmation plays, what the microphone hears is dropped, so the room never answers itself.

    service = VoiceService(controller)            # every voice node of controller.config
    await service.start()
    ...
    await service.stop()

Privacy: audio stays in this process's memory, an utterance at a time; nothing is written, logged
or sent. Only the intent, the accepted sentence's text and the confidence leave the recogniser.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import threading
import time
from typing import Any, Callable, Mapping, Protocol

from controller.room.config import NodeConfig
from .audio import AudioError, FrameSource, MicrophoneSource
from .budget import DecodeGate
from .listener import Detection, Listener, Recognizer, Utterance
from .recognizer import PhraseRecognizer, RecognizerError

log = logging.getLogger("smartroom.voice")

FW = "voice 1"
RETRY_FIRST_S = 5.0      # microphone missing: try again after this, doubling ...
RETRY_MAX_S = 60.0       # ... up to this
SPEAK_TIMEOUT_S = 10.0   # a confirmation that takes longer is abandoned (a stuck audio device)
STOP_TIMEOUT_S = 2.0     # a closed microphone ends its reader within MIC_GET_TIMEOUT_S; then we cancel
STOP_DECODE_S = 5.0      # one decode takes well under a second; a decoder still busy then is left to finish alone

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


def make_recognizer(options: Mapping[str, Any], phrases: Mapping[str, Any] | None = None, *,
                    transcriber: Any = None) -> Recognizer:
    """The recogniser the options name (``engine``), for ``phrases`` (default: the options' phrases).

    ``transcriber``: an already loaded Whisper model to share (one per room); loaded here if None.
    Raises RecognizerError (ModelError for a missing or altered Whisper model) with what to do.
    """
    phrases = options["phrases"] if phrases is None else phrases
    if options.get("engine", "pocketsphinx") == "whisper":
        from .whisper import WhisperRecognizer, WhisperTranscriber

        return WhisperRecognizer(transcriber if transcriber is not None else WhisperTranscriber.load(), phrases,
                                 threshold=options["threshold"])
    return PhraseRecognizer(phrases, language=options["language"], threshold=options["threshold"])


def recognizer_for(node: NodeConfig, *, transcriber: Any = None) -> Recognizer:
    """The recogniser for the intents this node's ``inputs`` name (other phrases are not listened for)."""
    phrases = {intent: words for intent, words in node.options["phrases"].items() if intent in node.inputs}
    return make_recognizer(node.options, phrases, transcriber=transcriber)


class Decoder:
    """The room's one decoder thread: takes utterances from the gate, decodes, hands detections back."""

    def __init__(self, gate: DecodeGate | None = None) -> None:
        self.gate: DecodeGate = gate if gate is not None else DecodeGate()
        self.errors = 0
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()   # every bed's VAD thread may be the first to offer

    def start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="voice-decoder", daemon=True)
                self._thread.start()

    def offer(self, node: "VoiceNode", listener: Listener, utterance: Utterance) -> None:
        self.start()
        self.gate.offer((node, listener, utterance))

    def _run(self) -> None:
        while True:
            item = self.gate.take()
            if item is None:
                return   # closed
            node, listener, utterance = item
            t0 = time.process_time()   # the model computes in its own threads
            detection = None
            try:
                detection = listener.decode(utterance)
            except Exception:   # a decoder fault must not end listening for every bed
                self.errors += 1
                log.exception("voice node %s: decoding failed", node.node.id)
            finally:
                del utterance, item
                self.gate.done(time.process_time() - t0)
            if detection is not None:
                node.detected(detection)

    def stop(self, timeout: float = STOP_DECODE_S) -> None:
        self.gate.close()
        with self._start_lock:
            if self._thread is not None:
                self._thread.join(timeout)
                self._thread = None


class VoiceNode:
    def __init__(self, controller: Any, node: NodeConfig, *, source: SourceFactory = microphone,
                 player: Player | None = None, recognizer: Recognizer | None = None,
                 decoder: Decoder | None = None, transcriber: Callable[[], Any] | None = None) -> None:
        if node.transport != "voice":
            raise ValueError(f"node {node.id!r} has transport {node.transport!r}, not 'voice'")
        self.controller = controller
        self.node = node
        self.options = node.options
        self._source_factory = source
        self._player = player if player is not None else EspeakPlayer()
        self._recognizer = recognizer
        self._decoder = decoder
        self._own_decoder = False
        self._transcriber = transcriber     # () -> shared Whisper model (loads it once), for the whisper engine
        self._source: FrameSource | None = None
        self._stopping = False
        self._stop_event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._faulty = False
        self._muted = threading.Event()     # a detection is being stored and confirmed: drop what is heard
        self._reset_wanted = False
        self._deliver_lock: asyncio.Lock | None = None
        self.delivered: list[Detection] = []
        self.muted_frames = 0

    @property
    def enabled(self) -> bool:
        return bool(self.options.get("enabled", True))

    @property
    def engine(self) -> str:
        return getattr(self._recognizer, "engine", self.options.get("engine", "pocketsphinx"))

    def _build_recognizer(self) -> Recognizer:
        shared = self._transcriber() if self._transcriber is not None and self.options.get("engine") == "whisper" \
            else None
        return recognizer_for(self.node, transcriber=shared)

    async def run(self) -> None:
        """Listen until :meth:`stop` (or the end of a file source); reopen a failed microphone."""
        if not self.enabled:
            log.info("voice node %s: voice is off for this bed (enabled = false): not listening", self.node.id)
            return
        loop = self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        self._deliver_lock = asyncio.Lock()
        if self._recognizer is None:
            try:
                self._recognizer = await asyncio.to_thread(self._build_recognizer)
            except RecognizerError as exc:   # no model, or not the pinned one: loud, and nothing to retry
                log.error("voice node %s: %s", self.node.id, exc)
                await self._fault(True, str(exc))
                return
        listener = Listener(self._recognizer, vad_mode=self.options["vad_mode"],
                            max_utterance_s=self.options["max_utterance_s"])
        retry_s = RETRY_FIRST_S
        try:
            while not self._stopping:
                try:
                    self._source = await asyncio.to_thread(self._source_factory, self.node)
                    await self.controller.local_online(self.node.id, FW, f"{self.engine} {self.options['language']}",
                                                       ("voice",))
                    await self._fault(False, "")
                    retry_s = RETRY_FIRST_S
                    if getattr(self._source, "realtime", False):
                        await asyncio.to_thread(self._listen_live, listener)
                    else:
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
        finally:
            if self._own_decoder and self._decoder is not None:
                await asyncio.to_thread(self._decoder.stop)

    def _frames(self):
        """The source's frames, checking in while audio arrives, minus what is heard while muted."""
        assert self._source is not None and self._loop is not None
        seen_every = max(1, int(self.controller.config.heartbeat_ms / 1000 / 0.03))
        frames = 0
        for frame in self._source.frames():
            frames += 1
            if frames % seen_every == 0:   # audio is arriving: the node is alive
                self._loop.call_soon_threadsafe(self.controller.local_seen, self.node.id)
            yield frame

    def _listen(self, listener: Listener, loop: asyncio.AbstractEventLoop) -> None:
        """Worker thread, a recording: frames -> detections, each delivered (stored and confirmed) before going on."""
        for detection in listener.detections(self._frames()):
            if self._stopping:
                return
            asyncio.run_coroutine_threadsafe(self.deliver(detection), loop).result()
            listener.reset()

    def _listen_live(self, listener: Listener) -> None:
        """Worker thread, the microphone: the VAD runs here, in step with the audio; decoding is the
        decoder thread's, behind the room's gate, so a slow decode never makes this thread fall behind."""
        if self._decoder is None:
            self._decoder, self._own_decoder = Decoder(), True

        def unmuted():
            for frame in self._frames():
                if self._muted.is_set():
                    self.muted_frames += 1   # the room's own confirmation, or what was said meanwhile
                    continue
                if self._reset_wanted:
                    self._reset_wanted = False
                    listener.reset()
                yield frame

        for utterance in listener.utterances(unmuted()):
            if self._stopping:
                return
            self._decoder.offer(self, listener, utterance)

    def detected(self, detection: Detection) -> None:
        """Decoder thread: a command was heard; mute listening until it is stored and confirmed."""
        if self._stopping or self._loop is None:
            return
        self._muted.set()
        asyncio.run_coroutine_threadsafe(self._deliver_then_listen(detection), self._loop)

    async def _deliver_then_listen(self, detection: Detection) -> None:
        assert self._deliver_lock is not None
        try:
            async with self._deliver_lock:   # one bed's commands are stored in the order they were said
                await self.deliver(detection)
        except Exception:
            log.exception("voice node %s: a '%s' command could not be delivered", self.node.id, detection.intent)
            raise
        finally:
            self._reset_wanted = True
            self._muted.clear()

    async def deliver(self, detection: Detection) -> None:
        """Store the intent as the node's input, then confirm it to the patient."""
        records = await self.controller.local_event(self.node.id, "button", detection.intent, 1,
                                                    detail=detection.detail(self.engine))
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
    """Runs every voice node of the controller's room; ``start`` at room start, ``stop`` at its end.

    The nodes share one decoder thread (and its gate) and, for the whisper engine, one model.
    """

    def __init__(self, controller: Any, *, source: SourceFactory = microphone, player: Player | None = None,
                 gate: DecodeGate | None = None) -> None:
        self.decoder = Decoder(gate)
        self._model: Any = None
        self._model_lock = threading.Lock()
        self.nodes = [VoiceNode(controller, cfg, source=source, player=player, decoder=self.decoder,
                                transcriber=self._shared_model)
                      for cfg in controller.config.nodes.values() if cfg.transport == "voice"]
        self._tasks: list[asyncio.Task[None]] = []

    def _shared_model(self) -> Any:
        """The room's one Whisper model, loaded (and verified) by the first node that needs it."""
        from .whisper import WhisperTranscriber

        with self._model_lock:
            if self._model is None:
                self._model = WhisperTranscriber.load()
            return self._model

    def status(self) -> dict[str, Any]:
        """For the room's status and metrics: the decode gate's counters, and per node what it runs."""
        return {"decoder": {**self.decoder.gate.status(), "errors": self.decoder.errors},
                "nodes": {n.node.id: {"enabled": n.enabled, "engine": n.engine, "muted_frames": n.muted_frames}
                          for n in self.nodes}}

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
        await asyncio.to_thread(self.decoder.stop)
