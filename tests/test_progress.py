"""Progress under DVC (no terminal): a line at least every 10 s with the rate and the time left."""

from __future__ import annotations

import io

from lm.progress import Heartbeat, counted


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_heartbeat_prints_rate_and_eta_every_interval_only():
    clock, out = FakeClock(), io.StringIO()
    beat = Heartbeat("encode", 1000, "documents", every_s=10, stream=out, clock=clock)
    for _ in range(100):  # 100 documents in 5 s: no line yet
        clock.now += 0.05
        beat.advance(1)
    assert out.getvalue() == ""
    for _ in range(100):  # 200 documents at 10 s: one line, 20 documents/s, 800 left -> 40 s
        clock.now += 0.05
        beat.advance(1)
    assert out.getvalue() == "encode: 200/1,000 documents (20%), 20 documents/s, ETA 0:40\n"


def test_heartbeat_without_total_shows_elapsed_and_extra():
    clock, out = FakeClock(), io.StringIO()
    beat = Heartbeat("train", None, "steps", every_s=10, stream=out, clock=clock)
    clock.now = 12.0
    beat.update(3, extra="loss 0.5000")
    assert out.getvalue() == "train: 3 steps, 0.25 steps/s, elapsed 0:12, loss 0.5000\n"


def test_counted_advances_once_per_item():
    clock, out = FakeClock(), io.StringIO()
    beat = Heartbeat("x", 3, "rows", stream=out, clock=clock)
    assert list(counted("abc", beat)) == ["a", "b", "c"] and beat.done == 3
