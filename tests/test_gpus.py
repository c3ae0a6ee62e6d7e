"""One worker per GPU (generation/gpus.py): pools from the settings, GPU claims across real processes,
the CPU fallback, IMAGESITE_WORKERS=auto, and a real qcluster whose forking processes never load torch.

This machine has no GPU: where a test needs one, the CUDA device count is pretended and says so."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from generation import gpus

ROOT = Path(__file__).resolve().parent.parent


# --- which GPUs a role may use ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "count, role, options, pool",
    [
        (1, "generation", {}, [0]),
        (2, "generation", {}, [0, 1]),
        (2, "training", {}, [1, 0]),  # training starts from the last GPU: one generation worker never meets it
        (2, "generation", {"training_gpu": 1}, [0]),
        (2, "training", {"training_gpu": 1}, [1]),
        (1, "generation", {"training_gpu": 0}, [0]),  # one GPU: generation shares it rather than having none
        (4, "generation", {"gpus": (3, 1)}, [3, 1]),
        (4, "training", {"gpus": (3, 1)}, [1, 3]),
    ],
)
def test_gpu_pool(count, role, options, pool):
    assert gpus.gpu_pool(count, role, **options) == pool


@pytest.mark.parametrize("options", [{"gpus": (0, 2)}, {"training_gpu": 2}])
def test_a_gpu_that_does_not_exist_is_named(options):
    with pytest.raises(ValueError, match=r"GPU 2, but this worker sees 2 GPU\(s\) \(0-1\)"):
        gpus.gpu_pool(2, "generation", **options)


@pytest.mark.parametrize("value, parsed", [(None, None), ("", None), (" 0, 1 ", (0, 1)), ("3", (3,))])
def test_parse_gpu_list(value, parsed):
    assert gpus.parse_gpu_list(value) == parsed


@pytest.mark.parametrize("value", ["0,x", "-1", "1,1", "cuda:0"])
def test_parse_gpu_list_refuses_what_is_not_a_list_of_gpus(value):
    with pytest.raises(ValueError, match="IMAGESITE_GPUS"):
        gpus.parse_gpu_list(value)


def _settings_in_subprocess(tmp_path: Path, **env: str) -> dict:
    """Import imagesite.settings afresh with `env` (and no nvidia-smi on PATH unless `env` puts one)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGESITE_", "CUDA_VISIBLE"))}
    clean["PATH"] = env.pop("PATH", str(tmp_path / "empty-bin"))
    code = "import json; from imagesite import settings as s; " \
           "print(json.dumps([s.Q_CLUSTER['workers'], s.IMAGESITE_GPUS, s.IMAGESITE_TRAINING_GPU]))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**clean, **env}, capture_output=True, text=True)
    return {"out": json.loads(done.stdout) if done.returncode == 0 else None, "err": done.stderr}


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, [1, [], None]),  # one GPU, one worker: the default
        ({"IMAGESITE_WORKERS": "auto"}, [1, [], None]),  # no GPU found
        ({"IMAGESITE_WORKERS": "3"}, [3, [], None]),
        ({"IMAGESITE_WORKERS": "auto", "CUDA_VISIBLE_DEVICES": "0,1"}, [2, [], None]),
        ({"IMAGESITE_WORKERS": "auto", "IMAGESITE_GPUS": "1,2,3", "IMAGESITE_TRAINING_GPU": "0"}, [3, [1, 2, 3], 0]),
        ({"IMAGESITE_WORKERS": "auto", "CUDA_VISIBLE_DEVICES": "0,1", "IMAGESITE_TRAINING_GPU": "1"}, [1, [], 1]),
    ],
)
def test_settings_count_workers(tmp_path, env, expected):
    assert _settings_in_subprocess(tmp_path, **env)["out"] == expected


