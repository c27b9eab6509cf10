"""Voice calls (issue 7): recordings made here with espeak-ng go through the microphone's code path
(frame source -> Listener -> VoiceNode -> controller.local_event) into a RoomSim room.

These run the low-power PocketSphinx engine (always installed); the whisper engine, its intent
grammar and the decode gate have their own files (tests/test_voice_*.py)."""

from __future__ import annotations

import asyncio
import builtins
import io
import json
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from controller.cli import main as cli_main
from controller.room.config import ConfigError, parse_room
from sensors.voice import (CONFIRMATIONS, ArraySource, Listener, PhraseRecognizer, Resampler, VoiceNode,
                              WavFileSource, parse_options)
from sensors.voice.audio import FRAME_BYTES, SAMPLE_RATE
from tests.roomsim import RoomSim

ESPEAK = shutil.which("espeak-ng")
needs_espeak = pytest.mark.skipif(ESPEAK is None, reason="espeak-ng is not installed (apt-get install espeak-ng; "
                                                        "`make test` installs it)")
NOISE_FLOOR = 30.0   # RMS on the 16-bit scale (about -60 dBFS): a real microphone never records digital zeros
INPUTS = {"nurse": "patient_call", "help": "patient_emergency", "water": "request_water", "pain": "request_pain",
          "toilet": "request_toilet", "cancel": "patient_cancel"}


def room_doc(enabled_a: bool = True) -> dict:
    return {"room": {"id": "4b-12"}, "beds": [{"id": "A"}, {"id": "B"}],
            "nodes": {"voice-a": {"bed": "A", "transport": "voice", "voice": {"enabled": enabled_a}, "inputs": INPUTS},
                      "voice-b": {"bed": "B", "transport": "voice", "inputs": INPUTS},
                      "bedside-a": {"bed": "A", "inputs": {"call": "patient_call"}}}}


def speech(*texts: str, rate: int = 22050, channels: int = 1, gap_s: float = 1.0, seed: int = 1) -> np.ndarray:
    """espeak-ng saying each text in turn, with pauses, over a faint noise floor; (samples, channels)."""
    pieces = []
    for text in texts:
        wav = subprocess.run([ESPEAK, "-v", "en-us", "--stdout", text], check=True, capture_output=True).stdout
        with wave.open(io.BytesIO(wav)) as w:
            assert w.getframerate() == 22050
            pieces += [np.zeros(int(gap_s * 22050)), np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(float)]
    x = np.concatenate(pieces + [np.zeros(int(gap_s * 22050))])
    if rate != 22050:
        x = Resampler(22050, rate).process(x, final=True)
    x = x + np.random.default_rng(seed).normal(0, NOISE_FLOOR, len(x))
    return np.repeat(x[:, None], channels, axis=1)


def write_wav(path: Path, x: np.ndarray, rate: int) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(x.shape[1])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.clip(np.rint(x), -32768, 32767).astype("<i2").tobytes())
    return path


@pytest.fixture(scope="module")
def recognizer():
    pytest.importorskip("pocketsphinx")
    return PhraseRecognizer({i: p for i, p in parse_options({"engine": "pocketsphinx"})["phrases"].items()})


class Spoken:
    """A Player that records what the patient would hear."""

    def __init__(self) -> None:
        self.said: list[str] = []
        self.tones = 0

    async def say(self, text: str, voice: str) -> None:
        self.said.append(text)

    async def tone(self) -> None:
        self.tones += 1


def file_source(path: Path):
    return lambda node: WavFileSource(path)


