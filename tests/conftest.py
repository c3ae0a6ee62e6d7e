"""Shared fixtures: the base set of users, private media in a temp folder, and real qcluster workers."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import connection

from .services import stop_process

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct-horse-battery-staple"


def pytest_configure(config) -> None:
    (ROOT / "build").mkdir(exist_ok=True)  # the SQLite test database lives there


def pytest_unconfigure(config) -> None:
    # pytest-django drops the test database file but not SQLite's WAL companions.
    for leftover in (ROOT / "build").glob(f"test-db-{os.getpid()}.sqlite3-*"):
        leftover.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """`tiny_model("sdxl")`: the path of a tiny random diffusers model of that family ("sd1", "sd2",
    "sd2v", "sdxl"), built once per session (tests/tiny_models.py). Random weights: mechanics only."""
    from .tiny_models import build_tiny_model

    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = build_tiny_model(family, tmp_path_factory.mktemp(f"tiny-{family}"))
        return built[family]

    return get


@pytest.fixture(autouse=True)
def _private_media(settings, media_dir):
    settings.MEDIA_ROOT = media_dir


@pytest.fixture
def owner(django_user_model):
    return django_user_model.objects.create_user("owner", password=PASSWORD)


@pytest.fixture
def other_user(django_user_model):
    return django_user_model.objects.create_user("other", password=PASSWORD)


@pytest.fixture
def owner_client(client, owner):
    client.force_login(owner)
    return client


@pytest.fixture
def other_client(other_user):
    from django.test import Client

    c = Client()
    c.force_login(other_user)
    return c


class Worker:
    """A real `manage.py qcluster` in its own process group, on the test database."""

    def __init__(self, env: dict[str, str], log_path: Path):
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "workers"],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "running" in self.output():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"qcluster exited early:\n{self.output()}")
            time.sleep(0.1)
        raise RuntimeError(f"qcluster did not start in {timeout} s:\n{self.output()}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL the whole cluster (sentinel, pusher, monitor, workers): a power cut."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.log.close()

    def stop(self) -> None:
        stop_process(self.proc, grace=3, group=True)
        self.log.close()


@pytest.fixture(scope="session")
def worker_env(django_db_setup, django_db_blocker, media_dir, tmp_path_factory) -> dict[str, str]:
    with django_db_blocker.unblock():
        db_name = connection.settings_dict["NAME"]
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="imagesite.settings",
        IMAGESITE_SQLITE_PATH=str(db_name),
        IMAGESITE_MEDIA_ROOT=str(media_dir),
        PYTHONUNBUFFERED="1",
    )
    if "sqlite" in connection.settings_dict["ENGINE"]:
        env.pop("DATABASE_URL", None)
    else:
        env["DATABASE_URL"] = _database_url(connection.settings_dict)
    return env


def _database_url(db: dict) -> str:
    return f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST'] or 'localhost'}:{db['PORT'] or 5432}/{db['NAME']}"


class Workers:
    """Owns the qcluster subprocesses of a test session. Only one cluster runs at a time, so a test
    that needs a worker with other settings (or one to kill) gets the only one on the broker."""

    def __init__(self, env: dict[str, str], folder: Path):
        self.env, self.folder = env, folder
        self.shared: Worker | None = None
        self.count = 0

    def start(self, **extra_env: str) -> Worker:
        self.count += 1
        return Worker({**self.env, **extra_env}, self.folder / f"qcluster-{self.count}.log")

    def ensure_shared(self) -> Worker:
        if self.shared is None or self.shared.proc.poll() is not None:
            self.shared = self.start()
        return self.shared

    def stop_shared(self) -> None:
        if self.shared is not None:
            self.shared.stop()
            self.shared = None


@pytest.fixture(scope="session")
def workers(worker_env, tmp_path_factory):
    manager = Workers(worker_env, tmp_path_factory.mktemp("workers"))
    yield manager
    manager.stop_shared()


@pytest.fixture
def worker(workers) -> Worker:
    """A warm worker shared by the end-to-end tests (the pipeline stays loaded between jobs)."""
    return workers.ensure_shared()


@pytest.fixture
def no_worker(workers) -> None:
    """No qcluster runs during the test, so queued jobs stay queued (the warm shared worker of earlier
    tests would finish them, and a finished job frees a place under the queue cap)."""
    workers.stop_shared()


@pytest.fixture
def spawn_worker(workers):
    """Start a qcluster of this test's own (with extra environment), after stopping the shared one;
    each is stopped at the end of the test."""
    workers.stop_shared()
    started: list[Worker] = []

    def spawn(**extra_env: str) -> Worker:
        w = workers.start(**extra_env)
        started.append(w)
        return w

    yield spawn
    for w in started:
        w.stop()


def wait_for(predicate, timeout: float = 60, interval: float = 0.1, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {message}")


def wait_for_status(job, statuses, timeout: float = 90):
    statuses = {statuses} if isinstance(statuses, str) else set(statuses)

    def done():
        job.refresh_from_db()
        return job.status in statuses

    try:
        wait_for(done, timeout, message=f"{type(job).__name__} {job.pk} to reach {statuses}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; it is {job.status} {job.error!r}") from None
    return job
