"""Tests that must hold on PostgreSQL too, run by pytest in a subprocess whose database is a throwaway
PostgreSQL cluster (tests/services.py starts it on loopback): the gallery's word search, and the
queue's claim (SELECT … FOR UPDATE SKIP LOCKED there, a conditional UPDATE on SQLite)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .services import PG_BIN, postgres_cluster

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.scale_out, pytest.mark.skipif(not PG_BIN, reason="needs Debian's postgresql (.ci/run installs it)")]


@pytest.fixture(scope="module")
def database_url():
    with postgres_cluster() as cluster:
        yield cluster.url()


def _pytest_on(database_url: str, *args: str) -> None:
    env = {**os.environ, "DATABASE_URL": database_url, "DJANGO_SETTINGS_MODULE": "imagesite.settings"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "passed" in result.stdout and "failed" not in result.stdout


def test_gallery_search_on_postgres(database_url):
    _pytest_on(database_url, "tests/test_generation_pages.py", "-k", "search")


def test_queue_on_postgres(database_url):
    _pytest_on(database_url, "tests/test_queue.py")
