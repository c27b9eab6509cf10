"""The voice benchmark's corpus, made on this machine with text-to-speech and sox (never stored in the repo).

* Voices (:data:`DEV_VOICES`, :data:`HELD_OUT_VOICES`): espeak-ng's formant voices are the
  development set (anything chosen, e.g. a threshold, is chosen on them); flite's (diphone and
  clustergen) and festival's (diphone and HTS) voices are never used to choose anything and are
  reported on their own.
* Commands (:data:`COMMANDS`): every built-in phrase and natural variants; distractors
  (:data:`DISTRACTORS`): near misses and everyday sentences; both spoken by every voice, each with
  half a second of room tone before and after.
* Noise: pink (ventilation) from ``sox synth`` and multi-talker babble (six voices reading the news
  at once), mixed in at a chosen signal-to-noise ratio.
* Command utterances (issue 7's corpus, still used for espeak-ng variety): every built-in phrase,
  spoken by several espeak-ng voices at several speeds and pitches.
* Noise: white (hiss), pink (ventilation) and brown (rumble) from ``sox synth``, and TV babble
  (everyday speech, below), mixed in with ``sox -m`` at a chosen signal-to-noise ratio.
* Non-command audio: everyday conversation, short replies, TV news, weather and adverts read by
  several voices (more than 10 minutes), plus coughs and noise bursts. The text deliberately uses
  the command words in passing ("drink plenty of water", "the nurse said") and near misses
  ("nursery", "Walter", "paint"): that is what a room hears.

Everything is cached under a directory (default ``~/.cache/smartroom/voice-bench``); files are
rebuilt only when missing.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

RATE = 16_000
PAD_S = 0.5  # room tone before and after a command

# (espeak-ng voice, words per minute, pitch 0..99)
VOICES = ("en-us", "en-gb", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-us+f2", "en-us+m3", "en-gb+f3",
          "en-us+klatt", "en-gb-x-gbclan+f4", "en-us+m7", "en-gb-x-gbcwmd+f5")
SPEEDS = (120, 150, 175)
PITCHES = (30, 50, 70)

# The voices and texts of the non-command audio and of the TV babble are kept apart from each other.
NONCOMMAND_VOICES = ("en-us", "en-gb+f3", "en-us+m3", "en-gb-x-rp+f2", "en-029+m7")
BABBLE_VOICES = ("en-gb-scotland+f4", "en-us+klatt2")

CONVERSATION = """
Good morning. How did you sleep? Not too bad, thank you. The bed is softer than the one at home.
Did the doctor come round yet? Not yet, she usually comes after ten. Okay. Yes. No. Thank you.
Could you pass me my glasses? They are on the table next to the flowers. Lovely, thanks.
My daughter is coming this afternoon with the children. The little one just started at the nursery.
The nurse said I can walk to the window later if I feel up to it. That would be nice.
Walter from the next room was telling me about his garden. He grows tomatoes and beans.
I told him I used to paint the fence every summer, but my back will not let me any more.
Do you want the radio on? No, leave it, I like the quiet. Maybe later.
The soup at lunch was cold again. I will mention it when they come to collect the tray.
Hello. Hi there. Come in, sit down. How was the traffic? Terrible, the bridge was closed.
It is raining again. I think it will clear up by the evening. Let us hope so.
Have you seen my phone charger? It was here a minute ago. Oh, here it is, under the blanket.
Yes please. No thanks. Maybe. I do not know. Sure. All right. Of course. See you tomorrow.
My husband always says the hospital food is better than mine. He is probably right.
They changed the dressing this morning and it looks much better. The swelling has gone down.
The physiotherapist wants me to do the exercises three times a day. It is hard work.
I had a cup of tea and a biscuit. Would you like one? There is plenty in the cupboard.
We should call your brother tonight. He was asking how the operation went.
The television in the corner does not work. Someone will fix it on Monday, they said.
Goodnight. Sleep well. See you in the morning. Turn the light off, would you? Thanks, love.
I remember when we went to the seaside every August. The water was always freezing.
She helped me fill in the form for the pharmacy. Those forms are so confusing.
The cat is staying with the neighbours while I am in here. They send me photos every day.
What time is it? Half past three. Already? The day goes quickly when you have visitors.
Can you open the window a little? It is stuffy in here. That is better. Much better.
The man across the hall snores like a tractor. I barely slept on Tuesday.
Remind me to ask about the new tablets. I am not sure they agree with me.
He painted the kitchen blue last year. It looks lovely in the morning light.
"""

TV = """
Good evening, here is the news. The city council has approved a new plan to repair the main bridge,
which has been closed to traffic since the storm last month. Work is expected to take six weeks.
Water levels in the reservoir are back to normal after the heavy rain, the water company said today,
and the hosepipe ban will be lifted on Friday.
In sport, the home team came back from two goals down to win in the final minute of the match.
The manager praised the players for never giving up. Tickets for the final go on sale on Monday.
Now the weather. A band of rain will move in from the west overnight, clearing by mid morning.
Tomorrow will be bright and breezy with highs of fourteen degrees. Frost is possible inland.
Scientists have discovered a new species of frog in the rainforest. It is smaller than a fingernail.
The price of petrol rose again this week. Drivers are being urged to plan their journeys.
A local school has raised three thousand pounds for charity by running a sponsored walk.
Hospital waiting times have fallen for the third month in a row, according to new figures.
A spokesperson said nurses and doctors had worked hard to reduce the backlog.
Coming up after the break: the best recipes for a quick family dinner, and our guide to the garden.
Are you tired of aching joints? Try our new cream, now with added menthol. Available in all good shops.
This programme was made with the help of viewers like you. Thank you for watching.
The museum will open its new gallery next spring, with paintings from the eighteenth century.
Police are asking anyone who saw the accident on the high street to come forward.
The festival returns this summer with music, food and fireworks over the river.
Traffic is heavy on the motorway this evening because of roadworks near junction twelve.
And finally, a dog in Yorkshire has learned to open the fridge. His owners are not amused.
In the studio tonight we are joined by a chef who will show us how to bake bread at home.
First you mix the flour with warm water and a pinch of salt. Then knead the dough for ten minutes.
The stock market closed higher today, led by gains in technology and energy companies.
The weekend forecast looks dry and sunny, perfect for a walk in the park or a trip to the coast.
Later in the programme, an interview with the author of this year's prize winning novel.
"""


# The evaluation's commands: every built-in phrase and natural ways of saying the same thing.
# Written before the whisper engine's grammar (sensors/voice/intents.py) and not changed to suit it:
# a phrasing the grammar does not cover counts as a miss.
COMMANDS: tuple[tuple[str, str], ...] = (
    # the built-in phrases (sensors/voice/options.py)
    ("nurse", "nurse"), ("nurse", "call the nurse"), ("nurse", "nurse please"), ("nurse", "help"),
    ("help", "help me"), ("help", "I fell"), ("help", "I have fallen"), ("help", "emergency"),
    ("water", "water"), ("water", "I need water"), ("water", "water please"),
    ("pain", "I am in pain"), ("pain", "pain"), ("pain", "it hurts"),
    ("toilet", "toilet"), ("toilet", "I need the toilet"), ("toilet", "bathroom please"),
    ("cancel", "never mind"), ("cancel", "cancel"), ("cancel", "cancel the call"),
    # natural variants
    ("nurse", "Can you get the nurse?"), ("nurse", "Nurse!"), ("nurse", "I need help."),
    ("nurse", "Could someone call a nurse, please?"), ("nurse", "I need the nurse."),
    ("help", "Help me, please!"), ("help", "I've fallen."), ("help", "Please help me!"),
    ("help", "I fell down."),
    ("water", "Can I have some water, please?"), ("water", "I'm thirsty."), ("water", "Could I get a glass of water?"),
    ("pain", "I'm in pain."), ("pain", "It really hurts."),
    ("toilet", "I need to go to the toilet."), ("toilet", "I need the bathroom."),
    ("cancel", "Never mind, I'm fine."), ("cancel", "Cancel that."),
)
BUILT_IN_COUNT = 20   # the first 20 of COMMANDS are the built-in phrases

# Everyday talk and near misses a patient's room hears: none of them is a call.
DISTRACTORS: tuple[str, ...] = (
    "The nursery is down the hall.", "Help yourself to cake.", "Water the plants, would you?",
    "The nurse said I can go home tomorrow.", "Did the nurse bring my tablets?", "My daughter is a nurse.",
    "Thank you, nurse.", "Good morning, nurse.", "That painting is lovely.", "What a pain in the neck.",
    "I helped my son move house.", "The water was freezing at the beach.", "The toilet roll is on the shelf.",
    "Cancel my newspaper, would you?", "The bathroom tiles are blue.", "I fell asleep during the film.",
    "I have fallen behind with my reading.", "Emergency services were called to the scene.",
    "Never mind the weather.", "It hurts to think about it.", "Walter is coming at three.",
    "Can you pass me the remote?", "Could you open the window a little?", "I need my glasses.",
    "I need to call my daughter.", "Please call my son tonight.", "The call was cancelled.",
    "She cancelled the appointment.", "Water under the bridge.", "The kettle needs more water.",
    "Help is on the way, said the man on the television.", "Tell the nurse it can wait.",
    "No pain, no gain.", "Turn the television off, please.", "I would like a cup of tea.",
    "The doctor will call round later.", "Is it raining outside?",
)

@dataclass(frozen=True, slots=True)
class Utterance:
    path: Path
    intent: str | None   # None: not a command
    phrase: str
    voice: str
    speed: int
    pitch: int


def cache_dir(root: Path | None = None) -> Path:
    if root is None:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        root = base / "smartroom" / "voice-bench"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _key(*parts: object) -> str:
    return hashlib.sha1("|".join(map(str, parts)).encode()).hexdigest()[:12]


def speak(text: str, voice: str, speed: int, pitch: int, out: Path) -> Path:
    """espeak-ng -> 16 kHz mono 16-bit WAV at ``out`` (cached)."""
    if not out.exists():
        tmp = out.with_suffix(".tmp.wav")
        espeak = subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", text],
                                check=True, capture_output=True).stdout
        subprocess.run(["sox", "-q", "-G", "-t", "wav", "-", "-r", str(RATE), "-c", "1", "-b", "16", str(tmp)],
                       input=espeak, check=True)
        tmp.rename(out)
    return out


# Voices as "engine:name[:speed:pitch]". espeak-ng: development; flite and festival: held out.
DEV_VOICES = ("espeak:en-us:150:50", "espeak:en-gb+f3:165:60", "espeak:en-us+m3:130:40",
              "espeak:en-gb-scotland:150:50", "espeak:en-029+f2:175:70", "espeak:en-us+klatt:150:45")
HELD_OUT_VOICES = ("flite:awb", "festival:kal_diphone", "flite:rms", "festival:cmu_us_slt_arctic_hts",
                   "flite:slt", "festival:ked_diphone", "flite:kal16")   # --voice-limit N takes the first N
BABBLE_TALKERS = ("espeak:en-us+f4:160:60", "espeak:en-gb+m2:150:40", "espeak:en-us+m7:170:50",
                  "espeak:en-gb-x-rp+f2:155:65", "espeak:en-029+m3:145:45", "espeak:en-us+f3:165:55")


def synthesise(text: str, voice: str, out: Path) -> Path:
    """``voice`` ("espeak:en-us:150:50", "flite:slt", "festival:kal_diphone") says ``text`` into a
    16 kHz mono 16-bit WAV at ``out`` (cached)."""
    if out.exists():
        return out
    engine, name, *rest = voice.split(":")
    if engine == "espeak":
        speed, pitch = (int(rest[0]), int(rest[1])) if rest else (150, 50)
        return speak(text, name, speed, pitch, out)
    tmp = out.with_suffix(".tts.wav")
    if engine == "flite":
        subprocess.run(["flite", "-voice", name, "-t", text, "-o", str(tmp)], check=True, capture_output=True)
    elif engine == "festival":
        subprocess.run(["text2wave", "-eval", f"(voice_{name})", "-o", str(tmp)], input=text.encode(), check=True,
                       capture_output=True)
    else:
        raise ValueError(f"unknown voice {voice!r}")
    conv = out.with_suffix(".tmp.wav")
    subprocess.run(["sox", "-q", "-G", str(tmp), "-r", str(RATE), "-c", "1", "-b", "16", str(conv)], check=True)
    tmp.unlink()
    conv.rename(out)
    return out


def spoken(root: Path, texts: Sequence[str], voices: Sequence[str], kind: str) -> dict[tuple[str, str], Path]:
    """Every text in every voice, padded with PAD_S of silence: (text, voice) -> WAV path."""
    out_dir = root / kind
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for voice in voices:
        for text in texts:
            path = out_dir / f"{_key(text, voice)}.wav"
            if not path.exists():
                raw = synthesise(text, voice, out_dir / f"raw-{path.name}")
                pad = np.zeros(int(PAD_S * RATE))
                write(path, np.concatenate([pad, read(raw), pad]))
                raw.unlink()
            paths[(text, voice)] = path
    return paths


def multi_talker_babble(root: Path, seconds: int = 120) -> Path:
    """Six people talking at once: the news (TV) read by BABBLE_TALKERS from different places in it."""
    path = root / f"babble6-{_key(TV, BABBLE_TALKERS, seconds)}.wav"
    if path.exists():
        return path
    sentences = _sentences(TV)
    tracks = []
    for i, voice in enumerate(BABBLE_TALKERS):
        order = sentences[i * 4:] + sentences[:i * 4]       # each talker starts elsewhere in the text
        raw = read(synthesise(" ".join(order), voice, root / f"babble6-raw-{i}.wav"))
        tracks.append(np.resize(raw, seconds * RATE) / (active_rms(raw) or 1.0))
        (root / f"babble6-raw-{i}.wav").unlink()
    mixed = sum(tracks)
    write(path, mixed / np.max(np.abs(mixed)) * 16000)
    return path


def mix_array(speech: np.ndarray, noise_samples: np.ndarray, snr_db: float, offset: int) -> np.ndarray:
    """``speech`` plus a stretch of ``noise_samples`` (from ``offset``) scaled to ``snr_db`` below it."""
    start = offset % max(1, len(noise_samples) - len(speech))
    n = noise_samples[start:start + len(speech)]
    if len(n) < len(speech):
        n = np.resize(n, len(speech))
    rms = np.sqrt(np.mean(n ** 2))
    gain = active_rms(speech) / (rms * 10 ** (snr_db / 20)) if rms > 0 else 0.0
    return np.clip(speech + gain * n, -32768, 32767)


def read(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        assert w.getframerate() == RATE and w.getnchannels() == 1 and w.getsampwidth() == 2, path
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)


def write(path: Path, samples: np.ndarray) -> Path:
    tmp = path.with_suffix(".tmp.wav")
    with wave.open(str(tmp), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(np.clip(np.rint(samples), -32768, 32767).astype("<i2").tobytes())
    tmp.rename(path)
    return path


def commands(root: Path, phrases: dict[str, tuple[str, ...]], per_phrase: int, seed: int = 7) -> list[Utterance]:
    """``per_phrase`` spoken variants of every phrase, padded with silence (noise comes later)."""
    rng = random.Random(seed)
    out_dir = root / "commands"
    out_dir.mkdir(exist_ok=True)
    utterances = []
    for intent, words in phrases.items():
        for phrase in words:
            combos = [(v, s, p) for v in VOICES for s in SPEEDS for p in PITCHES]
            for voice, speed, pitch in rng.sample(combos, per_phrase):
                path = out_dir / f"{intent}-{_key(phrase, voice, speed, pitch)}.wav"
                if not path.exists():
                    raw = speak(phrase, voice, speed, pitch, out_dir / f"raw-{path.name}")
                    pad = np.zeros(int(PAD_S * RATE))
                    write(path, np.concatenate([pad, read(raw), pad]))
                    raw.unlink()
                utterances.append(Utterance(path, intent, phrase, voice, speed, pitch))
    return utterances


def _sentences(text: str) -> list[str]:
    flat = " ".join(text.split())
    parts, cur = [], []
    for word in flat.split(" "):
        cur.append(word)
        if word.endswith((".", "?", "!")):
            parts.append(" ".join(cur))
            cur = []
    return parts + ([" ".join(cur)] if cur else [])


def noncommand(root: Path, seed: int = 11) -> list[Utterance]:
    """Everyday speech by several voices, sentence by sentence with natural pauses between them."""
    rng = random.Random(seed)
    out_dir = root / "speech"
    out_dir.mkdir(exist_ok=True)
    utterances = []
    for source, text in (("conversation", CONVERSATION), ("tv", TV)):
        sentences = _sentences(text)
        for voice in NONCOMMAND_VOICES:
            speed, pitch = rng.choice(SPEEDS[1:]), rng.choice(PITCHES)
            path = out_dir / f"{source}-{_key(source, voice, speed, pitch, text)}.wav"
            if not path.exists():
                pieces = []
                for i, sentence in enumerate(sentences):
                    raw = speak(sentence, voice, speed, pitch, out_dir / f"raw-{i}-{path.name}")
                    pieces += [read(raw), np.zeros(int(rng.uniform(0.3, 1.2) * RATE))]
                    raw.unlink()
                write(path, np.concatenate(pieces))
            utterances.append(Utterance(path, None, source, voice, speed, pitch))
    return utterances


def babble(root: Path) -> Path:
    """TV in the background: the news read by two other voices at once, for mixing under commands."""
    path = root / f"babble-{_key(TV, BABBLE_VOICES)}.wav"
    if not path.exists():
        tracks = []
        for i, voice in enumerate(BABBLE_VOICES):
            tracks.append(read(speak(" ".join(TV.split()), voice, 165, 50, root / f"babble-raw-{i}.wav")))
        n = min(len(t) for t in tracks)
        write(path, sum(t[:n] for t in tracks) / len(tracks))
    return path


def coughs(root: Path, count: int = 60, seed: int = 5) -> Path:
    """Coughs, knocks and noise bursts with silence between them (sox synth, shaped and filtered)."""
    path = root / f"coughs-{count}-{seed}.wav"
    if path.exists():
        return path
    rng = random.Random(seed)
    pieces = []
    for i in range(count):
        length = rng.uniform(0.15, 0.6)
        kind = rng.choice(("pinknoise", "brownnoise", "whitenoise"))
        tmp = root / f"burst-{i}.wav"
        # A cough: a noise burst with a fast attack and a slower decay, band-limited like a voice.
        subprocess.run(["sox", "-q", "-n", "-r", str(RATE), "-c", "1", "-b", "16", str(tmp), "synth", f"{length:.2f}",
                        kind, "bandpass", str(rng.randint(400, 1500)), "1.5q", "fade", "q", "0.02",
                        f"{length:.2f}", f"{length * 0.7:.2f}", "gain", "-n", str(-rng.randint(3, 15))], check=True)
        burst = read(tmp)
        tmp.unlink()
        repeats = rng.choice((1, 1, 2, 3))  # coughs come in runs
        for _ in range(repeats):
            pieces += [burst, np.zeros(int(rng.uniform(0.1, 0.3) * RATE))]
        pieces.append(np.zeros(int(rng.uniform(0.8, 2.0) * RATE)))
    write(path, np.concatenate(pieces))
    return path


def noise(root: Path, kind: str, seconds: float) -> Path:
    """A stretch of steady noise from sox (white, pink, brown), cached."""
    path = root / f"noise-{kind}-{int(seconds)}.wav"
    if not path.exists():
        subprocess.run(["sox", "-q", "-n", "-r", str(RATE), "-c", "1", "-b", "16", str(path), "synth",
                        str(int(seconds)), f"{kind}noise", "gain", "-n", "-6"], check=True)
    return path


def active_rms(x: np.ndarray) -> float:
    """RMS over the frames that carry speech (within 30 dB of the loudest 20 ms), as in SNR practice."""
    frame = RATE // 50
    n = len(x) // frame
    if n == 0:
        return float(np.sqrt(np.mean(x ** 2))) if len(x) else 0.0
    power = (x[:n * frame].reshape(n, frame) ** 2).mean(axis=1)
    active = power[power > power.max() * 10 ** (-30 / 10)]
    return float(np.sqrt(active.mean())) if len(active) else 0.0


def mix(speech: Path, noise_path: Path, snr_db: float, out: Path, offset_s: float = 0.0) -> Path:
    """``sox -m`` of speech and a scaled stretch of noise, so that speech/noise power is ``snr_db``."""
    if out.exists():
        return out
    s = read(speech)
    n = read(noise_path)
    start = int(offset_s * RATE) % max(1, len(n) - len(s))
    n = n[start:start + len(s)]
    if len(n) < len(s):
        n = np.resize(n, len(s))
    gain = active_rms(s) / (np.sqrt(np.mean(n ** 2)) * 10 ** (snr_db / 20)) if n.any() else 0.0
    cut = out.with_suffix(".noise.wav")
    write(cut, n)
    # -m divides by the number of inputs unless volumes are given: give them (1 and the noise gain).
    subprocess.run(["sox", "-q", "-G", "-m", "-v", "1", str(speech), "-v", f"{gain:.6f}", str(cut), str(out)], check=True)
    cut.unlink()
    return out
