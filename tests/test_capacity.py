"""The capacity model (bench/capacity.py): the engine's rules, checked on cases worked by hand.

Seeded and small: the whole file runs in about a second. Its agreement with the real server is
measured by bench/capacity_run.py (docs/scaling.md), not asserted here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.capacity import (
    EngineLimits,
    Simulation,
    StepCurve,
    Target,
    Workload,
    cold_start,
    job_lag_target,
    max_rate,
    open_loop,
    poisson_arrivals,
    replicas_needed,
    saturation_rate,
)

FLAT = StepCurve.from_medians({1: 1.0, 64: 1.0})  # one second an iteration, whatever the rows


def one_request(steps: int, n: int) -> Workload:
    return Workload(steps=((steps, 1.0),), images=((n, 1.0),))


def test_step_curve_interpolates_measured_points_and_their_spread() -> None:
    curve = StepCurve((1, 4, 8), ((1.0, 2.0, 3.0), (4.0,), (6.0,)))
    assert curve.seconds(1) == 2.0  # the median
    assert curve.seconds(1, u=0.0) == 1.0 and curve.seconds(1, u=1.0) == 3.0
    assert curve.seconds(4) == 4.0
    assert curve.seconds(2) == pytest.approx(2.0 + (4.0 - 2.0) / 3)  # linear in the batch size
    assert curve.seconds(6) == pytest.approx(5.0)
    assert curve.seconds(16) == pytest.approx(6.0 + 0.5 * 8)  # extrapolated from the last two
    with pytest.raises(ValueError):
        StepCurve((4, 1), ((1.0,), (1.0,)))
    with pytest.raises(ValueError):
        StepCurve((1,), ((0.0,),))


def test_an_idle_replica_serves_a_request_in_steps_times_the_step_time_plus_overhead() -> None:
    curve = StepCurve.from_medians({1: 0.01, 4: 0.02, 8: 0.03})
    workload = Workload(steps=((50, 1.0),), images=((4, 1.0),), overhead_s=0.1)
    result = Simulation(curve, workload, EngineLimits(), jitter=False).open_loop([0.0])
    assert result.latencies == [pytest.approx(50 * 0.02 + 0.1)]
    assert result.images == 4 and result.mean_batch == 4


def test_rows_are_admitted_fifo_into_free_slots_and_join_over_several_iterations() -> None:
    # max_batch 4: A (3 rows, 10 steps) at 0; B (3 rows) at 0.5 gets the one free row at the next
    # iteration (t=1) and its two others when A's rows leave (t=10), done at 20. Rows per
    # iteration: 3, then 4 (x9), 3 (B's first row's last step), then 2 (x9).
    sim = Simulation(FLAT, one_request(10, 3), EngineLimits(max_batch=4), jitter=False)
    result = sim.open_loop([0.0, 0.5])
    assert sorted(result.latencies) == [pytest.approx(10.0), pytest.approx(19.5)]
    assert result.mean_batch == pytest.approx((3 + 9 * 4 + 3 + 9 * 2) / 20)


def test_a_full_queue_refuses_and_a_passed_deadline_drops() -> None:
    full = Simulation(FLAT, one_request(10, 1), EngineLimits(max_batch=1, max_queue_images=1), jitter=False)
    result = full.open_loop([0.0, 0.1, 0.2])  # one running, one waiting, the third refused (429)
    assert (result.rejected, len(result.latencies)) == (1, 2)
    late = Simulation(FLAT, one_request(10, 1), EngineLimits(max_batch=1, request_timeout_s=15), jitter=False)
    result = late.open_loop([0.0, 0.1])  # the second would finish at 20 > 0.1 + 15
    assert (result.timed_out, result.latencies) == (1, [pytest.approx(10.0)])


def test_least_connections_spreads_requests_over_replicas() -> None:
    sim = Simulation(FLAT, one_request(10, 2), EngineLimits(), replicas=2, jitter=False)
    result = sim.open_loop([0.0, 0.0])
    assert result.latencies == [pytest.approx(10.0)] * 2  # each alone on its replica
    assert [r.iterations for r in sim.replicas] == [10, 10]


def test_closed_loop_throughput_is_clients_over_the_cycle_time() -> None:
    workload = Workload(steps=((20, 1.0),), images=((1, 1.0),), overhead_s=0.5)
    result = Simulation(FLAT, workload, EngineLimits(), jitter=False).closed_loop(clients=8, requests_each=5)
    assert result.images == 40 and len(result.latencies) == 40
    # Every client's cycle: 20 iterations of 1 s and 0.5 s until its next request arrives, which
    # then waits for the running iteration to end (under 1 s): the engine admits between calls.
    assert 40 / (5 * 22) <= result.images_per_s <= 40 / (5 * 20.5)
    assert 20.5 <= result.percentile(50) <= 21.5


def test_open_loop_obeys_littles_law_and_is_deterministic_per_seed() -> None:
    curve = StepCurve.from_medians({1: 0.01, 16: 0.02, 64: 0.05})
    workload = Workload(steps=((20, 0.5), (50, 0.5)), images=((1, 1.0),))
    limits = EngineLimits()
    a = open_loop(curve, workload, limits, 20.0, requests=3000, seed=3)
    b = open_loop(curve, workload, limits, 20.0, requests=3000, seed=3)
    c = open_loop(curve, workload, limits, 20.0, requests=3000, seed=4)
    assert a.latencies == b.latencies and a.latencies != c.latencies
    # L = lambda W: images held on average = arrival rate x mean time in the engine (one image each).
    assert a.mean_held_per_replica == pytest.approx(20.0 * float(np.mean(a.latencies)), rel=0.05)
    assert a.images_per_s == pytest.approx(20.0, rel=0.05)


def test_poisson_arrivals_have_the_rate_and_bursts_arrive_together() -> None:
    rng = np.random.default_rng(0)
    times = poisson_arrivals(10.0, 5000, rng)
    assert len(times) / times[-1] == pytest.approx(10.0, rel=0.05)
    bursts = poisson_arrivals(10.0, 4000, np.random.default_rng(0), burst=8)
    assert len(set(bursts)) == 500 and len(bursts) / bursts[-1] == pytest.approx(10.0, rel=0.1)
    with pytest.raises(ValueError):
        poisson_arrivals(0.0, 10, rng)


def test_planning_more_load_or_a_tighter_target_needs_more_replicas() -> None:
    curve = StepCurve.from_medians({1: 0.01, 16: 0.02, 64: 0.05})
    workload = Workload(steps=((20, 0.7), (50, 0.3)), images=((1, 0.8), (4, 0.2)))
    limits = EngineLimits()
    sat = saturation_rate(curve, workload, limits)
    assert sat == pytest.approx(1 / (29 * 0.05 / 64 * 1.6))
    loose = max_rate(curve, workload, limits, Target(p99_s=3.0), requests=600)
    tight = max_rate(curve, workload, limits, Target(p99_s=1.0), requests=600)
    assert 0 < tight < loose <= sat
    one = replicas_needed(curve, workload, limits, Target(p99_s=1.0), 2 * tight, requests=600)
    four = replicas_needed(curve, workload, limits, Target(p99_s=1.0), 8 * tight, requests=600)
    assert one >= math.ceil(2 * tight / sat) and four > one
    with pytest.raises(ValueError):
        replicas_needed(curve, workload, limits, Target(p99_s=0.001), sat, requests=200, most=3)


def test_job_lag_target_and_cold_start() -> None:
    # Full batch of 64 at 1 s per iteration, 100-step jobs of 16 images: 0.04 jobs/s per replica.
    jobs = one_request(100, 16)
    assert job_lag_target(FLAT, jobs, EngineLimits(max_batch=64), wait_s=600) == 24
    result = cold_start(StepCurve.from_medians({1: 0.01, 64: 0.05}), one_request(20, 1), EngineLimits(), 2.0,
                        cold_start_s=30.0, window_s=20, seed=1)
    # Everything that arrived in the first 20 s waited for the replica: at least 10 s, at most 30.
    assert min(result.latencies) >= 10.0 and max(result.latencies) <= 31.0 and result.rejected == 0
