"""The capacity model: a discrete-event simulation of the engine, for replicas behind a balancer.

What it models is what app/engine.py does, one replica per engine:

- a request of ``n`` images and ``s`` steps is ``n`` rows; a request larger than the free rows
  plus the queue room is refused (429), as ``Engine.submit`` does;
- every iteration admits waiting rows FIFO into free slots, up to ``max_batch`` (a request's rows
  may join over several iterations), then runs ONE network call over all rows, each row one step;
- an iteration takes the measured seconds of one engine iteration at that many rows (``StepCurve``:
  the machine's own numbers, with their spread, never a formula);
- a request finishes when its last row has done its steps; a request whose deadline passes is
  dropped (504); the client sees it ``overhead_s`` of front-end work later (HTTP, PNG encoding:
  measured). That work is serial: one event-loop thread per replica does it for every request,
  so responses finishing together leave one after another.

Requests reach the replicas through a least-connections balancer (nginx's ``least_conn``), either
from open-loop arrivals (Poisson, or Poisson bursts) or from closed-loop clients (as bench.server
drives the server). bench/capacity_run.py measures the curve and checks the model against the
real server; docs/scaling.md uses it. Deterministic for a given seed.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class StepCurve:
    """Seconds of one engine iteration at ``batches[i]`` rows: ``samples[i]``, as measured."""

    batches: tuple[int, ...]
    samples: tuple[tuple[float, ...], ...]
    source: str = ""

    def __post_init__(self) -> None:
        if not self.batches or len(self.batches) != len(self.samples) or list(self.batches) != sorted(self.batches):
            raise ValueError("StepCurve needs ascending batch sizes, each with its samples")
        if any(not s or min(s) <= 0 for s in self.samples):
            raise ValueError("every batch size needs positive samples")

    def samples_by_batch(self) -> dict[int, list[float]]:
        return {b: list(s) for b, s in zip(self.batches, self.samples, strict=True)}

    @classmethod
    def from_medians(cls, points: dict[int, float], source: str = "") -> StepCurve:
        b = sorted(points)
        return cls(tuple(b), tuple((points[k],) for k in b), source)

    def _quantile(self, i: int, u: float) -> float:
        s = sorted(self.samples[i])
        pos = u * (len(s) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(s) - 1)
        return s[lo] + (pos - lo) * (s[hi] - s[lo])

    def seconds(self, rows: int, u: float = 0.5) -> float:
        """The ``u`` quantile of the iteration time at ``rows``, interpolated linearly in the batch
        size between measured sizes (and extrapolated from the last two beyond the largest)."""
        b = self.batches
        if len(b) == 1:  # one measured size: proportional beyond it
            return self._quantile(0, u) * max(1.0, rows / b[0])
        if rows <= b[0]:
            return self._quantile(0, u)
        if rows >= b[-1]:
            last, prev = self._quantile(len(b) - 1, u), self._quantile(len(b) - 2, u)
            return last + (last - prev) / (b[-1] - b[-2]) * (rows - b[-1])
        i = int(np.searchsorted(b, rows, side="right")) - 1
        w = (rows - b[i]) / (b[i + 1] - b[i])
        return (1 - w) * self._quantile(i, u) + w * self._quantile(i + 1, u)


@dataclass(frozen=True)
class Workload:
    """What requests ask for: (value, weight) mixes of steps and of images per request."""

    steps: tuple[tuple[int, float], ...] = ((50, 1.0),)
    images: tuple[tuple[int, float], ...] = ((1, 1.0),)
    overhead_s: float = 0.0  # per request, outside the engine (HTTP, PNG encoding)

    def draw(self, rng: np.random.Generator) -> tuple[int, int]:
        def pick(mix: tuple[tuple[int, float], ...]) -> int:
            u = float(rng.random()) * sum(w for _, w in mix)
            for value, weight in mix:
                u -= weight
                if u < 0:
                    return value
            return mix[-1][0]
        return pick(self.steps), pick(self.images)

    @property
    def mean_images(self) -> float:
        return sum(v * w for v, w in self.images) / sum(w for _, w in self.images)

    @property
    def mean_row_steps(self) -> float:
        return sum(v * w for v, w in self.steps) / sum(w for _, w in self.steps)


@dataclass(frozen=True)
class EngineLimits:
    """The settings that shape the engine's queueing (app/settings.py)."""

    max_batch: int = 64
    max_queue_images: int = 256
    request_timeout_s: float = 300.0


