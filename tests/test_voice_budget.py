"""The live decoding budget (sensors/voice/budget.py) and the microphone path through it.

The gate is driven by a fake clock: one utterance decodes at a time, the queue is bounded (the
oldest waiting utterance is dropped and counted), the processor allowance is a token bucket, and
"degraded" says so for DEGRADED_HOLD_S after the last drop. Then a live node: its VAD thread keeps
listening while the decoder is stuck, and the event loop keeps running.
"""

from __future__ import annotations

import asyncio
import logging
import threading

import numpy as np
import pytest

from controller.room.config import parse_room
from sensors.voice import ArraySource, Decoder, DecodeGate, VoiceNode, VoiceService
from sensors.voice.audio import SAMPLE_RATE
from sensors.voice.budget import DEGRADED_HOLD_S
from sensors.voice.recognizer import Recognition
from tests.roomsim import RoomSim
from tests.test_voice import NOISE_FLOOR, Spoken, room_doc


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def gate(**kw) -> tuple[DecodeGate, Clock]:
    clock = Clock()
    return DecodeGate(clock=clock, **kw), clock


def test_one_utterance_decodes_at_a_time():
    g, clock = gate(max_waiting=2)
    g.offer("a")
    g.offer("b")
    assert g._next(clock()) == ("a", 0.0)
    assert g._next(clock()) == (None, 0.0), "a second decode while the first runs"
    g._done(0.1, clock())
    assert g._next(clock()) == ("b", 0.0)
    assert g.stats.decoded == 2 and g.stats.shed == 0


def test_the_queue_is_bounded_and_drops_the_oldest(caplog):
    caplog.set_level(logging.WARNING, "smartroom.voice")
    g, clock = gate(max_waiting=2)
    assert g.offer("a") is None and g.offer("b") is None            # at the bound: nothing dropped
    assert g.offer("c") == "a"                                       # over it: the oldest goes
    assert g.offer("d") == "b"
    assert g.waiting == 2 and g.stats.shed == 2 and g.stats.offered == 4
    assert [g._next(clock())[0], g._done(0, clock()), g._next(clock())[0]] == ["c", None, "d"]
    warnings = [r for r in caplog.records if "too much speech" in r.getMessage()]
    assert len(warnings) == 1, "one warning per busy episode, not one per dropped utterance"
    assert g.degraded and g.status()["degraded"] is True and g.status()["shed"] == 2


def test_degraded_holds_for_its_time_after_the_last_drop_then_clears(caplog):
    caplog.set_level(logging.WARNING, "smartroom.voice")
    g, clock = gate(max_waiting=1)
    g.offer("a")
    g.offer("b")                       # drops a
    clock.t += DEGRADED_HOLD_S - 0.01
    assert g.degraded
    clock.t += 0.01
    assert not g.degraded               # at the hold's end: no longer degraded
    g.offer("c")                       # drops b: a new episode, a new warning
    assert g.degraded and g.stats.episodes == 2
    assert sum("too much speech" in r.getMessage() for r in caplog.records) == 2


def test_the_processor_budget_is_a_token_bucket():
    g, clock = gate(budget=0.5, burst_s=2.0)
    g.offer("a")
    assert g._next(clock())[0] == "a"
    g._done(2.0, clock())              # the whole allowance at once: tokens exactly 0
    g.offer("b")
    assert g._next(clock())[0] is None, "at zero allowance nothing decodes"
    clock.t += 0.01                    # a little refill (0.005 s at half a core): just over zero
    assert g._next(clock())[0] == "b"
    g._done(1.0, clock())              # now 1 s in debt (minus the refill): wait about 2 s of wall time
    g.offer("c")
    item, wait_s = g._next(clock())
    assert item is None and wait_s == pytest.approx((1.0 - 0.005) / 0.5)
    clock.t += wait_s - 0.01
    assert g._next(clock())[0] is None
    clock.t += 0.02
    assert g._next(clock())[0] == "c"
    g._done(0.0, clock())
    clock.t += 3600                    # a long quiet night refills only up to the burst
    g._refill(clock())
    assert g._tokens == pytest.approx(2.0)


def test_bad_gate_settings_are_refused():
    for kw in ({"max_waiting": 0}, {"budget": 0}, {"budget": 1.5}, {"burst_s": 0}):
        with pytest.raises(ValueError):
            DecodeGate(**kw)


def test_take_blocks_until_work_and_returns_none_when_closed():
    g = DecodeGate()
    got = []
    t = threading.Thread(target=lambda: got.append(g.take()))
    t.start()
    g.offer("x")
    t.join(5)
    assert got == ["x"]
    g.done(0.0)
    t2 = threading.Thread(target=lambda: got.append(g.take()))
    t2.start()
    g.close()
    t2.join(5)
    assert got == ["x", None] and not t2.is_alive()
    assert g.take(timeout=0.01) is None


# ---------------------------------------------------------------------- a live node through the gate
class LiveSource(ArraySource):
    """Frames as from the microphone (``realtime``): the node decodes behind the gate. After
    ``hold_after_s`` of audio it waits for ``resume`` (the decoder has started), as a microphone
    would keep delivering audio while the decoder works."""

    realtime = True

    def __init__(self, samples: np.ndarray, hold_after_s: float, resume: threading.Event) -> None:
        super().__init__(samples)
        self.hold_after_s, self.resume = hold_after_s, resume

    def frames(self):
        for i, frame in enumerate(super().frames()):
            if i == int(self.hold_after_s / 0.03):
                assert self.resume.wait(10), "the decoder never started"
            yield frame


