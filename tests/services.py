"""The loopback services that tests and benches start for themselves: a free port, waiting until
something listens on it, a throwaway PostgreSQL cluster, stopping a child process, and the model
lookup that code run in such a site's `manage.py shell -c` begins with.

Standard library only, so the bench scripts import it too (`from tests.services import ...` with the
repository root on `sys.path`)."""
from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, NamedTuple

# Debian's PostgreSQL binaries, newest version last (.ci/run installs them); empty when absent.
PG_BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 120) -> None:
    """Return once something accepts connections on 127.0.0.1:`port`; raise RuntimeError if `proc`
    (the server meant to listen there) exits first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        time.sleep(0.2)
    raise RuntimeError(f"nothing listening on {port} after {timeout} s")


def stop_process(proc: subprocess.Popen, *, grace: float = 10, group: bool = False) -> None:
    """SIGTERM `proc` (its whole process group with `group`), SIGKILL it if it is still there after
    `grace` seconds, and reap it."""

    def send(sig: signal.Signals) -> None:
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)

    if proc.poll() is not None:
        return
    send(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        proc.wait(10)


class PostgresCluster(NamedTuple):
    port: int
    data: Path

    def url(self, database: str = "imagesite") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"


@contextmanager
def postgres_cluster(folder: Path | None = None, database: str = "imagesite") -> Iterator[PostgresCluster]:
    """A throwaway PostgreSQL cluster on a free port of 127.0.0.1 (trust auth, superuser "postgres")
    with an empty `database`; stopped on exit. Its data lives in `folder`/pg when given (the caller
    removes `folder`), else in a temp folder of its own that is removed on exit."""
    if not PG_BIN:
        raise RuntimeError("needs Debian's postgresql (/usr/lib/postgresql/*/bin)")
    bin_dir = Path(PG_BIN[-1])
    # Not pytest's tmp_path: those folders are private to the user running the tests.
    parent = folder or Path(tempfile.mkdtemp(prefix="imagesite-pg-"))
    data = parent / "pg"
    data.mkdir()
    # PostgreSQL refuses to run as root: then it runs as the postgres user, who must reach its folder.
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_postgres:
        os.chmod(parent, 0o755)
        shutil.chown(data, "postgres", "postgres")
    port = free_port()
    try:
        subprocess.run([*as_postgres, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"], check=True, capture_output=True)
        subprocess.run([*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data), "-w", "-l", str(data / "log"),
                        "-o", f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True)
        wait_port(port)
        subprocess.run([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", database], check=True)
        yield PostgresCluster(port, data)
    finally:
        subprocess.run([*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        if folder is None:
            shutil.rmtree(parent, ignore_errors=True)


# Put before code for `manage.py shell -c`: models may move between apps in the refactor, so
# `model(*labels)` there is the first of the labels that is installed.
SHELL_MODEL_LOOKUP = textwrap.dedent("""
    from django.apps import apps

    def model(*labels):
        for label in labels:
            try:
                return apps.get_model(label)
            except LookupError:
                pass
        raise LookupError(labels)
""")