@dataclass(eq=False)
class _Request:
    arrival: float
    steps: int
    n: int
    client: int = -1
    admitted: int = 0
    done: int = 0
    over: bool = False  # finished, dropped or refused


@dataclass(eq=False)
class _Replica:
    available_at: float = 0.0
    pending: deque[_Request] = field(default_factory=deque)
    rows: list[list] = field(default_factory=list)  # [steps left, request]
    by_arrival: list[tuple[float, int, _Request]] = field(default_factory=list)  # heap, for deadlines
    busy: bool = False
    in_flight: int = 0  # requests, as the balancer counts connections
    held: int = 0  # queued + active images: what the autoscaler's query sums
    held_area: float = 0.0
    held_since: float = 0.0
    frontend_free_at: float = 0.0  # the event loop's turn: responses leave one at a time
    iterations: int = 0
    rows_run: int = 0

    def hold(self, now: float, delta: int) -> None:
        self.held_area += self.held * (now - self.held_since)
        self.held_since = now
        self.held += delta

    @property
    def queued_images(self) -> int:
        return sum(r.n - r.admitted for r in self.pending)


@dataclass
class SimResult:
    latencies: list[float]
    images: int
    elapsed: float  # from the first arrival to the last completion
    rejected: int
    timed_out: int
    mean_held_per_replica: float
    mean_batch: float

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else math.inf

    @property
    def images_per_s(self) -> float:
        return self.images / self.elapsed if self.elapsed > 0 else 0.0

    def summary(self) -> dict[str, float]:
        return {"images_per_s": self.images_per_s, "p50": self.percentile(50), "p90": self.percentile(90),
                "p99": self.percentile(99), "rejected": self.rejected, "timed_out": self.timed_out,
                "mean_held_per_replica": self.mean_held_per_replica, "mean_batch": self.mean_batch}


def poisson_arrivals(rate: float, count: int, rng: np.random.Generator, burst: int = 1) -> list[float]:
    """Arrival times of ``count`` requests at ``rate`` per second on average: Poisson, or Poisson
    bursts of ``burst`` requests arriving together (at rate / burst bursts per second)."""
    if rate <= 0 or count <= 0:
        raise ValueError("rate and count must be positive")
    gaps = rng.exponential(burst / rate, size=math.ceil(count / burst))
    return [float(t) for t in np.repeat(np.cumsum(gaps), burst)[:count]]


