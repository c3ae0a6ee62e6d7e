"""The job row is the queue (imagesite.queue): fair order across users, an atomic claim, a queued job's place.

Rows only: no worker and no model here (the worker-level fairness test runs a real cluster)."""
from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.utils import timezone

from generation.models import Generation
from imagesite.jobs import JobStatus
from imagesite.queue import claim_next, fair_order, place_in_queue

from .factories import make_generation

pytestmark = pytest.mark.django_db


def _users(*names):
    return [get_user_model().objects.create_user(name, password="pw-long-enough") for name in names]


def _queue(owner, count: int, start, step_s: float = 1.0) -> list[Generation]:
    return [make_generation(owner, created_at=start + timedelta(seconds=i * step_s)) for i in range(count)]


def test_a_heavy_user_does_not_hold_up_the_others():
    """Three users, one with 20 queued and already being served: the other two's jobs go next."""
    heavy, light1, light2 = _users("heavy", "light1", "light2")
    now = timezone.now()
    heavy_jobs = _queue(heavy, 20, now - timedelta(minutes=10))
    assert claim_next(Generation).pk == heavy_jobs[0].pk  # the only user: FIFO
    light_jobs = [_queue(light1, 1, now)[0], _queue(light2, 1, now + timedelta(seconds=1))[0]]
    taken = [claim_next(Generation).pk for _ in range(3)]
    assert taken[:2] == [job.pk for job in light_jobs]
    assert taken[2] == heavy_jobs[1].pk


def test_round_robin_among_users_fifo_within_each():
    alice, bob, carol = _users("alice", "bob", "carol")
    now = timezone.now()
    a = _queue(alice, 3, now)
    b = _queue(bob, 2, now + timedelta(seconds=10))
    c = _queue(carol, 1, now + timedelta(seconds=20))
    expected = [a[0], b[0], c[0], a[1], b[1], a[2]]
    assert fair_order(Generation) == [job.pk for job in expected]
    assert [claim_next(Generation).pk for _ in expected] == [job.pk for job in expected]
    assert claim_next(Generation) is None
    claimed = Generation.objects.get(pk=a[0].pk)
    assert claimed.status == JobStatus.RUNNING and claimed.attempts == 1 and claimed.started_at is not None


def test_the_least_recently_served_user_goes_first():
    alice, bob = _users("alice", "bob")
    now = timezone.now()
    make_generation(alice, status=JobStatus.SUCCEEDED, started_at=now - timedelta(minutes=1))
    make_generation(bob, status=JobStatus.SUCCEEDED, started_at=now - timedelta(minutes=5))
    a = _queue(alice, 1, now - timedelta(minutes=3))[0]  # alice queued first, but was served last
    b = _queue(bob, 1, now)[0]
    assert fair_order(Generation) == [b.pk, a.pk]


def test_canceled_and_running_jobs_are_not_taken():
    (alice,) = _users("alice")
    canceled = make_generation(alice, status=JobStatus.CANCELED)
    running = make_generation(alice, status=JobStatus.RUNNING)
    assert claim_next(Generation) is None
    assert {job.status for job in Generation.objects.filter(pk__in=[canceled.pk, running.pk])} == {JobStatus.CANCELED, JobStatus.RUNNING}


def test_place_in_queue_counts_who_is_ahead_and_estimates_from_recent_jobs():
    alice, bob = _users("alice", "bob")
    now = timezone.now()
    a = _queue(alice, 3, now)
    b = _queue(bob, 1, now + timedelta(seconds=5))[0]
    place = place_in_queue(b)
    assert place.ahead == 1 and place.eta_s is None  # nothing finished yet: no estimate
    assert place.words() == "1 ahead of you"
    make_generation(bob, status=JobStatus.SUCCEEDED, started_at=now - timedelta(seconds=60), finished_at=now - timedelta(seconds=50))
    # bob was served (a minute ago), alice never: all of alice's first job goes before bob's.
    place = place_in_queue(b)
    assert place.ahead == 1
    assert place.eta_s == pytest.approx(10.0)  # one job ahead at the 10 s average, no job running
    assert place.words() == "1 ahead of you, about 10 s"
    assert place_in_queue(Generation.objects.get(pk=a[0].pk)).words().startswith("next in line")
    claim_next(Generation)
    assert place_in_queue(Generation.objects.get(pk=a[0].pk)) is None  # running: not in the queue


@pytest.mark.django_db(transaction=True)
def test_workers_claiming_at_once_take_each_job_exactly_once():
    """Eight workers (threads, each with its own database connection) race for five queued jobs."""
    alice, bob = _users("alice", "bob")
    jobs = _queue(alice, 3, timezone.now()) + _queue(bob, 2, timezone.now())
    taken: list[int] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        try:
            barrier.wait()
            while (job := claim_next(Generation)) is not None:
                taken.append(job.pk)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(taken) == sorted(job.pk for job in jobs)
    assert set(Generation.objects.values_list("attempts", flat=True)) == {1}


def test_the_reaper_wakes_workers_for_jobs_nobody_works_on():
    """Queued over a minute with nothing of its kind running: its message was lost (or is held by a
    killed cluster), so a wake-up goes out; a fresh job or a busy worker needs none."""
    from django_q.models import OrmQ

    from imagesite.queue import wake_idle_queues

    (alice,) = _users("alice")
    fresh = make_generation(alice)
    assert wake_idle_queues([Generation]) == {}
    stuck = make_generation(alice, created_at=timezone.now() - timedelta(minutes=5))
    before = OrmQ.objects.count()
    assert wake_idle_queues([Generation]) == {"generation.Generation": 1}
    assert OrmQ.objects.count() == before + 1
    running = make_generation(alice, status=JobStatus.RUNNING)
    assert wake_idle_queues([Generation]) == {}
    running.delete()
    # The wake-up runs whatever is next in fair order: the stuck job first, then the fresh one.
    assert [claim_next(Generation).pk for _ in range(2)] == [stuck.pk, fresh.pk]


