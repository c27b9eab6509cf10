"""The whisper engine's intent grammar (sensors/voice/intents.py): pure text, so always tested.

Accepted: the built-in phrases and natural ways of saying them. Rejected: everything else, above
all sentences that merely contain a command word ("water the plants", "the nursery is down the
hall"). And the acoustic thresholds of ``decide``, at and either side of each edge.
"""

from __future__ import annotations

import pytest

from sensors.voice.intents import (DEFAULT_MAX_NO_SPEECH, DEFAULT_MIN_CONFIDENCE, GRAMMAR, MAX_CORES, MAX_WORDS,
                                   GrammarError, IntentMatcher, check_pattern, decide, expand, grammar_for, normalise)
from sensors.voice.options import PHRASES


@pytest.fixture(scope="module")
def matcher() -> IntentMatcher:
    return IntentMatcher(GRAMMAR)


ACCEPTED = [
    # the built-in phrases (sensors/voice/options.py) as whisper writes them
    ("Nurse.", "nurse"), ("Call the nurse.", "nurse"), ("Nurse, please.", "nurse"), ("Help!", "nurse"),
    ("Help me.", "help"), ("I fell.", "help"), ("I have fallen.", "help"), ("Emergency!", "help"),
    ("Water.", "water"), ("I need water.", "water"), ("Water, please.", "water"),
    ("I am in pain.", "pain"), ("Pain.", "pain"), ("It hurts.", "pain"),
    ("Toilet.", "toilet"), ("I need the toilet.", "toilet"), ("Bathroom, please.", "toilet"),
    ("Never mind.", "cancel"), ("Cancel.", "cancel"), ("Cancel the call.", "cancel"),
    # natural variants
    ("Can you get the nurse?", "nurse"), ("NURSE!", "nurse"), ("I need help.", "nurse"),
    ("Could someone call a nurse, please?", "nurse"), ("Get me a nurse.", "nurse"), ("Nurse, nurse!", "nurse"),
    ("Hey, nurse, could you come here?", "nurse"), ("I'd like to speak to a nurse.", "nurse"),
    ("Please help me!", "help"), ("I've fallen.", "help"), ("I fell out of bed.", "help"),
    ("Help, help me!", "help"), ("Somebody help!", "help"), ("I can't get up.", "help"), ("Help me, nurse!", "help"),
    ("This is an emergency.", "help"),
    ("Can I have some water, please?", "water"), ("I'm thirsty.", "water"), ("Could I get a glass of water?", "water"),
    ("Hey nurse, I need water, please.", "water"), ("Could you bring me some water?", "water"),
    ("I'm in pain.", "pain"), ("It really hurts.", "pain"), ("My back hurts.", "pain"),
    ("I'm in a lot of pain.", "pain"), ("I need something for the pain.", "pain"),
    ("I need to go to the toilet.", "toilet"), ("I need the bathroom.", "toilet"), ("I need the loo.", "toilet"),
    ("Could you help me to the toilet?", "toilet"),
    ("Never mind, I'm fine.", "cancel"), ("Cancel that.", "cancel"), ("Cancel my call.", "cancel"),
    ("Um, nurse, please.", "nurse"), ("Nurse, cancel.", "cancel"), ("Nurse \u2014 I\u2019m thirsty.", "water"),
]

REJECTED = [
    # near misses: a command word inside a sentence that asks for nothing
    "The nursery is down the hall.", "Help yourself to cake.", "Water the plants, would you?",
    "The nurse said I can go home tomorrow.", "Did the nurse bring my tablets?", "My daughter is a nurse.",
    "Thank you, nurse.", "Good morning, nurse.", "Nurse, thank you.", "That painting is lovely.",
    "What a pain in the neck.", "I helped my son move house.", "The water was freezing at the beach.",
    "The toilet roll is on the shelf.", "Cancel my newspaper, would you?", "I fell asleep during the film.",
    "I have fallen behind with my reading.", "Emergency services were called.", "Never mind the weather.",
    "It hurts to think about it.", "Walter is coming at three.", "Tell the nurse it can wait.",
    "No pain, no gain.", "Help me with the crossword.", "Can you water the garden?", "Pain au chocolat.",
    "Nursing home.", "Helpful.", "Waters.", "Cancelled.", "Painful.", "The call was cancelled.",
    # what whisper writes for noise, and contradictions
    "", "   ", ".", "Thank you.", "you", "Thanks for watching!", "Help, never mind.", "Water, cancel.",
    # too long to be a command, though it ends like one
    "I was telling my sister yesterday on the phone that when I get home I will call the nurse",
]


@pytest.mark.parametrize("text, intent", ACCEPTED)
def test_natural_variants_are_accepted_as_their_intent(matcher, text, intent):
    found = matcher.match(text)
    assert found is not None and found.intent == intent, f"{text!r} -> {found}"


@pytest.mark.parametrize("text", REJECTED)
def test_near_misses_and_everyday_talk_are_rejected(matcher, text):
    assert matcher.match(text) is None


