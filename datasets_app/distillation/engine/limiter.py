"""The request-rate limit of a distillation job: at most `limit` requests started in any window of
`window_s` seconds, refused ones included (a provider's limiter counts every request it gets), and
one shared pause when a provider says to wait (429 with Retry-After). Django-free.

Starts are also paced evenly (one every window/limit seconds) rather than sent in a burst of
`limit` at the top of each window: the rate is what "N requests a minute" says over any stretch of
time, and a provider that refills its bucket continuously is never met with a wall of requests.

Times are wall-clock seconds (time.time()) so a resumed run can be seeded with the attempts its
predecessor made in the last minute, on this or another machine."""
from __future__ import annotations

import time
from collections import deque
from typing import Callable, Iterable

# Requests reach the provider a little after we start them, each with its own delay; keeping our
# starts a bit more than a window apart keeps their arrivals inside the limit too.
MARGIN_S = 0.25


class RateLimiter:
    def __init__(self, limit: int, window_s: float = 60.0, *, seed: Iterable[float] = (),
                 clock: Callable[[], float] = time.time, margin_s: float = MARGIN_S):
        if limit < 1:
            raise ValueError("limit must be at least 1 request per window")
        self.limit = limit
        self.window_s = window_s + margin_s
        self.clock = clock
        self._starts: deque[float] = deque(sorted(seed))
        self._paused_until = 0.0
        self._next_at = self._starts[-1] + self.interval_s if self._starts else 0.0

    def _forget_old(self, now: float) -> None:
        while self._starts and now - self._starts[0] >= self.window_s:
            self._starts.popleft()
        while len(self._starts) > self.limit:  # a seed may hold more than we keep track of
            self._starts.popleft()

    @property
    def interval_s(self) -> float:
        return self.window_s / self.limit

    def wait_s(self) -> float:
        """Seconds until a request may start (0: now)."""
        now = self.clock()
        self._forget_old(now)
        wait = self._paused_until - now
        wait = max(wait, self._next_at - now)
        if len(self._starts) >= self.limit:
            wait = max(wait, self._starts[0] + self.window_s - now)
        return max(0.0, wait)

    def take(self) -> float:
        """Record a request starting now (call only when wait_s() is 0); returns its time."""
        now = self.clock()
        self._starts.append(now)
        # The cadence is kept from the slot, not from when the caller got round to it: a start a few
        # milliseconds late does not push every later one back. The window above stays the hard cap.
        late = now - self._next_at
        self._next_at = (self._next_at if 0 <= late < self.interval_s else now) + self.interval_s
        return now

    def pause_until(self, when: float) -> None:
        """No request starts before `when` (a provider's Retry-After applies to every request)."""
        self._paused_until = max(self._paused_until, when)

    @property
    def paused_until(self) -> float:
        return self._paused_until

    def recent(self) -> list[float]:
        self._forget_old(self.clock())
        return list(self._starts)
