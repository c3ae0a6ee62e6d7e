"""`manage.py workers`: django-q2's qcluster (same options, same settings) that stops cleanly.

SIGTERM or SIGINT, to the main process alone or to the whole process group (what systemd, `docker stop`,
honcho and Ctrl-C send), stops the cluster within a few seconds: the running job stops at its next
step and goes back to the queue, its attempt not counted (imagesite.stopping, imagesite.jobs).

Why not the stock qcluster: its sentinel dies at once on SIGTERM (SIG_DFL). When the signal went to
the whole group, it dies while it sleeps in `stop_event.wait()`, and the main process's
`stop_event.set()` then waits forever for that sleeper to wake (multiprocessing's Condition.notify
counts its sleepers): the cluster hangs until SIGKILLed. And a signal to the main process alone lets
the sentinel wait for the running job to end (hours for a training run), and for a pusher blocked on
a full internal queue, without bound. Here:
- the main process only notes the signal; its loop sets stop_event (the sentinel is alive to see it)
  and, should the sentinel not end in time, kills what is left;
- the sentinel notes a signal too (a flag its guard loop sees) instead of dying, and its stop is
  bounded: the pusher gets 1.5 s, the workers get SIGTERM (stop at the next step), SIGUSR1 after
  SOFT_STOP_S (interrupt the job where it is), SIGKILL after HARD_STOP_S more: 4 s in all;
- each worker installs imagesite.stopping's handlers before it takes work, and once signaled ends
  after its current task (django-q2's recycling), so a worker signaled alone never loops on giving
  jobs back; the messages the pusher had queued for the workers go back to the broker for the next
  start (the job row is the queue: a message only wakes a worker, imagesite.queue).
"""
from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from multiprocessing import Event, Value, current_process
from queue import Empty, Full

from django.conf import settings
from django.core.management.base import CommandError
from django_q.cluster import Cluster, Sentinel, get_mp_context
from django_q.conf import Conf, logger, setproctitle
from django_q.management.commands.qcluster import Command as QClusterCommand
from django_q.signing import SignedPackage
from django_q.status import Stat
from django_q.worker import worker

from imagesite import stopping

PUSHER_STOP_S = 1.5  # the pusher's dequeue waits at most Q_CLUSTER["poll"] (ORM) or 1 s (Redis)
# From the stop's start: workers stop at their next step (a generation or training step takes well
# under this); then JobInterrupted where the job is (a model load); then SIGKILL. Within honcho's 5 s
# (`make run`) and docker stop's 10 s.
SOFT_STOP_S = 2.5
HARD_STOP_S = 1.5
MONITOR_STOP_S = 2.0
# The main process's limit on the sentinel's whole stop before it kills what is left.
CLUSTER_STOP_S = SOFT_STOP_S + HARD_STOP_S + MONITOR_STOP_S + 3


class Command(QClusterCommand):
    help = "Starts a django-q2 cluster (as qcluster) that stops cleanly on SIGTERM and Ctrl-C."

    def handle(self, *args, **options):
        settings.SECRET_KEY  # noqa: B018 - as qcluster: refuse to start without a signing key
        if options.get("cluster_name"):
            os.environ["Q_CLUSTER_NAME"] = options["cluster_name"]
        cluster = StoppableCluster()
        cluster.start()
        if options.get("run_once"):
            cluster.stop_requested = True
        cluster.run_until_stopped()
        if not cluster.stop_requested:  # a supervisor (systemd Restart=on-failure) starts it again
            raise CommandError(f"the cluster's sentinel exited on its own (code {cluster.sentinel.exitcode})")


class StoppableCluster(Cluster):
    """The main process: notes SIGTERM/SIGINT and stops the sentinel from its own loop."""

    stop_requested = False

    def sig_handler(self, signum, frame) -> None:
        # Only a flag: the stop itself waits on other processes, not a thing to do in a handler.
        self.stop_requested = True

    def start(self) -> int:
        if setproctitle:
            setproctitle.setproctitle(f"qcluster {current_process().name} {self.name}")
        self.stop_event, self.start_event = Event(), Event()
        self.sentinel = get_mp_context().Process(
            target=StoppableSentinel, name=f"Process-{uuid.uuid4().hex}",
            args=(self.stop_event, self.start_event, self.cluster_id, self.broker, self.timeout),
        )
        self.sentinel.start()
        logger.info("Q Cluster %s starting.", self.name)
        while not self.start_event.is_set() and not self.stop_requested:
            if not self.sentinel.is_alive():
                raise RuntimeError(f"Q Cluster {self.name} failed to start: sentinel exited with code {self.sentinel.exitcode}")
            time.sleep(0.1)
        return self.pid

    def run_until_stopped(self) -> None:
        while not self.stop_requested and self.sentinel.is_alive():
            time.sleep(0.2)
        if self.sentinel.is_alive():
            self.stop()

    def stop(self) -> bool:
        if not self.sentinel.is_alive():
            return False
        logger.info("Q Cluster %s stopping.", self.name)
        # In a thread: set() waits for the sentinel to wake from its wait, which a sentinel killed
        # meanwhile (SIGKILL) never does.
        threading.Thread(target=self.stop_event.set, daemon=True).start()
        self.sentinel.join(CLUSTER_STOP_S)
        if self.sentinel.is_alive():
            logger.error("Q Cluster %s did not stop in %s s: killing its processes.", self.name, CLUSTER_STOP_S)
            _kill_tree(self.sentinel.pid)
            self.sentinel.join(5)
        logger.info("Q Cluster %s has stopped.", self.name)
        return True


