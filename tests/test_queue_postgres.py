"""The queue's claim on PostgreSQL (SELECT … FOR UPDATE SKIP LOCKED): tests/test_queue.py run by pytest in
a subprocess whose database is a throwaway PostgreSQL cluster (tests/services.py starts it on loopback)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .services import PG_BIN, postgres_cluster

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.scale_out, pytest.mark.skipif(not PG_BIN, reason="needs Debian's postgresql (.ci/run installs it)")]


def test_queue_on_postgres():
    with postgres_cluster() as cluster:
        env = {**os.environ, "DATABASE_URL": cluster.url(), "DJANGO_SETTINGS_MODULE": "imagesite.settings"}
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_queue.py"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
        )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "passed" in result.stdout and "failed" not in result.stdout
