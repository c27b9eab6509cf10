"""Where audio comes from: the microphone or a WAV file, as 16 kHz mono 16-bit frames.

Both sources yield the same frames to the same pipeline, so a recording tests exactly what the
microphone would do. Audio is only ever held in memory, a bounded amount at a time; nothing here
writes a file.

    >>> with WavFileSource("call.wav") as source:        # any rate, any channel count
    ...     for frame in source.frames():                  # bytes, FRAME_SAMPLES samples each
    ...         ...
"""

from __future__ import annotations

import math
import queue
import wave
from pathlib import Path
from typing import Any, Iterator, Protocol

import numpy as np

SAMPLE_RATE = 16_000                 # what the acoustic model was trained on
FRAME_S = 0.03                       # WebRTC VAD takes 10, 20 or 30 ms frames; 30 ms is the cheapest
FRAME_SAMPLES = int(SAMPLE_RATE * FRAME_S)
FRAME_BYTES = FRAME_SAMPLES * 2
MIC_QUEUE_S = 2.0                    # audio waiting for the recogniser; older audio is dropped, not stored
MIC_GET_TIMEOUT_S = 0.5              # how often a waiting reader looks whether it was stopped
FILE_CHUNK_FRAMES = 16_384           # WAV frames read at a time (about 1 s at 16 kHz)
_SINC_HALF_TAPS = 16                 # resampler filter half-length in input samples (at the lower rate)


class AudioError(OSError):
    """The audio source cannot be opened or read (no microphone, not a WAV file, ...)."""


class FrameSource(Protocol):
    """Yields FRAME_BYTES frames of 16 kHz mono signed 16-bit little-endian audio."""

    def frames(self) -> Iterator[bytes]: ...

    def close(self) -> None: ...


class Resampler:
    """Band-limited resampling of a stream (windowed sinc), keeping state between chunks.

    numpy only; exact for equal rates. Downsampling filters at the output's Nyquist frequency so
    that 44.1 or 48 kHz input does not fold noise into the speech band.
    """

    def __init__(self, rate_in: int, rate_out: int = SAMPLE_RATE) -> None:
        if rate_in <= 0 or rate_out <= 0:
            raise ValueError(f"sample rates must be positive, got {rate_in} -> {rate_out}")
        self.rate_in, self.rate_out = rate_in, rate_out
        self.step = rate_in / rate_out                  # input samples per output sample
        self.cutoff = min(1.0, rate_out / rate_in)      # of the input's Nyquist frequency
        self.half = int(math.ceil(_SINC_HALF_TAPS / self.cutoff))
        self._buf = np.zeros(self.half, dtype=np.float64)  # history; starts with silence
        self._t = float(self.half)                       # next output time, in _buf's samples

    def process(self, x: np.ndarray, final: bool = False) -> np.ndarray:
        """Float samples in, float samples out (as many as the input covers so far)."""
        if self.rate_in == self.rate_out:
            return np.asarray(x, dtype=np.float64)
        buf = np.concatenate([self._buf, np.asarray(x, dtype=np.float64)])
        if final:
            buf = np.concatenate([buf, np.zeros(self.half)])
        last = len(buf) - self.half - 1                  # the latest time whose taps are all present
        if last < self._t:
            self._buf = buf
            return np.zeros(0)
        times = np.arange(self._t, last + 1e-9, self.step)
        base = np.floor(times).astype(np.int64)
        offsets = np.arange(-self.half + 1, self.half + 1)
        idx = base[:, None] + offsets[None, :]
        dist = times[:, None] - idx
        taps = self.cutoff * np.sinc(self.cutoff * dist) * _kaiser(dist / self.half)
        out = np.einsum("ij,ij->i", buf[idx], taps)
        self._t = times[-1] + self.step
        keep_from = max(0, int(np.floor(self._t)) - self.half)
        self._buf = buf[keep_from:]
        self._t -= keep_from
        return out


def _kaiser(u: np.ndarray, beta: float = 8.0) -> np.ndarray:
    """Kaiser window at u in [-1, 1] (0 outside)."""
    inside = np.clip(1.0 - u * u, 0.0, None)
    return np.i0(beta * np.sqrt(inside)) / np.i0(beta) * (np.abs(u) <= 1.0)