class Simulation:
    """``replicas`` engines behind least-connections; run with open or closed-loop arrivals."""

    def __init__(self, curve: StepCurve, workload: Workload, limits: EngineLimits, *, replicas: int = 1,
                 seed: int = 0, jitter: bool = True, cold_start_s: float = 0.0) -> None:
        if replicas < 1:
            raise ValueError("replicas must be at least 1")
        self.curve, self.workload, self.limits = curve, workload, limits
        self.rng = np.random.default_rng(seed)
        self.jitter = jitter  # draw each iteration's time from the measured spread, else the median
        self.replicas = [_Replica(available_at=cold_start_s, held_since=0.0) for _ in range(replicas)]
        self._events: list[tuple[float, int, str, object]] = []
        self._seq = 0
        self._rr = 0
        self.latencies: list[float] = []
        self.images = self.rejected = self.timed_out = 0
        self.first = math.inf
        self.last = 0.0
        self._closed_left: list[int] = []

    def _push(self, t: float, kind: str, payload: object) -> None:
        self._seq += 1
        heapq.heappush(self._events, (t, self._seq, kind, payload))

    def _route(self) -> _Replica:
        """Fewest requests in flight; ties in turn (nginx's least_conn with round-robin ties)."""
        least = min(r.in_flight for r in self.replicas)
        k = len(self.replicas)
        for j in range(k):
            r = self.replicas[(self._rr + j) % k]
            if r.in_flight == least:
                self._rr = (self._rr + j + 1) % k
                return r
        raise AssertionError("unreachable")

    def _arrive(self, now: float, req: _Request) -> None:
        self.first = min(self.first, now)
        rep = self._route()
        free = self.limits.max_batch - len(rep.rows)
        if rep.queued_images + req.n > self.limits.max_queue_images + free:
            self.rejected += 1  # 429; a closed-loop client tries again after the overhead
            self._finish_client(self._respond(rep, now), req)
            return
        rep.pending.append(req)
        heapq.heappush(rep.by_arrival, (req.arrival, id(req), req))
        rep.in_flight += 1
        rep.hold(now, req.n)
        if not rep.busy:
            self._start(rep, max(now, rep.available_at))

    def _start(self, rep: _Replica, now: float) -> None:
        heap, late = rep.by_arrival, set()
        while heap and (heap[0][2].over or now - heap[0][0] > self.limits.request_timeout_s):
            _, _, req = heapq.heappop(heap)
            if not req.over:
                late.add(id(req))
                self._drop(rep, now, req, req.n - req.done)
        if late:  # the engine's _reap: a request past its deadline frees its rows (504)
            rep.pending = deque(r for r in rep.pending if id(r) not in late)
            rep.rows = [row for row in rep.rows if id(row[1]) not in late]
        while rep.pending and len(rep.rows) < self.limits.max_batch:
            req = rep.pending[0]
            take = min(self.limits.max_batch - len(rep.rows), req.n - req.admitted)
            rep.rows.extend([req.steps, req] for _ in range(take))
            req.admitted += take
            if req.admitted == req.n:
                rep.pending.popleft()
        if not rep.rows:
            rep.busy = False
            return
        rep.busy = True
        u = float(self.rng.random()) if self.jitter else 0.5
        rep.iterations += 1
        rep.rows_run += len(rep.rows)
        self._push(now + self.curve.seconds(len(rep.rows), u), "step", rep)

    def _drop(self, rep: _Replica, now: float, req: _Request, images_held: int) -> None:
        req.over = True
        self.timed_out += 1
        rep.in_flight -= 1
        rep.hold(now, -images_held)
        self._finish_client(self._respond(rep, now), req)

    def _respond(self, rep: _Replica, now: float) -> float:
        """When a response finished by the engine at ``now`` reaches its client."""
        rep.frontend_free_at = max(now, rep.frontend_free_at) + self.workload.overhead_s
        return rep.frontend_free_at

    def _step(self, now: float, rep: _Replica) -> None:
        still: list[list] = []
        for row in rep.rows:
            row[0] -= 1
            if row[0] > 0:
                still.append(row)
                continue
            req: _Request = row[1]
            req.done += 1
            rep.hold(now, -1)
            if req.done == req.n:
                req.over = True
                rep.in_flight -= 1
                self.images += req.n
                done = self._respond(rep, now)
                self.latencies.append(done - req.arrival)
                self.last = max(self.last, done)
                self._finish_client(done, req)
        rep.rows = still
        self._start(rep, now)

    def _finish_client(self, t: float, req: _Request) -> None:
        if req.client >= 0 and self._closed_left[req.client] > 0:
            self._closed_left[req.client] -= 1
            self._push(t, "arrive", self._new_request(t, req.client))

    def _new_request(self, t: float, client: int = -1) -> _Request:
        steps, n = self.workload.draw(self.rng)
        return _Request(arrival=t, steps=steps, n=n, client=client)

    def _run(self) -> SimResult:
        while self._events:
            t, _, kind, payload = heapq.heappop(self._events)
            if kind == "arrive":
                self._arrive(t, payload)  # type: ignore[arg-type]
            else:
                self._step(t, payload)  # type: ignore[arg-type]
        for rep in self.replicas:
            rep.hold(self.last, 0)
        span = max(self.last - min(self.first, self.last), 1e-9)
        rows = sum(r.rows_run for r in self.replicas)
        iterations = sum(r.iterations for r in self.replicas)
        return SimResult(self.latencies, self.images, span, self.rejected, self.timed_out,
                         sum(r.held_area for r in self.replicas) / span / len(self.replicas),
                         rows / iterations if iterations else 0.0)

    def open_loop(self, arrivals: list[float]) -> SimResult:
        for t in arrivals:
            self._push(t, "arrive", self._new_request(t))
        return self._run()

    def closed_loop(self, clients: int, requests_each: int) -> SimResult:
        """``clients`` clients each send ``requests_each`` requests back to back (as bench.server)."""
        self._closed_left = [requests_each - 1] * clients
        for c in range(clients):
            self._push(0.0, "arrive", self._new_request(0.0, c))
        return self._run()


# ---- using the model: replicas for a load, the autoscaling targets, a cold start ----

