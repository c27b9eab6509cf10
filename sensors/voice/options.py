"""The ``[nodes.<id>.voice]`` options table, checked, and the phrase lists per language.

A voice node in the room file::

    [nodes.voice-a]
    transport = "voice"
    bed = "A"
    location = "bedside"
    inputs = { nurse = "patient_call", help = "patient_emergency", water = "request_water",
               pain = "request_pain", toilet = "request_toilet", cancel = "patient_cancel" }

    [nodes.voice-a.voice]
    enabled = true          # false: the microphone is never opened for this bed
    engine = "whisper"      # or "pocketsphinx": the low-power engine (fewer phrasings, weaker in noise)
    device = "USB"          # a sounddevice input device (name part or index); default: the system's
    threshold = 0.5         # accept a phrase at this confidence or more (0..1)
    phrases = { water = ["[some] water", "i am thirsty"] }   # replaces the built-in phrasings of an intent

Input names are intent names; the node's ``inputs`` say what each intent means in the room. Only
intents listed there are listened for. Phrasings may have ``[optional]`` and ``(alternative|words)``
parts (sensors/voice/intents.py); for pocketsphinx each expands to its phrases, every word of which
must be in its pronunciation dictionary.
"""

from __future__ import annotations

import functools
import re
from types import MappingProxyType
from typing import Any, Mapping

from controller.room.config import OptionError
from .intents import (DEFAULT_MIN_CONFIDENCE, GRAMMAR, GrammarError, IntentMatcher, check_pattern, expand,
                      normalise_pattern)

# Built-in phrases per language: intent -> phrases. An intent is an input name of the voice node.
# Short and distinct on purpose: each must sound unlike the others and unlike everyday replies.
PHRASES: Mapping[str, Mapping[str, tuple[str, ...]]] = MappingProxyType({
    "en": MappingProxyType({
        "nurse": ("nurse", "call the nurse", "nurse please", "help"),
        "help": ("help me", "i fell", "i have fallen", "emergency"),
        "water": ("water", "i need water", "water please"),
        "pain": ("i am in pain", "pain", "it hurts"),
        "toilet": ("toilet", "i need the toilet", "bathroom please"),
        "cancel": ("never mind", "cancel", "cancel the call"),
    }),
})
# Languages a model is shipped for (sensors/voice/recognizer.py). Korean: see docs/voice.md.
LANGUAGES = tuple(PHRASES)
# The whisper engine's phrasings (sensors/voice/intents.py): the phrases above and natural variants.
GRAMMARS: Mapping[str, Mapping[str, tuple[str, ...]]] = MappingProxyType({"en": GRAMMAR})
ENGINES = ("whisper", "pocketsphinx")
DEFAULT_ENGINE = "whisper"
MAX_POCKETSPHINX_PHRASES = 60   # per intent: each phrase is a sentence of its language model

CONFIRM_MODES = ("speech", "tone", "off")
DEFAULT_THRESHOLD = 0.0        # pocketsphinx: confidence to accept (0..1); its posterior gate costs more calls than it saves
DEFAULT_THRESHOLDS = {"pocketsphinx": DEFAULT_THRESHOLD, "whisper": DEFAULT_MIN_CONFIDENCE}
DEFAULT_MAX_UTTERANCE_S = 3.0  # a longer stretch of speech is conversation, not a command
DEFAULT_VAD_MODE = 3           # WebRTC VAD aggressiveness 0..3; 3 ignores most steady noise

_KEYS = ("enabled", "engine", "language", "phrases", "device", "threshold", "max_utterance_s", "vad_mode", "confirm",
         "confirm_voice")


