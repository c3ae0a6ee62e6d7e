"""Scale-out: the same code on PostgreSQL with Redis as the django-q2 broker and two worker
"machines" sharing one media folder. Real servers, started here on loopback (.ci/run installs
Debian's postgresql and redis-server)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from .services import PG_BIN, free_port, postgres_cluster, wait_port

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [
    pytest.mark.scale_out,
    pytest.mark.worker,
    pytest.mark.skipif(not PG_BIN or not shutil.which("redis-server"), reason="needs Debian's postgresql and redis-server (.ci/run installs them)"),
]


@pytest.fixture
def services():
    """A throwaway PostgreSQL cluster and Redis server, torn down afterwards."""
    with postgres_cluster() as cluster:
        redis_port = free_port()
        redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(redis_port, timeout=30)
            yield {"DATABASE_URL": cluster.url(), "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0"}
        finally:
            redis.terminate()
            redis.wait(10)


def manage(env: dict, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True, capture_output=True, text=True, **kwargs)


def test_two_workers_on_postgres_and_redis_share_the_queue(services, tmp_path):
    media = tmp_path / "shared-media"
    env = {**os.environ, **services, "IMAGESITE_MEDIA_ROOT": str(media), "PYTHONUNBUFFERED": "1", "DJANGO_SETTINGS_MODULE": "imagesite.settings"}
    manage(env, "migrate", "--noinput")
    logs = [tmp_path / "machine-a.log", tmp_path / "machine-b.log"]
    clusters = [subprocess.Popen([sys.executable, "manage.py", "workers"], cwd=ROOT, env=env, stdout=open(log, "wb"),
                                 stderr=subprocess.STDOUT, start_new_session=True) for log in logs]
    try:
        create = textwrap.dedent("""
            from django.contrib.auth.models import User
            from generation.services import create_generation
            owner = User.objects.create_user("scale", password="x-very-long-password")
            ids = [create_generation(owner=owner, prompt=f"a red circle on a blue background {i}", seed=i, negative_prompt="",
                   steps=10, guidance_scale=7.5, width=64, height=64, scheduler="dpmpp_2m", num_images=1).pk for i in range(6)]
            print(",".join(map(str, ids)))
        """)
        for log in logs:  # both machines up before the work arrives
            deadline = time.monotonic() + 60
            while "running" not in log.read_text(errors="replace"):
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        ids = manage(env, "shell", "-c", create).stdout.strip().splitlines()[-1]
        check = f"from generation.models import Generation; print(sorted(Generation.objects.filter(pk__in=[{ids}]).values_list('status', flat=True)))"
        deadline = time.monotonic() + 240
        while True:
            statuses = manage(env, "shell", "-c", check).stdout.strip().splitlines()[-1]
            if "queued" not in statuses and "running" not in statuses:
                break
            assert time.monotonic() < deadline, statuses
            time.sleep(1)
    finally:
        for proc in clusters:
            os.killpg(proc.pid, 15)
        for proc in clusters:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
    assert statuses == str(["succeeded"] * 6)
    assert len(list(media.rglob("*.png"))) == 6 * 2  # images and thumbnails on the shared storage
    processed = [log.read_text(errors="replace").count("Processed 'generation.tasks.run_generation'") for log in logs]
    assert sum(processed) == 6 and all(n >= 1 for n in processed), processed