class _Framer:
    """Turns any-rate, any-channel integer or float blocks into FRAME_BYTES frames."""

    def __init__(self, rate: int) -> None:
        self._resampler = Resampler(rate)
        self._pending = np.zeros(0, dtype=np.int16)

    def push(self, mono: np.ndarray, final: bool = False) -> Iterator[bytes]:
        out = self._resampler.process(mono, final)
        pcm = np.clip(np.rint(out), -32768, 32767).astype(np.int16)
        self._pending = np.concatenate([self._pending, pcm])
        whole = len(self._pending) // FRAME_SAMPLES * FRAME_SAMPLES
        for i in range(0, whole, FRAME_SAMPLES):
            yield self._pending[i:i + FRAME_SAMPLES].tobytes()
        self._pending = self._pending[whole:]
        if final and len(self._pending):
            last = np.zeros(FRAME_SAMPLES, dtype=np.int16)
            last[:len(self._pending)] = self._pending
            self._pending = self._pending[:0]
            yield last.tobytes()


def to_mono_int16_scale(raw: bytes, width: int, channels: int) -> np.ndarray:
    """PCM bytes of a WAV file -> mono float samples on the 16-bit scale."""
    if width == 1:
        x = np.frombuffer(raw, dtype=np.uint8).astype(np.float64) - 128.0
        scale = 256.0
    elif width == 2:
        x = np.frombuffer(raw, dtype="<i2").astype(np.float64)
        scale = 1.0
    elif width == 3:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        x = np.where(v >= 1 << 23, v - (1 << 24), v).astype(np.float64)
        scale = 1 / 256.0
    elif width == 4:
        x = np.frombuffer(raw, dtype="<i4").astype(np.float64)
        scale = 1 / 65536.0
    else:
        raise AudioError(f"{width * 8}-bit samples are not supported")
    if channels > 1:
        x = x.reshape(-1, channels).mean(axis=1)
    return x * scale