# ---------------------------------------------------------------------- options
def test_options_defaults_and_errors_name_the_key():
    opts = parse_options({})
    assert (opts["enabled"], opts["engine"], opts["language"], opts["confirm"]) == (True, "whisper", "en", "speech")
    assert "nurse" in opts["phrases"]["nurse"] and "never mind" in opts["phrases"]["cancel"]
    low = parse_options({"engine": "pocketsphinx"})
    assert "call the nurse" in low["phrases"]["nurse"] and low["threshold"] == 0.0
    assert parse_options({"phrases": {"water": ["I'm thirsty", "[Some] (Water|juice!)"]}})["phrases"]["water"] == (
        "i am thirsty", "[some] (water|juice)")
    assert parse_options({"engine": "pocketsphinx", "phrases": {"water": ["I'm thirsty", "[some] water"]}})[
        "phrases"]["water"] == ("i am thirsty", "some water", "water")
    doc = room_doc()
    doc["nodes"]["voice-a"]["voice"] = {"language": "ko"}
    with pytest.raises(ConfigError, match=r"nodes\.voice-a\.voice\.language: 'ko' has no offline model"):
        parse_room(doc, "room.toml")
    for table, where in (({"treshold": 0.5}, "treshold: unknown key"),
                         ({"threshold": 2}, "threshold: 2 is out of range"),
                         ({"engine": "vosk"}, "engine: 'vosk' is not one of whisper, pocketsphinx"),
                         ({"engine": "pocketsphinx", "phrases": {"water": ["glug glorp"]}},
                          r"phrases\.water\[0\]: glug, glorp: not in"),
                         ({"engine": "pocketsphinx", "phrases": {"water": ["nurse"]}},
                          "also a phrase of intent 'nurse'"),
                         ({"phrases": {"water": ["nurse"]}}, "'nurse' is a phrasing of both 'nurse' and 'water'"),
                         ({"phrases": {"water": ["(water|juice"]}}, r"phrases\.water\[0\]: '\(water\|juice': missing"),
                         ({"phrases": {"water": ["water2"]}}, r"phrases\.water\[0\]: 'water2' must be words")):
        doc["nodes"]["voice-a"]["voice"] = table
        with pytest.raises(ConfigError, match=where):
            parse_room(doc, "room.toml")


# ---------------------------------------------------------------------- audio in
def test_any_rate_and_channel_count_becomes_16k_mono_frames(tmp_path):
    t = np.arange(44100) / 44100
    tone = 8000 * np.sin(2 * np.pi * 440 * t)
    stereo = np.stack([tone, tone], axis=1)
    with WavFileSource(write_wav(tmp_path / "tone.wav", stereo, 44100)) as source:
        frames = list(source.frames())
    assert all(len(f) == FRAME_BYTES for f in frames)
    x = np.frombuffer(b"".join(frames), "<i2").astype(float)
    assert abs(len(x) - SAMPLE_RATE) <= FRAME_BYTES // 2
    spectrum = np.abs(np.fft.rfft(x[:SAMPLE_RATE]))
    assert abs(np.argmax(spectrum) - 440) <= 1   # one second of samples: bins are 1 Hz apart
    assert 8000 * 0.97 < np.max(np.abs(x[1000:-1000])) < 8000 * 1.03
    # A 12 kHz tone at 48 kHz is above 16 kHz audio's band: filtered out, not folded down to 4 kHz.
    high = 8000 * np.sin(2 * np.pi * 12000 * np.arange(48000) / 48000)
    y = np.frombuffer(b"".join(ArraySource(high, 48000).frames()), "<i2").astype(float)
    assert np.sqrt(np.mean(y[1000:-1000] ** 2)) < 8000 * 0.01


# ---------------------------------------------------------------------- calls in the room
@needs_espeak
async def test_spoken_phrases_raise_calls_and_requests_and_cancel_them(tmp_path, recognizer):
    path = write_wav(tmp_path / "bed-a.wav", speech("call the nurse", "i need water", "help me", "never mind"), 22050)
    spoken = Spoken()
    async with RoomSim(parse_room(room_doc(), "room.toml"), tmp_path / "room.db") as room:
        node = VoiceNode(room.c, room.config.nodes["voice-a"], source=file_source(path), player=spoken,
                         recognizer=recognizer)
        await node.run()
        assert [(d.intent, d.phrase) for d in node.delivered] == [
            ("nurse", "call the nurse"), ("water", "i need water"), ("help", "help me"), ("cancel", "never mind")]
        raised = [r.data for r in await room.log("call.raised")]
        assert [(r["type"], r["bed"], r["input"]) for r in raised] == [
            ("patient_call", "A", "nurse"), ("request", "A", "water"), ("patient_emergency", "A", "help")]
        assert raised[0]["detail"]["phrase"] == "call the nurse" and 0 < raised[0]["detail"]["confidence"] <= 1
        assert (raised[0]["detail"]["intent"], raised[0]["detail"]["engine"]) == ("nurse", "pocketsphinx")
        assert raised[1]["detail"]["need"] == "water"
        assert room.call("patient_emergency")["priority"] == "high"
        assert room.types() == ["patient_emergency"], "'never mind' takes back routine calls, never an emergency"
        assert {r.data["how"] for r in await room.log("call.cleared")} == {"patient_cancel"}
        assert spoken.said == [CONFIRMATIONS["patient_call"], CONFIRMATIONS["request_water"],
                               CONFIRMATIONS["patient_emergency"], CONFIRMATIONS["patient_cancel"]]
        assert room.c.snapshot()["voice"] == {"A": True, "B": True}


