"""Frames in, detections out: voice activity detection, then phrase recognition per utterance.

The same :class:`Listener` runs on the microphone and on WAV files (``smartroom voice recognize``,
the tests, the benchmark). An utterance is held in memory only while it is being spoken and
decoded, and dropped right after; one longer than ``max_utterance_s`` is conversation, not a
command: it is dropped as it grows and never decoded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from .audio import FRAME_BYTES, FRAME_S, SAMPLE_RATE
from .recognizer import PhraseRecognizer

VAD_WINDOW_S = 0.3   # PocketSphinx endpointer: speech starts/ends when 90 % of this window agrees
VAD_RATIO = 0.9
MIN_UTTERANCE_S = 0.2  # shorter blips (a click, a knock) are not words


@dataclass(frozen=True, slots=True)
class Detection:
    time_s: float        # when the utterance started, seconds from the start of the source
    intent: str
    phrase: str
    confidence: float
    duration_s: float

    def to_json(self) -> dict[str, object]:
        return {"time": round(self.time_s, 2), "intent": self.intent, "phrase": self.phrase,
                "confidence": self.confidence}


@dataclass(slots=True)
class ListenerStats:
    audio_s: float = 0.0        # audio listened to
    utterances: int = 0         # stretches of speech decoded
    too_long: int = 0           # stretches dropped undecoded as conversation
    decode_s: float = 0.0       # processor time spent in VAD and decoding


class Listener:
    def __init__(self, recognizer: PhraseRecognizer, *, vad_mode: int = 3, max_utterance_s: float = 3.0,
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
        """Detections in ``frames`` (FRAME_BYTES each), as each utterance ends."""
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
            t0 = self._clock()
            rest = self._ep.end_stream(bytes(FRAME_BYTES))  # it needs a (final) frame
            if rest and not self._dropped:
                self._speech += rest
            found = self._utterance_done()
            self.stats.decode_s += self._clock() - t0
            if found is not None:
                yield found

    def _utterance_done(self) -> Detection | None:
        pcm, dropped = bytes(self._speech), self._dropped
        self._speech.clear()
        self._dropped = False
        duration_s = len(pcm) / 2 / SAMPLE_RATE
        if dropped or duration_s < MIN_UTTERANCE_S:
            return None
        self.stats.utterances += 1
        result = self.recognizer.recognize(pcm)
        del pcm
        if result is None:
            return None
        return Detection(self._start_s, result.intent, result.phrase, result.confidence, duration_s)
