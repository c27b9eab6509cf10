"""Frames in, detections out: voice activity detection, then recognition per utterance.

The same :class:`Listener` runs on the microphone and on WAV files (``smartroom voice recognize``,
the tests, the benchmark). An utterance is held in memory only while it is being spoken and
decoded, and dropped right after; one longer than ``max_utterance_s`` is conversation, not a
command: it is dropped as it grows and never decoded. The VAD gates the recogniser: silence,
noise and long speech cost no decoding at all.

``detections`` decodes each utterance as it ends (files: nothing is ever dropped). On the
microphone, :class:`~sensors.voice.budget.DecodeGate` sits between ``utterances`` and ``decode``
instead, so that decoding never holds up listening (docs/voice.md, "Processor budget").
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Protocol

from .audio import FRAME_BYTES, FRAME_S, SAMPLE_RATE
from .recognizer import Recognition

VAD_WINDOW_S = 0.3   # PocketSphinx endpointer: speech starts/ends when 90 % of this window agrees
VAD_RATIO = 0.9
MIN_UTTERANCE_S = 0.2  # shorter blips (a click, a knock) are not words


class Recognizer(Protocol):
    """PhraseRecognizer (PocketSphinx) or WhisperRecognizer: one utterance in, an intent or None out."""

    engine: str
    threshold: float

    def recognize(self, pcm: bytes) -> Recognition | None: ...


@dataclass(frozen=True, slots=True)
class Detection:
    time_s: float        # when the utterance started, seconds from the start of the source
    intent: str
    phrase: str
    confidence: float
    duration_s: float
    transcript: str = ""

    def to_json(self) -> dict[str, object]:
        return {"time": round(self.time_s, 2), "intent": self.intent, "phrase": self.phrase,
                "confidence": self.confidence, "transcript": self.transcript}

    def detail(self, engine: str) -> dict[str, object]:
        """What the call's detail keeps of an accepted command: never audio."""
        return {"intent": self.intent, "phrase": self.phrase, "transcript": self.transcript,
                "confidence": self.confidence, "engine": engine}


@dataclass(frozen=True, slots=True)
class Utterance:
    start_s: float       # seconds from the start of the source
    pcm: bytes           # 16 kHz mono 16-bit; in memory only, dropped once decoded

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / 2 / SAMPLE_RATE


@dataclass(slots=True)
class ListenerStats:
    audio_s: float = 0.0        # audio listened to
    utterances: int = 0         # stretches of speech decoded
    too_long: int = 0           # stretches dropped undecoded as conversation
    decode_s: float = 0.0       # processor time spent in VAD and decoding


class Listener:
    def __init__(self, recognizer: Recognizer, *, vad_mode: int = 3, max_utterance_s: float = 3.0,
                 clock: Callable[[], float] = time.process_time) -> None:
        import pocketsphinx

        self.recognizer = recognizer
        self.max_bytes = int(max_utterance_s * SAMPLE_RATE) * 2
        self.vad_mode = vad_mode
        self.stats = ListenerStats()
        self._clock = clock
        self._ps = pocketsphinx
        self._new_endpointer()

    def _new_endpointer(self) -> None:
        self._ep = self._ps.Endpointer(window=VAD_WINDOW_S, ratio=VAD_RATIO, vad_mode=self.vad_mode,
                                       sample_rate=SAMPLE_RATE, frame_length=FRAME_S)
        if self._ep.frame_bytes != FRAME_BYTES:
            raise RuntimeError(f"endpointer wants {self._ep.frame_bytes}-byte frames, not {FRAME_BYTES}")
        self._speech = bytearray()
        self._start_s = 0.0
        self._dropped = False

    def reset(self) -> None:
        """Forget the utterance in progress (e.g. after the room's own confirmation was played)."""
        self._speech.clear()
        self._new_endpointer()

    def detections(self, frames: Iterable[bytes]) -> Iterator[Detection]:
        """Detections in ``frames`` (FRAME_BYTES each), each decoded as its utterance ends."""
        for utterance in self.utterances(frames):
            found = self.decode(utterance)
            if found is not None:
                yield found

    def utterances(self, frames: Iterable[bytes]) -> Iterator[Utterance]:
        """The stretches of speech in ``frames`` worth decoding, as each ends (VAD only, no decoding)."""
        offset_s = self.stats.audio_s
        n = 0
        for frame in frames:
            t0 = self._clock()
            n += 1
            was_speech = self._ep.in_speech
            speech = self._ep.process(frame)
            found = None
            if speech is not None:
                if not was_speech:
                    self._start_s = offset_s + self._ep.speech_start
                    self._dropped = False
                if not self._dropped:
                    self._speech += speech
                    if len(self._speech) > self.max_bytes:   # conversation: stop holding it
                        self._speech.clear()
                        self._dropped = True
                        self.stats.too_long += 1
                if not self._ep.in_speech:
                    found = self._utterance_done()
            self.stats.audio_s = offset_s + n * FRAME_S
            self.stats.decode_s += self._clock() - t0
            if found is not None:
                yield found
        if self._ep.in_speech:
            rest = self._ep.end_stream(bytes(FRAME_BYTES))  # it needs a (final) frame
            if rest and not self._dropped:
                self._speech += rest
            found = self._utterance_done()
            if found is not None:
                yield found

    def _utterance_done(self) -> Utterance | None:
        pcm, dropped = bytes(self._speech), self._dropped
        self._speech.clear()
        self._dropped = False
        if dropped or len(pcm) / 2 / SAMPLE_RATE < MIN_UTTERANCE_S:
            return None
        return Utterance(self._start_s, pcm)

    def decode(self, utterance: Utterance) -> Detection | None:
        """Recognise one utterance (in the calling thread); its audio is not kept."""
        t0 = self._clock()
        self.stats.utterances += 1
        try:
            result = self.recognizer.recognize(utterance.pcm)
        finally:
            self.stats.decode_s += self._clock() - t0
        if result is None:
            return None
        return Detection(utterance.start_s, result.intent, result.phrase, result.confidence, utterance.duration_s,
                         result.transcript)