class Scripted:
    """A recogniser that says 'nurse' for every utterance, after waiting for ``release``."""

    engine = "test"
    threshold = 0.0

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()
        self.calls = 0

    def recognize(self, pcm: bytes) -> Recognition | None:
        self.calls += 1
        self.started.set()
        assert self.release.wait(10), "the test never released the decoder"
        return Recognition("nurse", "nurse", 0.9, transcript="Nurse!")


def bursts(n: int, seconds_apart: float = 1.0) -> np.ndarray:
    """``n`` voiced bursts of 0.6 s (a buzz the VAD takes for speech) with pauses between them."""
    rng = np.random.default_rng(4)
    t = np.arange(int(0.6 * SAMPLE_RATE)) / SAMPLE_RATE
    gap = np.zeros(int(seconds_apart * SAMPLE_RATE))
    pieces = [gap]
    for _ in range(n):
        voiced = 6000 * np.sin(2 * np.pi * 150 * t) * (1 + np.sin(2 * np.pi * 4 * t)) + rng.normal(0, 300, len(t))
        pieces += [voiced, gap]
    x = np.concatenate(pieces)
    return x + rng.normal(0, NOISE_FLOOR, len(x))


async def test_live_decoding_never_blocks_listening_or_the_event_loop(tmp_path):
    pytest.importorskip("pocketsphinx")   # the VAD
    rec = Scripted()
    g = DecodeGate(max_waiting=1)
    decoder = Decoder(g)
    async with RoomSim(parse_room(room_doc(), "room.toml"), tmp_path / "room.db") as room:
        node = VoiceNode(room.c, room.config.nodes["voice-a"], source=lambda n: LiveSource(bursts(4), 2.5, rec.started),
                         player=Spoken(), recognizer=rec, decoder=decoder)
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        tick_task = asyncio.create_task(ticker())
        listening = asyncio.create_task(node.run())
        # the VAD thread reads the whole source while the first decode is stuck
        for _ in range(2000):
            if listening.done():
                break
            await asyncio.sleep(0.005)   # yield to the node's tasks; the condition is polled, not timed
        assert listening.done(), "listening waited for the decoder"
        assert rec.started.is_set() and rec.calls == 1
        assert ticks > 10, "the event loop kept running while the decoder was busy"
        # 4 utterances: one decoding, one waiting (the bound), two dropped and counted
        assert (g.stats.offered, g.stats.shed, g.waiting) == (4, 2, 1) and g.degraded
        rec.release.set()
        for _ in range(2000):
            if len(node.delivered) == 2:
                break
            await asyncio.sleep(0.005)
        assert [d.intent for d in node.delivered] == ["nurse", "nurse"]
        assert room.types() == ["patient_call"]
        raised = (await room.log("call.raised"))[0].data
        assert raised["detail"]["transcript"] == "Nurse!" and raised["detail"]["engine"] == "test"
        tick_task.cancel()
        decoder.stop()
        assert g.status()["decoded"] == 2


async def test_the_service_shares_one_decoder_and_reports_its_counters(tmp_path):
    async with RoomSim(parse_room(room_doc(), "room.toml"), tmp_path / "room.db") as room:
        service = VoiceService(room.c, source=lambda n: LiveSource(bursts(0), 0, threading.Event()), player=Spoken())
        assert {n.node.id for n in service.nodes} == {"voice-a", "voice-b"}
        assert all(n._decoder is service.decoder for n in service.nodes)
        status = service.status()
        assert status["decoder"] | {"cpu_s": 0.0} == {"offered": 0, "decoded": 0, "shed": 0, "cpu_s": 0.0,
                                                       "budget_waits": 0, "busy_episodes": 0, "waiting": 0,
                                                       "degraded": False, "errors": 0}
        assert status["nodes"]["voice-a"] == {"enabled": True, "engine": "whisper", "muted_frames": 0}


async def test_the_decoders_counters_are_on_the_rooms_metrics(tmp_path):
    """What VoiceService.status() says reaches /metrics: offered, decoded and shed utterances, the
    degraded flag while shedding, and each microphone node."""
    from prometheus_client.parser import text_string_to_metric_families

    from room_api.metrics import Metrics

    g, clock = gate(max_waiting=1)
    async with RoomSim(parse_room(room_doc(enabled_a=False), "room.toml"), tmp_path / "room.db") as room:
        service = VoiceService(room.c, source=lambda n: LiveSource(bursts(0), 0, threading.Event()), player=Spoken(),
                               gate=g)
        metrics = Metrics(room.c, lambda: None, lambda: 0, voice=lambda: service)

        def scrape() -> dict[tuple[str, tuple], float]:
            return {(s.name, tuple(sorted(s.labels.items()))): s.value
                    for f in text_string_to_metric_families(metrics.render().decode()) for s in f.samples
                    if s.name.startswith("smartroom_voice")}

        quiet = scrape()
        assert quiet[("smartroom_voice_degraded", ())] == 0
        assert quiet[("smartroom_voice_utterances_total", (("outcome", "shed"),))] == 0
        for utterance in "abc":
            g.offer(utterance)                              # bound 1: "a" then "b" shed
        g._next(clock())
        g._done(0.25, clock())
        busy = scrape()
    assert busy[("smartroom_voice_utterances_total", (("outcome", "offered"),))] == 3
    assert busy[("smartroom_voice_utterances_total", (("outcome", "shed"),))] == 2
    assert busy[("smartroom_voice_utterances_total", (("outcome", "decoded"),))] == 1
    assert busy[("smartroom_voice_decode_cpu_seconds_total", ())] == 0.25
    assert busy[("smartroom_voice_degraded", ())] == 1
    assert busy[("smartroom_voice_node_enabled", (("node", "voice-a"),))] == 0
    assert busy[("smartroom_voice_node_enabled", (("node", "voice-b"),))] == 1
