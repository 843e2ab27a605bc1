"""Serving sized in rows: admission control, the throughput it is derived from, and the limits' arithmetic.

A request's cost is its rows (one (user, item) pair = one LLM forward row), not its count: a 1,000-item
request costs 1,000 times a 1-item one. So a scorer replica bounds what it has accepted and not yet answered
in rows (`RowAdmission`): past `max_queued_rows` a request is refused at once (HTTP 503 with `Retry-After`)
instead of waiting past the HTTP timeout. With R rows/s per replica and a latency target T, the bound is
R·T rows, and an accepted request is answered within about T. `derive_serving_limits` is the whole
derivation (docs/deploy.md §6 writes it out; tests/serve/test_configs.py recomputes both serve configs
from it):

    max_queued_rows        Q = floor(R · T)              rows accepted per replica (the admission bound)
    max_batch_rows         B = max(1, floor(Q / 2))      rows per batch (RowBatcher): while one batch
                                                         computes, the next waits fully admitted (no idle
                                                         gap between batches)
    max_items              = B                           a request fits one batch
    max_ongoing_requests   = Q                           every request has >= 1 row, so Serve's request
                                                         bound never refuses what the row bound accepts
    request_timeout_s      = ceil(2 · T)                 an accepted request waits for <= Q rows ahead
                                                         plus its batch (<= B): <= 1.5·T, rounded up to 2·T
    target_queued_rows     = ceil(Q / 2)                 autoscaling target: a replica's queue half full
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import asdict, dataclass, field

from cora_ray.errors import CoraError

# Forward-chunk latency histogram bounds (seconds): from a GPU chunk (ms) to a CPU chunk (tens of s).
FORWARD_LATENCY_BOUNDS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0)


class Overloaded(CoraError):
    """A replica refused a request: its accepted rows would exceed `max_queued_rows` (HTTP 503)."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = int(retry_after_s)

    def __reduce__(self) -> tuple:  # crosses the Ray boundary from the replica to the ingress
        return (Overloaded, (str(self), self.retry_after_s))


@dataclass
class ServingLimits:
    """The serve-config numbers that follow from a replica's rows/s and a latency target."""

    rows_per_s: float
    latency_target_s: float
    rows_per_forward: int
    max_queued_rows: int
    max_items: int
    max_batch_rows: int
    max_ongoing_requests: int
    request_timeout_s: int
    target_queued_rows: int

    def to_dict(self) -> dict:
        return asdict(self)


