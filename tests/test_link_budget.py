"""The gateway's readings budget, a token bucket per node (docs/configuration.md, [gateway]): a burst,
then one reading per 1/rate seconds; refilled by the clock in any steps, never above the burst,
never by a clock that steps back. Pure arithmetic on milliseconds: no sockets, no waiting."""

from __future__ import annotations

from controller.link.gateway import TokenBucket


def _full(rate_per_s: float = 2.0, burst: float = 3.0, at_ms: int = 0) -> TokenBucket:
    return TokenBucket(rate_per_s, burst, burst, at_ms)


def test_a_full_bucket_gives_its_burst_then_nothing():
    bucket = _full(burst=3.0)
    assert [bucket.take(0) for _ in range(4)] == [True, True, True, False]
    assert bucket.tokens == 0.0


def test_one_token_comes_back_after_one_over_the_rate():
    bucket = _full(rate_per_s=2.0, burst=1.0)
    assert bucket.take(0)
    assert not bucket.take(499)              # 0.998 of a token
    assert bucket.take(500)                  # exactly one
    assert not bucket.take(500)


def test_a_refill_in_uneven_steps_still_reaches_a_whole_token():
    bucket = _full(rate_per_s=3.0, burst=1.0)
    assert bucket.take(0)
    for now in (111, 222, 333):              # 3/s for 333 ms: 0.999 of a token, short of one
        assert not bucket.take(now)
    bucket = _full(rate_per_s=10.0, burst=1.0)
    assert bucket.take(0)
    assert not bucket.take(33) and not bucket.take(66)
    assert bucket.take(100), "0.33 + 0.33 + 0.34 tokens is one token, floating point or not"


def test_a_long_silence_refills_to_the_burst_and_no_further():
    bucket = _full(rate_per_s=2.0, burst=3.0)
    for _ in range(3):
        bucket.take(0)
    assert bucket.take(3_600_000)
    assert bucket.tokens == 2.0
    assert [bucket.take(3_600_000) for _ in range(3)] == [True, True, False]


def test_a_clock_that_steps_back_refills_nothing_until_it_catches_up():
    bucket = _full(rate_per_s=1.0, burst=1.0, at_ms=10_000)
    assert bucket.take(10_000)
    assert not bucket.take(5_000)            # stepped back 5 s: no tokens, and the mark stays
    assert bucket.at_ms == 10_000
    assert not bucket.take(10_999)
    assert bucket.take(11_000)