def test_a_failed_job_is_retried_afresh_within_the_owners_cap():
    from imagesite.quotas import QuotaExceeded
    from imagesite.queue import retry_job

    from .concurrency_support import set_limits

    (alice,) = _users("alice")
    failed = make_generation(alice, status=JobStatus.FAILED, error="Out of GPU memory", attempts=2,
                             started_at=timezone.now(), finished_at=timezone.now())
    assert retry_job(failed)
    failed.refresh_from_db()
    assert (failed.status, failed.error, failed.attempts, failed.finished_at) == (JobStatus.QUEUED, "", 0, None)
    assert not retry_job(failed)  # queued now: nothing to retry
    assert claim_next(Generation).pk == failed.pk
    set_limits(alice, max_queued_jobs=1)
    canceled = make_generation(alice, status=JobStatus.CANCELED)
    with pytest.raises(QuotaExceeded):
        retry_job(canceled)  # the first one still runs: the cap of 1 is full
    assert retry_job(canceled, check_quota=False)  # staff may


def _same_settings(job):
    return None if job.width != 64 else (job.steps, job.width)


def test_a_batch_takes_compatible_jobs_that_are_next_anyway():
    from imagesite.queue import claim_batch

    alice, bob, carol = _users("alice", "bob", "carol")
    now = timezone.now()
    a = _queue(alice, 3, now)
    b = _queue(bob, 1, now + timedelta(seconds=10))
    odd = make_generation(carol, created_at=now + timedelta(seconds=20), steps=9)  # other settings
    lone = make_generation(carol, created_at=now + timedelta(seconds=30), width=128)  # never batched
    batch = claim_batch(Generation, _same_settings, max_jobs=4)
    # Fair order: a0 b0 odd a1 lone a2. a0 and b0 are next anyway; odd breaks the run, so alice's
    # later jobs wait their turn behind carol's.
    assert [job.pk for job in batch] == [a[0].pk, b[0].pk]
    assert {job.status for job in Generation.objects.filter(pk__in=[a[0].pk, b[0].pk])} == {JobStatus.RUNNING}
    assert [job.pk for job in claim_batch(Generation, _same_settings, max_jobs=4)] == [odd.pk]
    # Then a1 lone a2: lone breaks the run again, and a2 is not its owner's next job.
    assert [job.pk for job in claim_batch(Generation, _same_settings, max_jobs=4)] == [a[1].pk]
    assert [job.pk for job in claim_batch(Generation, _same_settings, max_jobs=4)] == [lone.pk]
    assert [job.pk for job in claim_batch(Generation, _same_settings, max_jobs=4)] == [a[2].pk]
    assert claim_batch(Generation, _same_settings, max_jobs=4) == []


def test_a_batch_takes_each_users_next_job_and_keeps_to_its_limits():
    from imagesite.queue import claim_batch

    heavy, light = _users("heavy", "light")
    now = timezone.now()
    heavy_jobs = _queue(heavy, 6, now)
    make_generation(heavy, created_at=now + timedelta(seconds=100), steps=9)
    light_job = make_generation(light, created_at=now + timedelta(seconds=200), num_images=3)
    # light's only job is its owner's next: it joins although heavy's jobs come first in line.
    batch = claim_batch(Generation, _same_settings, max_jobs=3, size=lambda job: job.num_images, max_size=5)
    assert [job.pk for job in batch] == [heavy_jobs[0].pk, light_job.pk, heavy_jobs[1].pk]
    batch = claim_batch(Generation, _same_settings, max_jobs=8, size=lambda job: job.num_images, max_size=2)
    assert [job.pk for job in batch] == [heavy_jobs[2].pk, heavy_jobs[3].pk]


def test_staff_priority_goes_first_and_a_paused_queue_hands_out_nothing():
    from imagesite.models import QueueControl
    from imagesite.queue import queue_paused

    from .concurrency_support import set_limits

    alice, bob = _users("alice", "bob")
    now = timezone.now()
    a = _queue(alice, 2, now)
    b = _queue(bob, 2, now + timedelta(seconds=5))
    set_limits(bob, priority=5)
    assert fair_order(Generation) == [b[0].pk, b[1].pk, a[0].pk, a[1].pk]  # bob's whole queue first
    QueueControl.objects.update_or_create(pk=1, defaults={"paused": True, "reason": "Driver update, back at noon."})
    assert queue_paused() == "Driver update, back at noon."
    assert claim_next(Generation) is None
    QueueControl.objects.filter(pk=1).update(paused=False)
    assert claim_next(Generation).pk == b[0].pk


def test_a_job_records_the_seconds_it_ran_and_a_batch_shares_them():
    from imagesite.runner import counting_gpu_seconds

    (alice,) = _users("alice")
    jobs = _queue(alice, 2, timezone.now())
    with counting_gpu_seconds(jobs):
        import time

        time.sleep(0.2)
    shares = sorted(Generation.objects.values_list("gpu_seconds", flat=True))
    assert shares[0] == pytest.approx(shares[1]) and 0.09 <= shares[0] < 0.5  # 0.2 s shared by two jobs