def derive_serving_limits(rows_per_s: float, latency_target_s: float, rows_per_forward: int) -> ServingLimits:
    """The limits of one scorer replica (module docstring): rows/s R, latency target T, forward chunk rows."""
    if rows_per_s <= 0 or latency_target_s <= 0 or rows_per_forward <= 0:
        raise ValueError(
            f"rows_per_s, latency_target_s and rows_per_forward must be > 0, got "
            f"{rows_per_s}, {latency_target_s}, {rows_per_forward}"
        )
    q = math.floor(rows_per_s * latency_target_s)
    if q < 1:
        raise ValueError(
            f"{rows_per_s} rows/s × {latency_target_s} s admits less than one row: raise the latency target"
        )
    return ServingLimits(
        rows_per_s=rows_per_s,
        latency_target_s=latency_target_s,
        rows_per_forward=rows_per_forward,
        max_queued_rows=q,
        max_items=max(1, q // 2),
        max_batch_rows=max(1, q // 2),
        max_ongoing_requests=q,
        request_timeout_s=math.ceil(2 * latency_target_s),
        target_queued_rows=math.ceil(q / 2),
    )


@dataclass
class LatencyHistogram:
    """Counts of observed durations per bucket (`bounds` are upper edges; one overflow bucket)."""

    bounds: tuple[float, ...] = FORWARD_LATENCY_BOUNDS_S
    counts: list[int] = field(default_factory=list)
    total_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, seconds: float) -> None:
        k = next((j for j, b in enumerate(self.bounds) if seconds <= b), len(self.bounds))
        self.counts[k] += 1
        self.total_s += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def to_dict(self) -> dict:
        return {
            "bounds_s": list(self.bounds),
            "counts": list(self.counts),
            "count": self.count,
            "sum_s": round(self.total_s, 6),
        }


class RowAdmission:
    """A replica's accepted-not-answered rows, bounded by `max_rows`; measures the rows/s it serves.

    `admit(n)` raises Overloaded when n more rows would pass the bound (a request larger than the bound is
    refused even on an idle replica: the ingress's max_items keeps such requests out). `release(n)` when the
    request is answered or failed. `observe(rows, seconds)` records a forward chunk: the rate used for
    Retry-After is rows over busy seconds, an exponential average (half weight on the last ~10 chunks).
    `batch_begin(rows)` / `batch_end()` bracket a batch: rows are released when a batch answers, so
    Retry-After is at least the time the running batch still needs, and `batch_busy_s` is the wall time
    spent in batches (utilisation = its growth over elapsed time).

    Refused requests take a ticket: their rows join a refused backlog that drains at the measured rate, and a
    refused request's Retry-After also waits for the backlog ahead of it (capped at `max_rows`). Without it
    every client refused during one batch is told the same instant, returns together and is refused again
    (measured with 32 clients x 5 rows on one CPU: 650 refusals in 90 s without tickets, 108 with them)."""

    def __init__(self, max_rows: int) -> None:
        if max_rows <= 0:
            raise ValueError(f"max_queued_rows must be > 0, got {max_rows}")
        self._lock = threading.Lock()
        self.max_rows = int(max_rows)
        self.queued_rows = 0
        self.admitted_rows = 0
        self.refused_rows = 0
        self.refused_requests = 0
        self._rate: float | None = None
        self.latency = LatencyHistogram()
        self.rows_observed = 0
        self.busy_s = 0.0
        self.batch_busy_s = 0.0
        self._batch: tuple[float, int] | None = None  # (monotonic start, rows) of the running batch
        self.last_batch_end: float | None = None  # monotonic
        self._backlog = 0.0  # rows of refused requests told to come back, not yet drained at the rate
        self._backlog_t = time.monotonic()
        self.started = time.monotonic()

    def admit(self, rows: int) -> None:
        with self._lock:
            if self.queued_rows + rows > self.max_rows:
                self.refused_rows += rows
                self.refused_requests += 1
                retry = self._retry_after(self.queued_rows + rows - self.max_rows + self._drain_backlog())
                # at most one queue's worth: a client refused again holds a second ticket, which the
                # replica cannot tell from a new one; uncapped, waits grew until the replica idled (measured:
                # 88% busy with 32 clients)
                self._backlog = min(self._backlog + rows, float(self.max_rows))
                raise Overloaded(
                    f"scorer replica at capacity: {self.queued_rows} rows queued, the request has {rows}, "
                    f"the bound is {self.max_rows} (max_queued_rows); retry in {retry} s",
                    retry_after_s=retry,
                )
            self.queued_rows += rows
            self.admitted_rows += rows

    def release(self, rows: int) -> None:
        with self._lock:
            self.queued_rows = max(0, self.queued_rows - rows)

    def resize(self, max_rows: int) -> None:
        if max_rows <= 0:
            raise ValueError(f"max_queued_rows must be > 0, got {max_rows}")
        with self._lock:
            self.max_rows = int(max_rows)

    def batch_begin(self, rows: int) -> None:
        with self._lock:
            self._batch = (time.monotonic(), rows)

    def batch_end(self) -> None:
        with self._lock:
            now = time.monotonic()
            if self._batch is not None:
                self.batch_busy_s += now - self._batch[0]
            self._batch = None
            self.last_batch_end = now

    def observe(self, rows: int, seconds: float) -> None:
        """One forward chunk of `rows` rows took `seconds`."""
        with self._lock:
            self.latency.observe(seconds)
            self.rows_observed += rows
            self.busy_s += seconds
            if seconds > 0:
                rate = rows / seconds
                self._rate = rate if self._rate is None else 0.93 * self._rate + 0.07 * rate

    @property
    def rows_per_s(self) -> float | None:
        """Rows per busy second (the forward rate, EMA), None before the first chunk."""
        return self._rate

    def _drain_backlog(self) -> float:
        """The refused backlog now: what earlier refused requests still stand for, less what the rate served
        since (no rate measured yet: kept as it is)."""
        now = time.monotonic()
        if self._rate:
            self._backlog = max(0.0, self._backlog - self._rate * (now - self._backlog_t))
        else:
            self._backlog = 0.0  # Retry-After is 1 s until a rate is measured: no tickets to space out
        self._backlog_t = now
        return self._backlog

    def _retry_after(self, excess_rows: float) -> int:
        # How long until there is room for the request at the measured rate: the excess rows drained, and
        # no earlier than the end of the running batch (its rows are released together); at least 1 s.
        rate = self._rate
        if not rate:
            return 1
        wait = excess_rows / rate
        if self._batch is not None:
            start, rows = self._batch
            wait = max(wait, rows / rate - (time.monotonic() - start))
        return max(1, math.ceil(wait))

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "queued_rows": self.queued_rows,
                "max_queued_rows": self.max_rows,
                "admitted_rows": self.admitted_rows,
                "refused_rows": self.refused_rows,
                "refused_requests": self.refused_requests,
                "refused_backlog_rows": round(self._drain_backlog(), 1),  # as of now, not the last refusal
                "rows_per_s": round(self._rate, 4) if self._rate else None,
                "forward_busy_s": round(self.busy_s, 3),
                "batch_busy_s": round(self.batch_busy_s, 3),
                "uptime_s": round(time.monotonic() - self.started, 3),
                # when the last batch ended, on the uptime clock (None before the first)
                "last_batch_end_s": None
                if self.last_batch_end is None
                else round(self.last_batch_end - self.started, 3),
                "forward_latency": self.latency.to_dict(),
            }