def test_every_built_in_phrase_is_in_the_grammar(matcher):
    for intent, phrases in PHRASES["en"].items():
        for phrase in phrases:
            assert matcher.match(phrase).intent == intent, phrase


def test_normalise_spells_out_what_whisper_writes():
    assert normalise("I’m in PAIN!!") == "i am in pain"
    assert normalise("Can't get up -- I've fallen.") == "can not get up i have fallen"
    assert normalise("Uh, O.K., never-mind") == "okay never mind"
    assert normalise("It's alright") == "it is all right"
    assert normalise("Nevermind, I'm fine.") == "never mind i am fine"


def test_the_sentence_length_limit_at_its_edge():
    m = IntentMatcher({"nurse": ("nurse",)}, address="(z)", tail="(z)")
    assert m.match(" ".join(["nurse"] * MAX_CORES)) is not None
    assert m.match(" ".join(["nurse"] * (MAX_CORES + 1))) is None      # a chant is not a request
    long_ok = IntentMatcher({"x": (" ".join(["a"] * MAX_WORDS),)}, address="(z)", tail="(z)")
    assert long_ok.match(" ".join(["a"] * MAX_WORDS)) is not None
    assert long_ok.match(" ".join(["a"] * (MAX_WORDS + 1))) is None


def test_an_address_is_not_a_second_request():
    m = IntentMatcher(GRAMMAR)
    # "nurse" could be the nurse intent, but the reading with the fewest phrasings says it is an address
    assert m.match("Nurse, I need water").intent == "water"
    assert m.match("Nurse, help me").intent == "help"
    # two real requests in one breath: the more urgent one
    assert m.match("Help! I fell!").intent == "help"
    assert m.match("Water, help").intent == "nurse"


def test_patterns_expand_and_bad_ones_are_refused():
    assert expand("[please] (get|call) [the] nurse") == {
        ("get", "nurse"), ("call", "nurse"), ("get", "the", "nurse"), ("call", "the", "nurse"),
        ("please", "get", "nurse"), ("please", "call", "nurse"), ("please", "get", "the", "nurse"),
        ("please", "call", "the", "nurse")}
    assert expand("(a|b (c|d))") == {("a",), ("b", "c"), ("b", "d")}
    for bad in ("(a|b", "a]", "[a", "a)"):
        with pytest.raises(GrammarError):
            expand(bad)
    assert check_pattern("[some] water") is None
    assert "must be words" in check_pattern("water2")
    assert "no words" in check_pattern("[]")
    with pytest.raises(GrammarError, match="more than 10 phrasings"):
        expand("(a|b|c) (d|e|f) (g|h)", limit=10)


def test_a_phrasing_of_two_intents_is_refused():
    with pytest.raises(GrammarError, match="'water please' is a phrasing of both 'water' and 'nurse'"):
        IntentMatcher({"water": ("water [please]",), "nurse": ("water please",)})
    with pytest.raises(GrammarError, match="no phrasings"):
        IntentMatcher({})


def test_only_listened_for_intents_are_matched():
    m = IntentMatcher(grammar_for(["nurse", "help"]))
    assert m.match("I need water") is None and m.match("help me").intent == "help"
    custom = IntentMatcher(grammar_for(["water"], {"water": ["i am parched"]}))
    assert custom.match("I'm parched, nurse").intent == "water"
    assert custom.match("I need water") is None          # the override replaces the built-in phrasings


# ---------------------------------------------------------------------- decide: the acoustic thresholds
EPS = 1e-6


@pytest.mark.parametrize("confidence, no_speech, reason", [
    (DEFAULT_MIN_CONFIDENCE, 0.0, "accepted"),                    # at the confidence edge: accepted
    (DEFAULT_MIN_CONFIDENCE + EPS, 0.0, "accepted"),
    (DEFAULT_MIN_CONFIDENCE - EPS, 0.0, "low_confidence"),        # just under: rejected
    (1.0, DEFAULT_MAX_NO_SPEECH, "accepted"),                     # at the no-speech edge: accepted
    (1.0, DEFAULT_MAX_NO_SPEECH - EPS, "accepted"),
    (1.0, DEFAULT_MAX_NO_SPEECH + EPS, "no_speech"),              # just over: rejected
    (0.0, 1.0, "no_speech"),
])
def test_decide_at_and_around_each_threshold(matcher, confidence, no_speech, reason):
    d = decide(matcher, "Call the nurse.", confidence, no_speech)
    assert d.reason == reason
    assert (d.intent == "nurse") == (reason == "accepted")


def test_decide_never_accepts_a_non_command_however_sure(matcher):
    d = decide(matcher, "Water the plants.", 1.0, 0.0)
    assert (d.intent, d.reason, d.phrase) == (None, "no_match", "water the plants")
    assert decide(matcher, "", 1.0, 0.0).reason == "empty"
    custom = decide(matcher, "Nurse", 0.2, 0.7, min_confidence=0.1, max_no_speech=0.8)
    assert custom.intent == "nurse"
