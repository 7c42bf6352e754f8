"""Fair admission (app/admission.py): deficit round robin across keys in images, interactive
before jobs with aging, a per-key quota. Pure bookkeeping, driven with a fake clock."""

from __future__ import annotations

import random

import pytest

from app.admission import Admission, FairQueue
from app.jobs import QuotaExceeded


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def admitted_images(admissions: list[Admission]) -> list[str]:
    """One entry per image admitted: the ticket's item."""
    return [a.ticket.item for a in admissions for _ in range(a.count)]


def drain(queue: FairQueue, free: int, until: str) -> list[str]:
    """Pop ``free`` rows at a time until the item ``until`` has been admitted; everything admitted, in order."""
    order: list[str] = []
    for _ in range(10_000):
        order += admitted_images(queue.pop(free))
        if until in order:
            return order
    raise AssertionError(f"{until} was never admitted")


@pytest.mark.parametrize("quantum", [1, 4, 16])
@pytest.mark.parametrize("free", [1, 3, 8])
def test_a_big_backlog_delays_another_key_by_at_most_one_round(quantum: int, free: int) -> None:
    queue = FairQueue(quantum=quantum)
    for i in range(63):  # 1000 images from one key, in requests of up to 16
        queue.push("heavy", 16 if i < 62 else 8, item=f"heavy-{i}")
    assert queue.queued_images() == 1000
    queue.pop(free)  # the heavy key is already being served when the light one arrives
    queue.push("light", 1, item="light")
    order = drain(queue, free, "light")
    heavy_before = sum(1 for item in order[:order.index("light")] if item.startswith("heavy"))
    assert heavy_before <= quantum  # one round: the rest of the heavy key's current visit at most


def test_round_robin_shares_rows_by_images_not_requests() -> None:
    queue = FairQueue(quantum=2)
    for _ in range(20):
        queue.push("many-small", 1, item="a")
    for _ in range(2):
        queue.push("few-big", 10, item="b")
    order = admitted_images(queue.pop(20))
    assert order.count("a") == order.count("b") == 10  # equal images each, though a made 10x the requests


def test_partial_admission_covers_every_image_once() -> None:
    queue = FairQueue(quantum=3)
    tickets = [queue.push(key, n, item=(key, n)) for key, n in [("a", 5), ("b", 7), ("a", 2), ("c", 1)]]
    rng = random.Random(0)
    spans: dict[int, list[tuple[int, int]]] = {id(t): [] for t in tickets}
    while len(queue):
        for a in queue.pop(rng.randint(1, 4)):
            spans[id(a.ticket)].append((a.start, a.count))
    for ticket in tickets:
        covered = [i for start, count in spans[id(ticket)] for i in range(start, start + count)]
        assert covered == list(range(ticket.images))
    assert queue.queued_images() == 0 and queue.pop(8) == []


def test_pop_fills_free_rows_exactly_while_images_wait() -> None:
    queue = FairQueue(quantum=5)
    for key in "abc":
        queue.push(key, 9, item=key)
    for free in (0, 1, 2, 7, 100):
        before = queue.queued_images()
        assert sum(a.count for a in queue.pop(free)) == min(free, before)
    assert queue.queued_images() == 0 and len(queue) == 0


def test_interactive_before_jobs() -> None:
    clock = Clock()
    queue = FairQueue(quantum=4, job_aging_s=30, clock=clock)
    queue.push("a", 8, "job", item="job")
    queue.push("b", 2, "interactive", item="interactive")
    assert admitted_images(queue.pop(3)) == ["interactive", "interactive", "job"]
    assert queue.queued_images("job") == 7 and queue.queued_images("interactive") == 0


def test_an_aged_job_is_not_starved_by_interactive_traffic() -> None:
    clock = Clock()
    queue = FairQueue(quantum=2, job_aging_s=10, clock=clock)
    queue.push("a", 1, "job", item="job")
    admitted: list[str] = []
    for step in range(100):  # two fresh interactive images arrive for every free row
        queue.push("b", 2, "interactive", item=f"i{step}")
        admitted += admitted_images(queue.pop(1))
        clock.now += 1.0
        if "job" in admitted:
            break
    assert "job" in admitted
    assert 10 <= admitted.index("job") <= 14  # after aging, then within about one round of the lane


def test_quota_refuses_that_key_alone() -> None:
    queue = FairQueue(max_queued_per_key=10)
    queue.push("a", 6, item="a1")
    with pytest.raises(QuotaExceeded) as err:
        queue.push("a", 5, item="a2")
    assert err.value.limit == 10 and err.value.queued == 6
    assert "max_queued_images_per_key=10" in err.value.detail
    queue.push("b", 10, item="b1")  # another key is not affected
    queue.pop(4)  # admitted images no longer count against the quota
    assert queue.queued_for("a") < 6
    queue.push("a", 10 - queue.queued_for("a"), item="a3")


def test_remove_forgets_the_rest_of_a_ticket() -> None:
    queue = FairQueue(quantum=2)
    ticket = queue.push("a", 5, item="a")
    queue.push("b", 1, item="b")
    queue.pop(2)
    queue.remove(ticket)
    queue.remove(ticket)  # twice is harmless
    assert queue.queued_images() == 1 and queue.queued_for("a") == 0
    assert admitted_images(queue.pop(8)) == ["b"]
    assert len(queue) == 0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="quantum"):
        FairQueue(quantum=0)
    with pytest.raises(ValueError, match="images"):
        FairQueue().push("a", 0)
