"""The processor budget of live decoding: one utterance at a time, a bounded queue, a CPU allowance.

On the microphone the VAD keeps listening in its own thread and hands each finished utterance to
the room's one :class:`DecodeGate`; one decoder thread takes them from it. So:

* at most one utterance decodes at a time, for the whole room (every bed shares the model);
* at most ``max_waiting`` utterances wait; when another arrives the oldest waiting one is dropped
  (``shed``), so the pipeline is never more than a few utterances behind what is being said;
* decoding may use ``budget`` of one core on average, with a ``burst_s`` allowance (a token
  bucket in processor-seconds). A normal room never reaches it; a television talking all day does:
  then the decoder waits for its allowance while the queue sheds, and the gate says so: the
  ``shed`` counter, ``degraded`` (true while anything was shed in the last ``DEGRADED_HOLD_S``) and
  one warning line per episode.

The gate's decisions take the clock as a parameter, so tests and the benchmark drive it with a
fake or an audio clock; :meth:`DecodeGate.take` is the blocking form the decoder thread uses.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

log = logging.getLogger("smartroom.voice")

T = TypeVar("T")

MAX_WAITING = 2        # utterances waiting for the decoder; a patient repeating a call fits, a TV's backlog does not
CPU_BUDGET = 0.5       # of one core, on average: the other half and the other cores keep the room running
BURST_S = 6.0          # processor-seconds decodable at once: about 20 whisper decodes, a whole conversation
DEGRADED_HOLD_S = 60.0  # "degraded" stays on this long after the last dropped utterance
TAKE_POLL_S = 0.5      # how often a waiting decoder looks whether the gate was closed


@dataclass(slots=True)
class GateStats:
    offered: int = 0       # utterances handed to the gate
    decoded: int = 0       # utterances given to the decoder
    shed: int = 0          # utterances dropped undecoded because the decoder was busy or over budget
    cpu_s: float = 0.0     # processor time spent decoding
    budget_waits: int = 0  # times the decoder waited for its allowance
    episodes: int = 0      # busy episodes (each logged once)


class DecodeGate(Generic[T]):
    """Bounded, budgeted hand-over of utterances from the listeners to the one decoder."""

    def __init__(self, *, max_waiting: int = MAX_WAITING, budget: float = CPU_BUDGET, burst_s: float = BURST_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_waiting < 1 or not 0 < budget <= 1 or burst_s <= 0:
            raise ValueError(f"bad decode gate: max_waiting={max_waiting}, budget={budget}, burst_s={burst_s}")
        self.max_waiting, self.budget, self.burst_s = max_waiting, budget, burst_s
        self._clock = clock
        self._waiting: collections.deque[T] = collections.deque()
        self._tokens = burst_s
        self._refilled = clock()
        self._last_shed: float | None = None
        self._busy = False
        self._closed = False
        self._cond = threading.Condition()
        self.stats = GateStats()

    # -------------------------------------------------------------- decisions (clock passed in)
    def _refill(self, now: float) -> None:
        self._tokens = min(self.burst_s, self._tokens + (now - self._refilled) * self.budget)
        self._refilled = now

    def _offer(self, item: T, now: float) -> T | None:
        self.stats.offered += 1
        shed = None
        if len(self._waiting) >= self.max_waiting:
            shed = self._waiting.popleft()
            self.stats.shed += 1
            if not self._degraded(now):
                self.stats.episodes += 1
                log.warning("voice: too much speech to decode it all (television?): dropping the oldest "
                            "waiting utterance; commands may be missed (%d dropped so far)", self.stats.shed)
            self._last_shed = now
        self._waiting.append(item)
        return shed

    def _next(self, now: float) -> tuple[T | None, float]:
        """(the utterance to decode now, or None; seconds until the budget allows one)."""
        self._refill(now)
        if not self._waiting or self._busy:
            return None, 0.0
        if self._tokens <= 0:
            return None, -self._tokens / self.budget
        self._busy = True
        self.stats.decoded += 1
        return self._waiting.popleft(), 0.0

    def _done(self, cpu_s: float, now: float) -> None:
        self._refill(now)
        self._tokens -= cpu_s
        self.stats.cpu_s += cpu_s
        self._busy = False

    def _degraded(self, now: float) -> bool:
        return self._last_shed is not None and now - self._last_shed < DEGRADED_HOLD_S

    # -------------------------------------------------------------- thread-safe use
    def offer(self, item: T) -> T | None:
        """Queue ``item`` for decoding; returns the utterance dropped to make room, if any."""
        with self._cond:
            shed = self._offer(item, self._clock())
            self._cond.notify_all()
            return shed

    def take(self, timeout: float | None = None) -> T | None:
        """Block until an utterance may be decoded (None when closed, or after ``timeout``)."""
        deadline = None if timeout is None else self._clock() + timeout
        with self._cond:
            waited = False
            while not self._closed:
                item, wait_s = self._next(self._clock())
                if item is not None:
                    return item
                if wait_s > 0 and not waited:
                    waited = True
                    self.stats.budget_waits += 1
                left = TAKE_POLL_S if deadline is None else min(TAKE_POLL_S, deadline - self._clock())
                if left <= 0:
                    return None
                self._cond.wait(min(left, wait_s) if wait_s > 0 else left)
            return None

    def done(self, cpu_s: float) -> None:
        """The decoder finished the utterance it took, using ``cpu_s`` processor-seconds."""
        with self._cond:
            self._done(cpu_s, self._clock())
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._waiting.clear()
            self._cond.notify_all()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def degraded(self) -> bool:
        with self._cond:
            return self._degraded(self._clock())

    def status(self) -> dict[str, object]:
        """Counters for the room's status and metrics (no audio, no text)."""
        with self._cond:
            s = self.stats
            return {"offered": s.offered, "decoded": s.decoded, "shed": s.shed, "cpu_s": round(s.cpu_s, 3),
                    "budget_waits": s.budget_waits, "busy_episodes": s.episodes, "waiting": len(self._waiting),
                    "degraded": self._degraded(self._clock())}