@dataclass(frozen=True)
class Target:
    """A service level: ``p99_s`` of request latency, with at most ``max_rejected`` refused."""

    p99_s: float
    max_rejected: float = 0.001


def open_loop(curve: StepCurve, workload: Workload, limits: EngineLimits, rate: float, *, replicas: int = 1,
              requests: int = 2000, seed: int = 0, burst: int = 1, jitter: bool = True) -> SimResult:
    """Poisson (or bursty) arrivals at ``rate`` requests/s over ``replicas`` replicas."""
    sim = Simulation(curve, workload, limits, replicas=replicas, seed=seed, jitter=jitter)
    return sim.open_loop(poisson_arrivals(rate, requests, np.random.default_rng(seed + 1), burst))


def meets(result: SimResult, target: Target) -> bool:
    total = len(result.latencies) + result.rejected + result.timed_out
    refused = (result.rejected + result.timed_out) / max(total, 1)
    return result.percentile(99) <= target.p99_s and refused <= target.max_rejected


def saturation_rate(curve: StepCurve, workload: Workload, limits: EngineLimits) -> float:
    """Requests/s one replica completes with every row busy: the ceiling of any arrival rate."""
    per_image = workload.mean_row_steps * curve.seconds(limits.max_batch) / limits.max_batch
    return 1.0 / (per_image * workload.mean_images)


def max_rate(curve: StepCurve, workload: Workload, limits: EngineLimits, target: Target, *, replicas: int = 1,
             requests: int = 2000, seed: int = 0, burst: int = 1, iterations: int = 9) -> float:
    """The largest Poisson arrival rate (requests/s) at which ``replicas`` meet ``target`` (bisection)."""
    lo, hi = 0.0, saturation_rate(curve, workload, limits) * replicas
    for _ in range(iterations):
        mid = (lo + hi) / 2
        ok = meets(open_loop(curve, workload, limits, mid, replicas=replicas, requests=requests, seed=seed,
                             burst=burst), target)
        lo, hi = (mid, hi) if ok else (lo, mid)
    return lo


def replicas_needed(curve: StepCurve, workload: Workload, limits: EngineLimits, target: Target, rate: float, *,
                    requests: int = 2000, seed: int = 0, burst: int = 1, most: int = 256) -> int:
    """The fewest replicas that hold ``rate`` requests/s at ``target``."""
    n = max(1, math.ceil(rate / saturation_rate(curve, workload, limits)))
    while n <= most:
        if meets(open_loop(curve, workload, limits, rate, replicas=n, requests=requests, seed=seed, burst=burst),
                 target):
            return n
        n += 1
    raise ValueError(f"more than {most} replicas: the target cannot be met at this rate")


def images_held_target(curve: StepCurve, workload: Workload, limits: EngineLimits, target: Target, *,
                       requests: int = 2000, seed: int = 0) -> int:
    """The autoscaler's threshold: the mean images (queued + active) one replica holds at the largest
    rate at which it meets ``target``. KEDA and the HPA keep ceil(total held / threshold) replicas,
    so each replica is held at or below the load it can serve at the target."""
    rate = max_rate(curve, workload, limits, target, requests=requests, seed=seed)
    held = open_loop(curve, workload, limits, rate, requests=requests, seed=seed).mean_held_per_replica
    return max(1, math.floor(held))


def job_lag_target(curve: StepCurve, jobs: Workload, limits: EngineLimits, wait_s: float) -> int:
    """The Redis trigger's lagCount: jobs one replica finishes within ``wait_s`` at full batch, so
    that ceil(backlog / lagCount) replicas clear any backlog in about ``wait_s``."""
    return max(1, math.floor(saturation_rate(curve, jobs, limits) * wait_s))


def cold_start(curve: StepCurve, workload: Workload, limits: EngineLimits, rate: float, cold_start_s: float, *,
               window_s: float = 60.0, seed: int = 0) -> SimResult:
    """Scaling from zero: one replica that serves only after ``cold_start_s`` (load, warm-up,
    compile), with requests arriving at ``rate`` from time 0 for ``window_s``."""
    sim = Simulation(curve, workload, limits, seed=seed, cold_start_s=cold_start_s)
    count = max(1, round(rate * window_s))
    return sim.open_loop(poisson_arrivals(rate, count, np.random.default_rng(seed + 1)))