class StoppableSentinel(Sentinel):
    """The sentinel: a signal stops it like the main process's stop_event does, and its stop has a
    bound."""

    def __init__(self, stop_event, start_event, cluster_id, broker=None, timeout=None, start=True):
        self.signaled = False
        super().__init__(_StopSignal(stop_event, self), start_event, cluster_id, broker, timeout, start=False)
        # Not stop_event.set() in a handler: this process may be waiting on that very Condition.
        signal.signal(signal.SIGTERM, self._note_signal)
        signal.signal(signal.SIGINT, self._note_signal)
        if start:
            self.start()

    def _note_signal(self, signum, frame) -> None:
        self.signaled = True

    def spawn_worker(self) -> None:
        """As Sentinel.spawn_worker, with imagesite.stopping's handlers installed in the worker."""
        timer = Value("f", -1)
        process = get_mp_context().Process(
            target=_worker, args=(self.task_queue, self.result_queue, timer, self.timeout),
            name=f"Process-{uuid.uuid4().hex}",
        )
        process.daemon = Conf.DAEMONIZE_WORKERS
        process.timer = timer
        self.pool.append(process)
        process.start()

    def stop(self) -> None:
        started = time.monotonic()
        Stat(self).save()
        logger.info("%s stopping cluster processes", current_process().name)
        self.event_out.set()  # the pusher ends after its current dequeue
        _signal_each(self.pool, signal.SIGTERM)  # each worker's job stops at its next step
        handed_back, deadline = 0, started + PUSHER_STOP_S
        while self.pusher.is_alive() and time.monotonic() < deadline:
            handed_back += self._hand_back_queued()  # also makes room for a pusher blocked on a full queue
        if self.pusher.is_alive():
            self.pusher.kill()  # what it holds stays with the broker until django-q2's retry
        handed_back += self._hand_back_queued()
        if handed_back:
            logger.info("%s queued task(s) handed back to the broker", handed_back)
        self._stop_workers(started)
        self.result_queue.put("STOP")
        self.result_queue.close()
        if not _wait_for(lambda: not self.monitor.is_alive(), MONITOR_STOP_S):
            self.monitor.kill()
            self.result_queue.cancel_join_thread()
        Stat(self).save()

    def _hand_back_queued(self) -> int:
        """The tasks the pusher queued that no worker took: back to the broker (a new message, the
        old one acknowledged), so the next start runs them at once rather than after `retry`."""
        count = 0
        while True:
            try:
                task = self.task_queue.get(timeout=0.05)
            except Empty:
                return count
            ack_id = task.pop("ack_id", None)
            task.pop("cluster", None)  # both added by the pusher
            self.broker.enqueue(SignedPackage.dumps(task))
            if ack_id is not None:
                self.broker.acknowledge(ack_id)
            count += 1

    def _stop_workers(self, started: float) -> None:
        """A STOP for each live worker (after its job stops); SIGUSR1 and then SIGKILL to any still
        working when their time is up."""
        pills, hard_sent = 0, False
        while True:
            self.pool = [p for p in self.pool if p.is_alive()]
            if not self.pool:
                break
            elapsed = time.monotonic() - started
            if elapsed > SOFT_STOP_S + HARD_STOP_S:
                logger.error("killing %s worker(s) that did not stop", len(self.pool))
                _signal_each(self.pool, signal.SIGKILL)
                _wait_for(lambda: not any(p.is_alive() for p in self.pool), 2)
                self.task_queue.cancel_join_thread()  # no reader left for what is still queued
                break
            if elapsed > SOFT_STOP_S and not hard_sent:
                _signal_each(self.pool, stopping.HARD_STOP)
                hard_sent = True
            if pills < len(self.pool):
                try:
                    self.task_queue.put("STOP", timeout=0.1)
                    pills += 1
                except Full:  # workers still busy: they end after their task, without a STOP
                    time.sleep(0.1)
            else:
                time.sleep(0.1)
        self.task_queue.close()


class _StopSignal:
    """The sentinel's stop_event as its guard loop and status() read it: also set by a signal."""

    def __init__(self, event, sentinel: StoppableSentinel):
        self.event, self.sentinel = event, sentinel

    def is_set(self) -> bool:
        return self.sentinel.signaled or self.event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self.sentinel.signaled or self.event.wait(timeout) or self.sentinel.signaled

    def set(self) -> None:
        self.event.set()


def _worker(task_queue, result_queue, timer, timeout) -> None:
    def end_after_this_task() -> None:
        Conf.MAX_RSS = 1  # django-q2 recycles a worker over max_rss (KiB) once its task is done

    # timer 0: django-q2's guard found the task past its timeout and terminates this worker.
    stopping.install_worker_handlers(timed_out=lambda: timer.value == 0, on_stop=end_after_this_task)
    worker(task_queue, result_queue, timer, timeout)


def _signal_each(processes, signum: int) -> None:
    for process in processes:
        try:
            os.kill(process.pid, signum)
        except (ProcessLookupError, TypeError):
            pass


def _wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and its descendants."""
    import psutil

    try:
        root = psutil.Process(pid)
        for process in [*root.children(recursive=True), root]:
            process.kill()
    except psutil.NoSuchProcess:
        pass