def _typed(table: Mapping[str, Any], key: str, kind: type | tuple[type, ...], default: Any) -> Any:
    if key not in table:
        return default
    value = table[key]
    if isinstance(value, bool) and kind is not bool:
        raise OptionError((key,), f"expected {_kind_name(kind)}, got {value!r}")
    if not isinstance(value, kind):
        raise OptionError((key,), f"expected {_kind_name(kind)}, got {type(value).__name__} {value!r}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
             dict: "a table", list: "a list"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _number(table: Mapping[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = float(_typed(table, key, (int, float), default))
    if not low <= value <= high:
        raise OptionError((key,), f"{table[key]!r} is out of range {low:g}..{high:g}")
    return value


def normalise_phrase(text: str) -> str:
    """Lower case, single spaces, no punctuation but the apostrophe: how phrases are compared."""
    return " ".join(re.sub(r"[^a-z' ]+", " ", text.lower()).split())


@functools.cache
def _dictionary() -> frozenset[str]:
    from .recognizer import model_words

    return model_words()


def _overrides(table: Mapping[str, Any]) -> dict[str, list[str]]:
    overrides = _typed(table, "phrases", dict, {})
    for intent, value in overrides.items():
        path = ("phrases", intent)
        if not isinstance(value, list) or not value:
            raise OptionError(path, "expected a non-empty list of phrases, e.g. [\"water\", \"i am thirsty\"]")
        for i, phrase in enumerate(value):
            problem = check_pattern(phrase)
            if problem is not None:
                raise OptionError(path + (i,), problem)
    return overrides


def _whisper_phrases(table: Mapping[str, Any], language: str) -> Mapping[str, tuple[str, ...]]:
    grammar = dict(GRAMMARS[language])
    for intent, value in _overrides(table).items():
        grammar[intent] = tuple(normalise_pattern(p) for p in value)
    try:
        IntentMatcher(grammar)     # refuses a phrasing of two intents
    except GrammarError as exc:
        raise OptionError(("phrases",), str(exc)) from None
    return MappingProxyType(grammar)


def _pocketsphinx_phrases(table: Mapping[str, Any], language: str) -> Mapping[str, tuple[str, ...]]:
    phrases = dict(PHRASES[language])
    for intent, value in _overrides(table).items():
        path = ("phrases", intent)
        checked: list[str] = []
        for i, pattern in enumerate(value):
            for words in sorted(expand(pattern)):
                unknown = [w for w in words if w not in _dictionary()]
                if unknown:
                    raise OptionError(path + (i,), f"{', '.join(unknown)}: not in the {language} pronunciation "
                                                   f"dictionary")
                checked.append(" ".join(words))
        if len(checked) > MAX_POCKETSPHINX_PHRASES:
            raise OptionError(path, f"{len(checked)} phrases after expansion; pocketsphinx takes at most "
                                    f"{MAX_POCKETSPHINX_PHRASES} per intent")
        phrases[intent] = tuple(dict.fromkeys(checked))
    seen: dict[str, str] = {}
    for intent, words in phrases.items():
        for phrase in words:
            if phrase in seen and seen[phrase] != intent:
                raise OptionError(("phrases", intent), f"'{phrase}' is also a phrase of intent '{seen[phrase]}'")
            seen[phrase] = intent
    return MappingProxyType(phrases)


def _vad_mode(table: Mapping[str, Any]) -> int:
    mode = _typed(table, "vad_mode", int, DEFAULT_VAD_MODE)
    if not 0 <= mode <= 3:
        raise OptionError(("vad_mode",), f"{mode} is out of range 0..3")
    return mode


def parse_options(table: Mapping[str, Any]) -> dict[str, Any]:
    """Check a voice node's options table; raises OptionError naming the key."""
    for key in table:
        if key not in _KEYS:
            raise OptionError((key,), f"unknown key '{key}' (known: {', '.join(_KEYS)})")
    language = _typed(table, "language", str, "en")
    if language not in LANGUAGES:
        raise OptionError(("language",), f"'{language}' has no offline model here; available: "
                                         f"{', '.join(LANGUAGES)} (see docs/voice.md)")
    device = _typed(table, "device", (str, int), None)
    confirm = _typed(table, "confirm", str, "speech")
    if confirm not in CONFIRM_MODES:
        raise OptionError(("confirm",), f"'{confirm}' is not one of {', '.join(CONFIRM_MODES)}")
    engine = _typed(table, "engine", str, DEFAULT_ENGINE)
    if engine not in ENGINES:
        raise OptionError(("engine",), f"'{engine}' is not one of {', '.join(ENGINES)}")
    phrases = (_whisper_phrases if engine == "whisper" else _pocketsphinx_phrases)(table, language)
    return {
        "enabled": _typed(table, "enabled", bool, True),
        "engine": engine,
        "language": language,
        "phrases": phrases,
        "device": device,
        "threshold": _number(table, "threshold", DEFAULT_THRESHOLDS[engine], 0.0, 1.0),
        "max_utterance_s": _number(table, "max_utterance_s", DEFAULT_MAX_UTTERANCE_S, 1.0, 10.0),
        "vad_mode": _vad_mode(table),
        "confirm": confirm,
        "confirm_voice": _typed(table, "confirm_voice", str, "en-us"),
    }
