"""Voice calls: a patient says "nurse" and the nurse hears it; offline, and no audio is kept.

Pieces, each replaceable in tests: a frame source (``MicrophoneSource``, ``WavFileSource``), a
``Listener`` (voice activity detection, then a recogniser: ``WhisperRecognizer``, which
transcribes and matches whole sentences against a closed intent grammar, or the low-power
``PhraseRecognizer``), the room's ``Decoder`` behind a ``DecodeGate`` (one decode at a time,
within a processor budget), and a ``VoiceNode`` that stores each intent through
``controller.local_event`` and confirms it through a ``Player``. See docs/voice.md.
"""

from .audio import ArraySource, AudioError, FrameSource, MicrophoneSource, Resampler, WavFileSource
from .budget import DecodeGate
from .intents import GRAMMAR, IntentMatcher
from .listener import Detection, Listener
from .node import CONFIRMATIONS, Decoder, EspeakPlayer, Player, VoiceNode, VoiceService, make_recognizer, recognizer_for
from .options import PHRASES, parse_options
from .recognizer import PhraseRecognizer, Recognition, RecognizerError

__all__ = ["ArraySource", "AudioError", "CONFIRMATIONS", "DecodeGate", "Decoder", "Detection", "EspeakPlayer",
           "FrameSource", "GRAMMAR", "IntentMatcher", "Listener", "MicrophoneSource", "PHRASES", "PhraseRecognizer",
           "Player", "Recognition", "RecognizerError", "Resampler", "VoiceNode", "VoiceService", "WavFileSource",
           "make_recognizer", "parse_options", "recognizer_for"]