@needs_espeak
async def test_everyday_speech_raises_nothing(tmp_path, recognizer):
    path = write_wav(tmp_path / "talk.wav", speech(
        "Good morning, how did you sleep?", "The weather will be sunny tomorrow.",
        "Could you pass me my glasses please?", "My daughter is coming this afternoon.", "Thank you very much."),
        16000)
    async with RoomSim(parse_room(room_doc(), "room.toml"), tmp_path / "room.db") as room:
        node = VoiceNode(room.c, room.config.nodes["voice-b"], source=file_source(path), player=Spoken(),
                         recognizer=recognizer)
        await node.run()
        assert node.delivered == [] and room.calls() == []


@needs_espeak
async def test_voice_switched_off_for_a_bed_never_listens(tmp_path, recognizer):
    path = write_wav(tmp_path / "call.wav", speech("call the nurse"), 22050)
    opened = []

    def source(node):
        opened.append(node.id)
        return WavFileSource(path)

    async with RoomSim(parse_room(room_doc(enabled_a=False), "room.toml"), tmp_path / "room.db") as room:
        spoken = Spoken()
        node = VoiceNode(room.c, room.config.nodes["voice-a"], source=source, player=spoken, recognizer=recognizer)
        await node.run()
        assert opened == [] and room.calls() == [] and spoken.said == []
        assert room.c.snapshot()["voice"] == {"A": False, "B": True}


# ---------------------------------------------------------------------- privacy
def _files(*roots: Path) -> set[Path]:
    return {p for root in roots for p in root.rglob("*")}


@needs_espeak
async def test_no_audio_is_stored_anywhere(tmp_path, recognizer, monkeypatch, caplog):
    await check_no_audio_is_stored(tmp_path, recognizer, monkeypatch, caplog, "call the nurse")