def test_auto_counts_gpus_with_nvidia_smi_without_initialising_cuda(tmp_path):
    """A stand-in nvidia-smi (this machine has none) that lists three GPUs as the real one does."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\n" + "".join(f"echo 'GPU {i}: NVIDIA H100 80GB HBM3 (UUID: GPU-{i})'\n" for i in range(3)))
    smi.chmod(0o755)
    result = _settings_in_subprocess(tmp_path, IMAGESITE_WORKERS="auto", PATH=f"{bin_dir}:/usr/bin:/bin")
    assert result["out"] == [3, [], None], result["err"]


def test_settings_refuse_a_bad_gpu_list(tmp_path):
    result = _settings_in_subprocess(tmp_path, IMAGESITE_GPUS="0,zero")
    assert result["out"] is None and "IMAGESITE_GPUS='0,zero': list distinct CUDA device numbers" in result["err"]


# --- claims across real processes -------------------------------------------------------------------
class Claimant:
    """A separate process that claims a GPU of `pool` and holds it until stopped."""

    def __init__(self, pool: list[int], lock_dir: Path):
        code = textwrap.dedent(f"""
            import sys
            from generation.gpus import claim_gpu
            claim, fd = claim_gpu({pool!r}, {str(lock_dir)!r})
            print(claim.index, claim.shared, flush=True)
            sys.stdin.read()  # hold the GPU until the test closes our stdin or kills us
        """)
        self.proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        index, shared = self.proc.stdout.readline().split()
        self.claim = (int(index), shared == "True")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(10)


def test_two_processes_never_share_a_gpu_while_one_is_free_and_a_dead_ones_gpu_is_reused(tmp_path):
    held: list[Claimant] = []
    try:
        held += [Claimant([0, 1], tmp_path), Claimant([0, 1], tmp_path)]
        assert sorted(c.claim for c in held) == [(0, False), (1, False)]
        third = Claimant([0, 1], tmp_path)  # more workers than GPUs: it shares, and knows it
        held.append(third)
        assert third.claim == (0, True)
        owner_of_1 = next(c for c in held if c.claim == (1, False))
        owner_of_1.kill()  # SIGKILL: no clean-up ran, the kernel dropped the lock
        successor = Claimant([0, 1], tmp_path)
        held.append(successor)
        assert successor.claim == (1, False)
    finally:
        for claimant in held:
            claimant.stop()


def test_claims_of_the_generation_and_training_roles_are_apart(tmp_path):
    a, b = Claimant([0], tmp_path / "generation"), Claimant([0], tmp_path / "training")
    try:
        assert a.claim == b.claim == (0, False)
    finally:
        a.stop(), b.stop()


# --- worker_device in this process --------------------------------------------------------------------
def test_without_cuda_a_worker_uses_the_cpu_and_claims_nothing(settings, tmp_path):
    settings.IMAGESITE_GPU_LOCK_DIR = str(tmp_path)
    assert gpus.worker_device() == "cpu"  # the real torch of this machine: no CUDA
    assert list(tmp_path.iterdir()) == []


def test_worker_device_claims_once_and_pins_the_device(settings, tmp_path, monkeypatch):
    """Two GPUs pretended (count and set_device patched: no GPU here)."""
    pinned: list[int] = []
    monkeypatch.setattr(gpus, "_cuda_device_count", lambda: 2)
    monkeypatch.setattr(gpus, "_make_current", pinned.append)
    settings.IMAGESITE_GPU_LOCK_DIR = str(tmp_path)
    settings.IMAGESITE_TRAINING_GPU = 0
    try:
        assert gpus.worker_device("generation") == "cuda:1"  # GPU 0 is kept for training
        assert gpus.worker_device("generation") == "cuda:1" and pinned == [1]
        assert (tmp_path / "generation" / "gpu-1.lock").exists()
    finally:
        gpus.release()


def test_importing_gpus_loads_no_torch():
    code = "import sys; import generation.gpus; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True).stdout.strip() == "False"


def test_what_qcluster_loads_before_it_forks_holds_no_torch():
    """The fast guard (the worker-lane test below checks a running cluster): Django's set-up with every
    app's ready(), the broker, the cluster and the scheduler, as `manage.py qcluster` loads them."""
    code = textwrap.dedent("""
        import os, sys
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "imagesite.settings")
        import django
        django.setup()
        from django_q import cluster, scheduler
        from django_q.brokers import get_broker
        get_broker()
        print(sorted(m for m in ("torch", "diffusers", "transformers", "generation.gpus") if m in sys.modules))
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.stdout.strip() == "[]", done.stderr[-2000:]


# --- a real cluster ---------------------------------------------------------------------------------
def _maps_torch(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_qcluster_workers_each_claim_their_gpu_and_the_forking_processes_never_load_torch(spawn_worker, tmp_path):
    from django_q.tasks import async_task, result

    cluster = spawn_worker(IMAGESITE_WORKERS="2", IMAGESITE_GPU_LOCK_DIR=str(tmp_path))
    tasks = [async_task("tests.gpu_probe.claim_and_report", 1.5) for _ in range(4)]
    reports = [result(task, wait=60_000) for task in tasks]
    assert all(reports), cluster.output()
    device_of: dict[int, set[str]] = {}
    for report in reports:
        device_of.setdefault(report["pid"], set()).add(report["device"])
    assert all(len(devices) == 1 for devices in device_of.values())  # a worker keeps its GPU
    assert sorted(d for devices in device_of.values() for d in devices) == ["cuda:0", "cuda:1"]
    assert "uses cuda:0" in cluster.output() and "uses cuda:1" in cluster.output()
    # The workers loaded torch; the processes that fork them (the sentinel, and qcluster itself) did not.
    sentinels = {report["sentinel"] for report in reports}
    assert all(_maps_torch(pid) for pid in device_of)
    assert sentinels and not any(_maps_torch(pid) for pid in sentinels | {cluster.proc.pid})
