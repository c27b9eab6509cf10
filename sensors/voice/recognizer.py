"""Phrase recognition with PocketSphinx: one short stretch of speech in, an intent or nothing out.

The decoder does not choose only among the command phrases (a grammar would force every sound
into some command). It decodes with a small language model that holds the command phrases *and*
about 250 everyday English words as competitors: ordinary talk is transcribed as everyday
words, and only an utterance that is, as a whole, one of the phrases becomes an intent. Its
confidence is the decoder's posterior probability of that transcription (lattice forward-backward).
How well this works, and where it falls short, is measured by bench/voice (docs/voice.md).

    >>> rec = PhraseRecognizer({"nurse": ("nurse", "call the nurse"), "water": ("water",)})
    >>> rec.recognize(pcm_16k_mono)   # -> Recognition(intent='nurse', phrase='call the nurse', ...)
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
from dataclasses import dataclass
from typing import Mapping, Sequence

from .audio import SAMPLE_RATE

log = logging.getLogger("smartroom.voice")

# Each command phrase counts as this many sentences in the language model, each everyday word as
# one: the prior odds of "a command" against "anything else". Chosen on bench/voice (docs/voice.md).
COMMAND_WEIGHT = 30
LM_DISCOUNT = 0.5   # Witten-Bell-like discount mass of pocketsphinx's ArpaBoLM (its default)

# Everyday English (about 250 words) that competes with the commands: frequent words, replies, room talk.
# A generic list (not taken from the benchmark's texts); words of the phrases are left out.
EVERYDAY_WORDS = """
the of and to a in is you that it he was for on are as with his they i at be this have from or one
had by word but not what all were we when your can said there use an each which she do how their if
will up other about out many then them these so some her would make like him into time has look two
more write go see number no way could people my than first been call who its now find long down day
did get come made may part yes okay thanks thank hello hi good morning night please sorry well right
sure know think want need tell going really today tomorrow yesterday home house family doctor food
tea coffee bed room window door phone television news weather rain sun cold hot little big old new
just very much also back after work year years still here where why because man woman child friend
money car street city country world school government water week month hand eye life place thing
name again never always something nothing everything off over under before between same three four
five six seven ten hundred thousand minute hour evening afternoon daughter son mother father wife
husband brother sister dog cat garden music game team play show program watch listen talk read walk
sleep eat drink open close turn start stop wait put take give keep let say ask try feel leave bring
""".split()


class RecognizerError(RuntimeError):
    """The recogniser cannot be built (a word outside the dictionary, no model for the language)."""


@dataclass(frozen=True, slots=True)
class Recognition:
    intent: str
    phrase: str          # the normalised sentence that was accepted
    confidence: float    # 0..1: PocketSphinx's posterior of the transcription, Whisper's mean token probability
    transcript: str = "" # what the decoder wrote, as it wrote it


def _decoder_module():
    import pocketsphinx

    return pocketsphinx


def model_words() -> frozenset[str]:
    """Every word of the shipped English pronunciation dictionary (for checking phrase overrides)."""
    ps = _decoder_module()
    path = os.path.join(ps.get_model_path(), "en-us", "cmudict-en-us.dict")
    with open(path, encoding="utf-8") as f:
        return frozenset(line.split(" ", 1)[0].split("(", 1)[0] for line in f if line.strip())


def _lm_text(phrases: Mapping[str, Sequence[str]], weight: int) -> str:
    command_words = {w for words in phrases.values() for p in words for w in p.split()}
    lines = [p for words in phrases.values() for p in words for _ in range(weight)]
    lines += [w for w in EVERYDAY_WORDS if w not in command_words]
    return "\n".join(lines) + "\n"


def _load_lm(ps, decoder, arpa: str):
    """Hand the ARPA text to PocketSphinx without putting it on disk (a memfd where there is one)."""
    data = arpa.encode()
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("smartroom-voice-lm")
        try:
            os.write(fd, data)
            os.lseek(fd, 0, os.SEEK_SET)
            return ps.NGramModel(decoder.config, decoder.get_logmath(), f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
    with tempfile.NamedTemporaryFile("wb", suffix=".lm") as f:  # not Linux: a text model, never audio
        f.write(data)
        f.flush()
        return ps.NGramModel(decoder.config, decoder.get_logmath(), f.name)


class PhraseRecognizer:
    """Recognises one utterance (16 kHz mono 16-bit PCM) as one of ``phrases`` or as nothing.

    ``phrases`` maps intent -> phrases (lower case words). Utterances whose transcription is not
    exactly one phrase, or whose confidence is below ``threshold``, are rejected (None).
    """

    engine = "pocketsphinx"

    def __init__(self, phrases: Mapping[str, Sequence[str]], *, language: str = "en", threshold: float = 0.0,
                 command_weight: int = COMMAND_WEIGHT) -> None:
        if language != "en":
            raise RecognizerError(f"no offline model for language '{language}'")
        ps = _decoder_module()
        from pocketsphinx.lm import ArpaBoLM

        self.threshold = threshold
        self._by_phrase = {" ".join(p.split()): intent for intent, words in phrases.items() for p in words}
        if not self._by_phrase:
            raise RecognizerError("no phrases to listen for")
        # Nothing is logged by the decoder and nothing is written: no raw/feature/lattice dumps.
        self._decoder = ps.Decoder(lm=None, loglevel="FATAL", logfn=os.devnull, bestpath=True,
                                   samprate=float(SAMPLE_RATE))
        unknown = sorted({w for p in self._by_phrase for w in p.split() if self._decoder.lookup_word(w) is None})
        if unknown:
            raise RecognizerError(f"not in the pronunciation dictionary: {', '.join(unknown)}")
        model = ArpaBoLM(text=_lm_text(phrases, command_weight), add_start=True, discount_mass=LM_DISCOUNT)
        model.compute()
        arpa = io.StringIO()
        model.write(arpa)
        self._decoder.add_lm("phrases", _load_lm(ps, self._decoder, arpa.getvalue()))
        self._decoder.activate_search("phrases")

    @property
    def phrases(self) -> Mapping[str, str]:
        """phrase -> intent."""
        return dict(self._by_phrase)

    def transcribe(self, pcm: bytes) -> tuple[str, float]:
        """The decoder's transcription of one utterance and its posterior probability."""
        d = self._decoder
        d.start_utt()
        d.process_raw(pcm, no_search=False, full_utt=True)
        d.end_utt()
        hyp = d.hyp()
        if hyp is None:
            return "", 0.0
        words = [w for w in hyp.hypstr.split() if not w.startswith(("<", "["))]
        return " ".join(words), max(0.0, min(1.0, float(hyp.prob)))

    def recognize(self, pcm: bytes) -> Recognition | None:
        text, confidence = self.transcribe(pcm)
        intent = self._by_phrase.get(text)
        if intent is None or confidence < self.threshold:
            return None
        return Recognition(intent, text, round(confidence, 3), transcript=text)