async def check_no_audio_is_stored(tmp_path, recognizer, monkeypatch, caplog, said: str):
    """Run ``said`` through a room with HOME, TMPDIR and the working directory empty and every write
    refused; then no file, database page or log line may hold audio (also run for whisper)."""
    recording = write_wav(tmp_path / "call.wav", speech(said), 22050)
    x = np.frombuffer(b"".join(WavFileSource(recording).frames()), "<i2")
    home, tmp, cwd, db_dir = (tmp_path / d for d in ("home", "tmp", "cwd", "db"))
    for d in (home, tmp, cwd, db_dir):
        d.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.chdir(cwd)
    caplog.set_level("DEBUG")
    async with RoomSim(parse_room(room_doc(), "room.toml"), db_dir / "room.db") as room:
        before = _files(home, tmp, cwd, db_dir)
        real_open, real_wave_open = builtins.open, wave.open

        def no_writing(file, mode="r", *args, **kwargs):
            assert not set(str(mode)) & set("wax+"), f"audio pipeline opened {file} for writing"
            return real_open(file, mode, *args, **kwargs)

        def no_wave_writing(f, mode=None):
            assert mode in (None, "r", "rb"), f"audio pipeline opened WAV {f} for writing"
            return real_wave_open(f, mode)

        monkeypatch.setattr(builtins, "open", no_writing)
        monkeypatch.setattr(wave, "open", no_wave_writing)
        node = VoiceNode(room.c, room.config.nodes["voice-a"], source=lambda n: ArraySource(x), player=Spoken(),
                         recognizer=recognizer)
        await node.run()
        monkeypatch.undo()
        monkeypatch.chdir(cwd)
        assert room.types() == ["patient_call"]
        assert _files(home, tmp, cwd, db_dir) - before <= {db_dir / "room.db-wal", db_dir / "room.db-shm"}
        assert _files(home, tmp, cwd) == set()
        for record in await room.log():
            text = json.dumps(record.data)
            assert len(text) < 1000, f"{record.kind} is too big to be an intent: {len(text)} bytes"
            if record.kind == "node.event":
                assert set(record.data["x"]) == {"intent", "phrase", "transcript", "confidence", "engine"}
                assert record.data["x"]["engine"] == recognizer.engine
        stored = b"".join(p.read_bytes() for p in db_dir.iterdir())
        pcm = x.tobytes()
        for start in range(SAMPLE_RATE, len(pcm) - 64, 4801 * 2):   # pieces of the recording, speech included
            assert pcm[start:start + 64] not in stored, "the database holds a piece of the recording"
    for rec in caplog.records:
        assert not any(isinstance(a, (bytes, bytearray, memoryview, np.ndarray)) for a in (rec.args or ())), rec.msg
        assert len(rec.getMessage()) < 500


# ---------------------------------------------------------------------- the command
@needs_espeak
def test_recognize_command_prints_intents_as_json_lines(tmp_path, capsys):
    pytest.importorskip("pocketsphinx")
    path = write_wav(tmp_path / "stereo44k.wav", speech("nurse", "i need water", rate=44100, channels=2), 44100)
    assert cli_main(["voice", "recognize", "--engine", "pocketsphinx", str(path)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(d["intent"], d["phrase"]) for d in lines] == [("nurse", "nurse"), ("water", "i need water")]
    assert set(lines[0]) == {"time", "intent", "phrase", "confidence", "transcript"} and 0.8 < lines[0]["time"] < 1.3
    assert cli_main(["voice", "recognize", str(tmp_path / "missing.wav")]) == 2


def test_listener_drops_long_speech_without_decoding():
    class Never:
        def recognize(self, pcm):
            raise AssertionError("a 5 s stretch of speech must not be decoded")

    pytest.importorskip("pocketsphinx")
    rng = np.random.default_rng(3)
    t = np.arange(5 * SAMPLE_RATE) / SAMPLE_RATE
    voiced = (6000 * np.sin(2 * np.pi * 150 * t) * (1 + np.sin(2 * np.pi * 4 * t))
              + rng.normal(0, 300, len(t)))  # a voiced buzz, syllable-rate modulated
    x = np.concatenate([np.zeros(SAMPLE_RATE), voiced, np.zeros(SAMPLE_RATE)]) + rng.normal(0, NOISE_FLOOR, 7 * SAMPLE_RATE)
    listener = Listener(Never(), max_utterance_s=3.0)  # type: ignore[arg-type]
    assert list(listener.detections(ArraySource(x).frames())) == []
    assert listener.stats.too_long == 1 and listener.stats.utterances == 0


async def test_a_missing_microphone_is_a_technical_alarm_until_it_works(tmp_path, recognizer):
    from sensors.voice import AudioError, VoiceService

    def no_microphone(node):
        raise AudioError("cannot open microphone (default): no such device")

    async with RoomSim(parse_room(room_doc(enabled_a=False), "room.toml"), tmp_path / "room.db") as room:
        service = VoiceService(room.c, source=no_microphone, player=Spoken())
        for node in service.nodes:
            node._recognizer = recognizer
        with room.c.subscribe() as stored:
            await service.start()
            async with asyncio.timeout(10):   # a guard: the fault is stored as soon as the node's task runs
                while (record := await stored.get()) is not None and record.kind != "call.raised":
                    pass
        fault = room.call("system_fault")
        assert fault["source"]["input"] == "system:voice:voice-b" and "no such device" in fault["detail"]["error"]
        await service.stop()
