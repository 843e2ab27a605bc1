"""Admission in rows, its arithmetic, the rows-based autoscaling policy and the replica's counters."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from cora_ray.infer.admission import (
    LatencyHistogram,
    Overloaded,
    RowAdmission,
    derive_serving_limits,
)


def test_admission_is_bounded_in_rows_and_refuses_with_a_retry_after():
    a = RowAdmission(10)
    a.admit(6)
    a.admit(4)  # exactly full
    with pytest.raises(Overloaded, match=r"10 rows queued, the request has 1, the bound is 10") as exc:
        a.admit(1)
    assert exc.value.retry_after_s == 1  # no rate measured yet
    a.observe(rows=4, seconds=2.0)  # 2 rows/s
    with pytest.raises(Overloaded) as exc:
        a.admit(9)  # 9 rows over the bound at 2 rows/s
    assert exc.value.retry_after_s == math.ceil(9 / 2)
    a.release(6)
    a.admit(5)
    snap = a.snapshot()
    assert snap["queued_rows"] == 9 and snap["admitted_rows"] == 15
    assert snap["refused_rows"] == 10 and snap["refused_requests"] == 2
    assert snap["rows_per_s"] == pytest.approx(2.0) and snap["forward_latency"]["count"] == 1


def test_retry_after_waits_for_the_running_batch_to_release_its_rows():
    import time

    a = RowAdmission(10)
    a.observe(rows=2, seconds=1.0)  # 2 rows/s
    a.batch_begin(10)  # a 10-row batch: ~5 s, its rows released together at the end
    a.admit(10)
    with pytest.raises(Overloaded) as exc:
        a.admit(1)  # 1 row over the bound: 0.5 s of drain, but room comes when the batch ends
    assert exc.value.retry_after_s in (4, 5)
    time.sleep(0.01)
    a.batch_end()
    assert a.snapshot()["batch_busy_s"] > 0
    with pytest.raises(Overloaded) as exc:
        a.admit(1)  # no batch running: the drain estimate alone
    assert exc.value.retry_after_s == 1


def test_refused_requests_take_tickets_so_they_do_not_all_return_at_once(monkeypatch):
    from cora_ray.infer import admission

    now = [100.0]
    monkeypatch.setattr(admission, "time", SimpleNamespace(monotonic=lambda: now[0]))
    a = RowAdmission(10)
    a.observe(rows=4, seconds=2.0)  # 2 rows/s
    a.admit(10)  # full
    waits = []
    for _ in range(3):  # three clients refused at the same instant, 4 rows each
        with pytest.raises(Overloaded) as exc:
            a.admit(4)
        waits.append(exc.value.retry_after_s)
    # each waits for its own 4 excess rows plus the refused rows ahead of it, at 2 rows/s
    assert waits == [2, 4, 6]
    assert a.snapshot()["refused_backlog_rows"] == 10  # 12 refused rows, capped at one queue (max_rows)
    now[0] += 3.0  # 6 rows of backlog served since
    assert a.snapshot()["refused_backlog_rows"] == 4
    with pytest.raises(Overloaded) as exc:
        a.admit(4)
    assert exc.value.retry_after_s == math.ceil((4 + 4) / 2)
    now[0] += 60.0  # long after: the backlog is drained, the wait is the request's own excess again
    with pytest.raises(Overloaded) as exc:
        a.admit(4)
    assert exc.value.retry_after_s == 2


def test_a_request_larger_than_the_bound_is_refused_even_when_idle():
    with pytest.raises(Overloaded):
        RowAdmission(3).admit(4)


def test_overloaded_survives_pickling_across_the_ray_boundary():
    import pickle

    e = pickle.loads(pickle.dumps(Overloaded("full", retry_after_s=7)))
    assert isinstance(e, Overloaded) and e.retry_after_s == 7 and str(e) == "full"


def test_latency_histogram_buckets():
    h = LatencyHistogram(bounds=(0.1, 1.0))
    for s in (0.05, 0.1, 0.5, 3.0):
        h.observe(s)
    assert h.counts == [2, 1, 1] and h.count == 4 and h.to_dict()["sum_s"] == pytest.approx(3.65)


def test_serving_limits_follow_from_rate_and_latency_target():
    lim = derive_serving_limits(rows_per_s=10, latency_target_s=10, rows_per_forward=16)
    assert (lim.max_queued_rows, lim.max_items, lim.max_batch_rows) == (100, 50, 50)
    assert (lim.max_ongoing_requests, lim.request_timeout_s, lim.target_queued_rows) == (100, 20, 50)
    assert derive_serving_limits(2.5, 3, 8).max_queued_rows == 7  # floor
    assert derive_serving_limits(0.5, 2, 8).max_batch_rows == 1  # at least one row
    with pytest.raises(ValueError, match="less than one row"):
        derive_serving_limits(0.1, 1, 8)


def test_queued_rows_policy_scales_on_rows():
    from serve.autoscaling import QueuedRowsPolicy

    policy = QueuedRowsPolicy(target_queued_rows=50)

    def ctx(rows: dict, current: int = 2):
        return SimpleNamespace(
            aggregated_metrics={"queued_rows": rows} if rows is not None else {},
            current_num_replicas=current,
            target_num_replicas=current,
        )

    assert policy(ctx({"a": 100, "b": 100}))[0] == pytest.approx(4)  # 200 rows / 50 per replica
    assert policy(ctx({"a": 10, "b": 0}))[0] == pytest.approx(0.2)  # Serve clamps to min_replicas
    assert policy(ctx(None, current=3))[0] == 3  # no report yet: keep
    with pytest.raises(ValueError):
        QueuedRowsPolicy(0)
