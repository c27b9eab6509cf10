"""Voice calls: a patient says "nurse" and the nurse hears it; offline, and no audio is kept.

Pieces, each replaceable in tests: a frame source (``MicrophoneSource``, ``WavFileSource``), a
``Listener`` (voice activity detection, then a ``PhraseRecognizer``), and a ``VoiceNode`` that
stores each intent through ``controller.local_event`` and confirms it through a ``Player``.
See docs/voice.md.
"""

from .audio import ArraySource, AudioError, FrameSource, MicrophoneSource, Resampler, WavFileSource
from .listener import Detection, Listener
from .node import CONFIRMATIONS, EspeakPlayer, Player, VoiceNode, VoiceService, recognizer_for
from .options import PHRASES, parse_options
from .recognizer import PhraseRecognizer, Recognition, RecognizerError

__all__ = ["ArraySource", "AudioError", "CONFIRMATIONS", "Detection", "EspeakPlayer", "FrameSource", "Listener",
           "MicrophoneSource", "PHRASES", "PhraseRecognizer", "Player", "Recognition", "RecognizerError",
           "Resampler", "VoiceNode", "VoiceService", "WavFileSource", "parse_options", "recognizer_for"]
