"""A closed set of intents, matched against a free transcription: whole sentences only, never keywords.

The whisper engine transcribes whatever was said; this module decides whether the sentence, as a
whole, is one way of asking for one of the room's intents. Each intent has a small grammar of
phrasings (:data:`GRAMMAR`); a sentence is a command only if *every* word of it is accounted for:

    [address] core [core [core]] [tail]

where ``address`` is a way of getting attention ("nurse", "hey", "excuse me", "please"), ``core``
one phrasing of an intent (repeated, as in "help, help me") and ``tail`` a politeness or urgency
word ("please", "now", "quickly"). So "can you get the nurse" and "nurse!" are calls, while "the
nursery is down the hall", "water the plants" and "thank you, nurse" are not: a command word inside
a longer sentence is conversation, and nothing here counts keywords.

Phrasings are written with ``[optional]`` words and ``(alternative|words)``, expanded once at start
into a set of word sequences (each intent at most :data:`MAX_EXPANSION`). A sentence is compared
after :func:`normalise` (lower case, no punctuation, contractions spelled out, "ok" -> "okay").

    >>> m = IntentMatcher(GRAMMAR)
    >>> m.match("Could someone call a nurse, please?")
    IntentMatch(intent='nurse', phrase='could someone call a nurse please')
    >>> m.match("Water the plants, would you?") is None
    True

:func:`decide` adds the acoustic side: the decoder's confidence in its transcription and its
probability that there was no speech at all, each with a threshold.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import MappingProxyType
from typing import Iterable, Mapping, Sequence

MAX_WORDS = 16          # a command is a short sentence; longer transcriptions are conversation
MAX_CORES = 3           # "help, help, help me": a phrasing said up to this many times in one breath
MAX_EXPANSION = 20_000  # word sequences one intent's phrasings may expand to (a typo in a pattern shows here)

# When a sentence parses as two intents (one phrasing of each: "nurse, help me"), the more urgent
# one is taken: a false emergency costs a walk to the bed, a missed one costs far more. "cancel"
# never combines with anything (asking for help and taking it back in one breath is no command).
URGENCY = ("help", "nurse", "pain", "toilet", "water")

# Getting attention before the request, and politeness or urgency after it.
ADDRESS = ("(nurse|hey nurse|hello nurse|excuse me nurse|nurse please|excuse me|hey|hello|sorry|oh|please|"
           "oh please|please please)")
TAIL = "(please|nurse|please nurse|nurse please|now|right now|now please|please now|quickly|quick|please quickly|"\
       "as soon as possible)"

_SOMEONE = "(you|someone|somebody|anyone|anybody)"
_ASK = "(can|could|would|will)"
_GLASS = "(some|a glass of|a cup of|a drink of|a bit of|a little)"
_BODY = "(leg|legs|arm|back|head|chest|stomach|tummy|belly|hip|knee|foot|feet|neck|shoulder|side|hand|wound)"
_LOO = "(toilet|bathroom|loo|restroom|commode|bedpan)"

# The built-in English grammar: intent -> phrasings. The built-in phrases of sensors/voice/options.py
# are all here; the rest are the same requests put the way people put them.
GRAMMAR: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "nurse": (
        "nurse", "help", "i need help", "i need some help", "i need a hand",
        "(call|get|fetch|find) [me] (the|a|my) nurse",
        f"{_ASK} {_SOMEONE} [please] (call|get|fetch|find) [me] (the|a|my) nurse",
        "(can|could|may) i (have|see|get) (the|a|my) nurse",
        "i (need|want|would like) (the|a|my) nurse",
        "i (need|want|would like) to (see|speak to|talk to) (the|a|my) nurse",
        f"(can|could) {_SOMEONE} come [here]", "i need (someone|somebody)",
    ),
    "help": (
        "help me", f"{_ASK} {_SOMEONE} [please] help me", "(someone|somebody) help [me]",
        "i fell", "i fell (down|over|out of bed|out of the bed)",
        "i have (fallen|fell)", "i have (fallen|fell) (down|over|out of bed|out of the bed)", "i just fell",
        "i can not get up", "i can not breathe",
        "emergency", "(it|this) is an emergency",
    ),
    "water": (
        "water", f"{_GLASS} water", f"i (need|want|would like) [{_GLASS}] water",
        f"(can|could|may) i (have|get) {_GLASS} water",
        f"{_ASK} {_SOMEONE} [please] (get|bring|fetch) me {_GLASS} water",
        "i am [(so|very|really)] thirsty", "i need a drink [of water]",
        "(can|could|may) i have a drink [of water]",
    ),
    "pain": (
        "pain", "i am in pain", "i am in (a lot of|so much|terrible|bad|real) pain",
        "it hurts", "it (really|still|badly) hurts", "it hurts (so much|a lot|badly)",
        f"(my|the) {_BODY} [(really|still)] hurts", f"my {_BODY} (is|are) (hurting|sore|painful)",
        "i have [got] (a lot of|some|bad) pain", "i (need|want) [(a|some)] (painkiller|painkillers|pain relief)",
        "i need something for the pain",
    ),
    "toilet": (
        "toilet", f"i need (the|a) {_LOO}", f"{_LOO} please",
        f"i need to (go to|use) the {_LOO}", f"(can|could) i (go to|use) the {_LOO}",
        f"{_ASK} {_SOMEONE} [please] help me (to|get to|go to) the {_LOO}",
        "i need (a wee|a pee|to pee)",
    ),
    "cancel": (
        "never mind", "never mind i am (fine|okay|all right)", "cancel",
        "cancel (the|my|that) call", "cancel (it|that)", "i do not need (the|a) nurse [any more]",
    ),
})

_CONTRACTIONS = {
    "can't": "can not", "cannot": "can not", "won't": "will not", "i'm": "i am", "let's": "let us",
    "ok": "okay", "alright": "all right", "o.k.": "okay", "nevermind": "never mind",
}
_SUFFIXES = (("n't", " not"), ("'ve", " have"), ("'re", " are"), ("'ll", " will"), ("'d", " would"),
             ("'s", " is"))
_HESITATIONS = frozenset({"um", "umm", "uh", "uhh", "er", "erm", "hmm", "mm", "ah"})
_WORD_RE = re.compile(r"[a-z0-9]+(?:['.][a-z0-9]+)*")


class GrammarError(ValueError):
    """A phrasing cannot be expanded (unbalanced brackets, too many variants, an ambiguous phrase)."""


def normalise(text: str) -> str:
    """Lower case words separated by single spaces; contractions spelled out, hesitations dropped."""
    words = []
    for word in _WORD_RE.findall(text.lower().replace("\u2019", "'").replace("-", " ")):
        word = _CONTRACTIONS.get(word, word)
        if word in ("o.k",):
            word = "okay"
        for suffix, full in _SUFFIXES:
            if word.endswith(suffix) and len(word) > len(suffix):
                word = word[:-len(suffix)] + full
                break
        word = word.replace(".", " ")
        words.extend(w for w in word.split() if w not in _HESITATIONS)
    return " ".join(words)


# ---------------------------------------------------------------------- phrasing patterns
def _tokens(pattern: str) -> list[str]:
    return re.findall(r"[\[\]()|]|[^\s\[\]()|]+", pattern)


def expand(pattern: str, limit: int = MAX_EXPANSION) -> set[tuple[str, ...]]:
    """Every word sequence of ``pattern`` ("[a] (b|c d)" -> {("b",), ("c", "d"), ("a", "b"), ...})."""
    tokens = _tokens(normalise_pattern(pattern))
    pos = 0

    def seq(closers: str) -> set[tuple[str, ...]]:
        nonlocal pos
        out: set[tuple[str, ...]] = {()}
        while pos < len(tokens) and tokens[pos] not in closers:
            tok = tokens[pos]
            pos += 1
            if tok == "[":
                part = alternatives("]") | {()}
            elif tok == "(":
                part = alternatives(")")
            elif tok in ")]|":
                raise GrammarError(f"{pattern!r}: unexpected '{tok}'")
            else:
                part = {(tok,)}
            out = {a + b for a in out for b in part}
            if len(out) > limit:
                raise GrammarError(f"{pattern!r} expands to more than {limit} phrasings")
        return out

    def alternatives(closer: str) -> set[tuple[str, ...]]:
        nonlocal pos
        out = seq("|" + closer)
        while pos < len(tokens) and tokens[pos] == "|":
            pos += 1
            out |= seq("|" + closer)
        if pos >= len(tokens) or tokens[pos] != closer:
            raise GrammarError(f"{pattern!r}: missing '{closer}'")
        pos += 1
        return out

    result = seq("")
    if pos != len(tokens):
        raise GrammarError(f"{pattern!r}: unexpected '{tokens[pos]}'")
    return {r for r in result if r}


def normalise_pattern(pattern: str) -> str:
    """:func:`normalise` for the words of a pattern, keeping its brackets and bars: "[Some] (Water|juice!)"
    -> "[some] (water|juice)"."""
    parts = re.split(r"([\[\]()|])", pattern)
    text = " ".join(p if p in ("[", "]", "(", ")", "|") else normalise(p) for p in parts if p.strip())
    return re.sub(r"([\[(|]) | (?=[\])|])", r"\1", text)


def check_pattern(pattern: str) -> str | None:
    """None if ``pattern`` is a usable phrasing, else what is wrong with it (for the options check)."""
    if not isinstance(pattern, str) or not re.fullmatch(r"[A-Za-z' .,!?\-\[\]()|\u2019]+", pattern):
        return f"{pattern!r} must be words of letters, with [optional] and (alternative|words) parts"
    try:
        if not expand(pattern):
            return f"{pattern!r} has no words"
    except GrammarError as exc:
        return str(exc)
    return None


# ---------------------------------------------------------------------- matching
@dataclass(frozen=True, slots=True)
class IntentMatch:
    intent: str
    phrase: str     # the normalised sentence that matched


class IntentMatcher:
    """Which intent, if any, a whole sentence asks for. Pure text: no audio, no model.

    ``grammar`` maps intent -> phrasings (patterns as in :data:`GRAMMAR`). A phrasing shared by
    two intents is refused (``GrammarError``): the matcher never has to guess between them.
    """

    def __init__(self, grammar: Mapping[str, Sequence[str]], *, address: str = ADDRESS, tail: str = TAIL,
                 max_words: int = MAX_WORDS) -> None:
        self.max_words = max_words
        self._core: dict[tuple[str, ...], str] = {}
        for intent, patterns in grammar.items():
            mine: set[tuple[str, ...]] = set()
            for pattern in patterns:
                mine |= expand(pattern)
                if len(mine) > MAX_EXPANSION:
                    raise GrammarError(f"intent {intent!r}: more than {MAX_EXPANSION} phrasings")
            for words in mine:
                other = self._core.get(words)
                if other is not None and other != intent:
                    raise GrammarError(f"'{' '.join(words)}' is a phrasing of both {other!r} and {intent!r}")
                self._core[words] = intent
        if not self._core:
            raise GrammarError("no phrasings to listen for")
        self.intents = tuple(grammar)
        self._address = expand(address) | {()}
        self._tail = expand(tail) | {()}
        self._longest_core = max(len(w) for w in self._core)

    def _cores(self, words: tuple[str, ...]) -> list[tuple[str, ...]]:
        """Every way to cut ``words`` into 1..MAX_CORES phrasings: the intents of each cut."""
        found: list[tuple[str, ...]] = []

        def walk(start: int, intents: tuple[str, ...]) -> None:
            if start == len(words):
                if intents:
                    found.append(intents)
                return
            if len(intents) == MAX_CORES:
                return
            for end in range(start + 1, min(len(words), start + self._longest_core) + 1):
                intent = self._core.get(words[start:end])
                if intent is not None:
                    walk(end, intents + (intent,))

        walk(0, ())
        return found

    def match(self, text: str) -> IntentMatch | None:
        """The intent ``text`` asks for as a whole sentence, or None."""
        phrase = normalise(text)
        words = tuple(phrase.split())
        if not words or len(words) > self.max_words:
            return None
        parses: dict[int, set[str | None]] = {}   # number of phrasings -> the intents of those parses
        for a in range(len(words)):
            if words[:a] not in self._address:
                continue
            for t in range(0, len(words) - a):
                if words[len(words) - t:] not in self._tail:
                    continue
                for intents in self._cores(words[a:len(words) - t]):
                    parses.setdefault(len(intents), set()).add(_combine(set(intents)))
        if not parses:
            return None
        # The reading with the fewest phrasings wins: in "hey nurse, I need water" "nurse" is an address.
        fewest = parses[min(parses)]
        intent = None if None in fewest else _combine(fewest)  # type: ignore[arg-type]
        return IntentMatch(intent, phrase) if intent is not None else None


def _combine(intents: set[str]) -> str | None:
    """One intent for a sentence that parses as several: the most urgent; cancel with anything else: none."""
    if len(intents) <= 1:
        return next(iter(intents), None)
    if "cancel" in intents:
        return None
    ranked = [i for i in URGENCY if i in intents]
    return ranked[0] if len(ranked) == len(intents) else None   # an intent outside URGENCY: no guessing


# ---------------------------------------------------------------------- the acoustic side
# Mean token probability of the transcription. Chosen on the espeak-ng (development) voices only: above
# 0.1 it cost real commands (67 % -> 59 % at 0.2, 51 % at 0.4 in a quiet room) and removed no false
# call; it stays as a floor for the decoder's least certain guesses.
DEFAULT_MIN_CONFIDENCE = 0.1
DEFAULT_MAX_NO_SPEECH = 0.6    # the decoder's own probability that the stretch held no speech


@dataclass(frozen=True, slots=True)
class Decision:
    intent: str | None       # None: rejected
    phrase: str
    confidence: float
    reason: str              # "accepted", "no_match", "low_confidence", "no_speech", "empty"


def decide(matcher: IntentMatcher, transcript: str, confidence: float, no_speech: float, *,
           min_confidence: float = DEFAULT_MIN_CONFIDENCE, max_no_speech: float = DEFAULT_MAX_NO_SPEECH) -> Decision:
    """Accept ``transcript`` as a command when it parses as one intent and the decoder was sure enough.

    ``confidence`` (0..1) must be at least ``min_confidence``; ``no_speech`` (0..1) at most
    ``max_no_speech``. A rejected decision still says why (for the counters and the benchmark).
    """
    if not normalise(transcript):
        return Decision(None, "", confidence, "empty")
    found = matcher.match(transcript)
    if found is None:
        return Decision(None, normalise(transcript), confidence, "no_match")
    if no_speech > max_no_speech:
        return Decision(None, found.phrase, confidence, "no_speech")
    if confidence < min_confidence:
        return Decision(None, found.phrase, confidence, "low_confidence")
    return Decision(found.intent, found.phrase, confidence, "accepted")


def grammar_for(intents: Iterable[str], overrides: Mapping[str, Sequence[str]] | None = None,
                base: Mapping[str, Sequence[str]] = GRAMMAR) -> dict[str, tuple[str, ...]]:
    """The grammar of the listened-for ``intents``: built-in phrasings, or an override's instead."""
    overrides = overrides or {}
    out = {}
    for intent in intents:
        if intent in overrides:
            out[intent] = tuple(overrides[intent])
        elif intent in base:
            out[intent] = tuple(base[intent])
    return out