class WavFileSource:
    """Frames from a PCM WAV file of any sample rate and channel count (mixed down to mono)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._wav: Any = wave.open(str(self.path), "rb")
        except (wave.Error, EOFError) as exc:
            self._wav = _ExtensibleWav.open(self.path, exc)   # Python < 3.12 wave: no WAVE_FORMAT_EXTENSIBLE
        except OSError as exc:
            raise AudioError(f"{self.path}: {exc.strerror or exc}") from exc
        self.rate = self._wav.getframerate()
        self.channels = self._wav.getnchannels()
        self.width = self._wav.getsampwidth()
        if not self.rate or not self.channels:
            self.close()
            raise AudioError(f"{self.path}: no audio (rate {self.rate}, channels {self.channels})")
        self.duration_s = self._wav.getnframes() / self.rate

    def frames(self) -> Iterator[bytes]:
        framer = _Framer(self.rate)
        while True:
            raw = self._wav.readframes(FILE_CHUNK_FRAMES)
            final = len(raw) < FILE_CHUNK_FRAMES * self.width * self.channels
            usable = len(raw) // (self.width * self.channels) * self.width * self.channels
            yield from framer.push(to_mono_int16_scale(raw[:usable], self.width, self.channels), final)
            if final:
                return

    def close(self) -> None:
        self._wav.close()

    def __enter__(self) -> "WavFileSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _ExtensibleWav:
    """The part of wave.Wave_read we use, for WAVE_FORMAT_EXTENSIBLE files with PCM samples."""

    _PCM_GUID_TAIL = bytes.fromhex("000000001000800000aa00389b71")

    def __init__(self, f: Any, rate: int, channels: int, width: int, data_len: int) -> None:
        self._f, self._rate, self._channels, self._width = f, rate, channels, width
        self._left = data_len

    @classmethod
    def open(cls, path: Path, cause: Exception) -> "_ExtensibleWav":
        import struct

        f = open(path, "rb")  # read only
        try:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                raise AudioError(f"{path}: not a PCM WAV file ({cause})")
            fmt = None
            while True:
                chunk = f.read(8)
                if len(chunk) < 8:
                    raise AudioError(f"{path}: not a PCM WAV file (no data chunk)")
                cid, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
                if cid == b"fmt ":
                    fmt = f.read(size + (size & 1))
                elif cid == b"data":
                    break
                else:
                    f.seek(size + (size & 1), 1)
            if fmt is None or len(fmt) < 16:
                raise AudioError(f"{path}: not a PCM WAV file (no fmt chunk)")
            tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", fmt[:16])
            pcm = tag == 1 or (tag == 0xFFFE and len(fmt) >= 40 and fmt[26:40] == cls._PCM_GUID_TAIL
                               and fmt[24:26] == b"\x01\x00")
            if not pcm:
                raise AudioError(f"{path}: not a PCM WAV file ({cause})")
            return cls(f, rate, channels, (bits + 7) // 8, size)
        except BaseException:
            f.close()
            raise

    def getframerate(self) -> int:
        return self._rate

    def getnchannels(self) -> int:
        return self._channels

    def getsampwidth(self) -> int:
        return self._width

    def getnframes(self) -> int:
        return self._left // max(1, self._width * self._channels)

    def readframes(self, n: int) -> bytes:
        data = self._f.read(min(self._left, n * self._width * self._channels))
        self._left -= len(data)
        return data

    def close(self) -> None:
        self._f.close()


class ArraySource:
    """Frames from samples already in memory (16-bit scale, any rate): tests and the benchmark."""

    def __init__(self, samples: np.ndarray, rate: int = SAMPLE_RATE) -> None:
        self.samples, self.rate = np.asarray(samples), rate
        self.duration_s = len(self.samples) / rate

    def frames(self) -> Iterator[bytes]:
        yield from _Framer(self.rate).push(self.samples.astype(np.float64), final=True)

    def close(self) -> None:
        pass


class MicrophoneSource:
    """Frames from a sound card input through ``sounddevice`` (PortAudio), until :meth:`close`.

    ``device`` is a sounddevice device (index or part of its name), None for the default input.
    PortAudio's callback only copies the block into a bounded queue; when the listener falls
    behind, the oldest audio is dropped (``dropped_blocks`` counts it), never written anywhere.
    ``realtime``: frames arrive at the speed of speech, so decoding runs behind the room's decode
    gate rather than in step with the frames (sensors/voice/budget.py).
    """

    realtime = True

    def __init__(self, device: str | int | None = None, *, sd: Any = None) -> None:
        if sd is None:
            try:
                import sounddevice as sd
            except OSError as exc:   # the PortAudio library is missing
                raise AudioError(f"no audio input: {exc}") from exc
        self._sd = sd
        self.device = device
        self.dropped_blocks = 0
        self._closed = False
        try:
            info = sd.query_devices(device, "input")
            self.rate = SAMPLE_RATE
            try:
                sd.check_input_settings(device=device, samplerate=SAMPLE_RATE, channels=1, dtype="int16")
            except Exception:  # the card cannot do 16 kHz itself: take its own rate and resample
                self.rate = int(info["default_samplerate"])
            block = int(self.rate * FRAME_S)
            self._queue: queue.Queue[bytes] = queue.Queue(maxsize=int(MIC_QUEUE_S / FRAME_S))
            self._stream = sd.RawInputStream(device=device, samplerate=self.rate, channels=1, dtype="int16",
                                             blocksize=block, callback=self._callback)
            self._stream.start()
        except Exception as exc:   # sounddevice raises PortAudioError, ValueError for unknown devices
            raise AudioError(f"cannot open microphone {device if device is not None else '(default)'}: "
                             f"{exc}") from exc
        self.name = str(info.get("name", device))

    def _callback(self, indata: Any, frames: int, time_info: Any, status: Any) -> None:
        block = bytes(indata)
        try:
            self._queue.put_nowait(block)
        except queue.Full:
            self.dropped_blocks += 1
            try:
                self._queue.get_nowait()
                self._queue.put_nowait(block)
            except (queue.Empty, queue.Full):
                pass

    def frames(self) -> Iterator[bytes]:
        framer = _Framer(self.rate)
        while not self._closed:
            try:
                block = self._queue.get(timeout=MIC_GET_TIMEOUT_S)
            except queue.Empty:
                if not self._stream.active:
                    raise AudioError(f"microphone {self.name} stopped delivering audio")
                continue
            yield from framer.push(np.frombuffer(block, dtype="<i2").astype(np.float64))

    def drain(self) -> None:
        """Drop the audio waiting to be read (heard while the room itself was speaking)."""
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return

    def close(self) -> None:
        self._closed = True
        try:
            self._stream.stop()
            self._stream.close()
        except Exception:  # closing a stream whose device went away
            pass
