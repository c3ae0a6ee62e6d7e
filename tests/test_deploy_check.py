"""`manage.py check --deploy` with the production environment README.md documents reports nothing,
and the HTTPS switches are off by default."""
from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys

from django.conf import settings

from .conftest import ROOT

# A check's line in the output ends its id with W/E and a number, e.g. "(security.W004)".
CHECK_ID = re.compile(r"\(([\w.]+\.[WE]\d+)\)")


def _documented_production_env() -> dict[str, str]:
    """The ```ini block of README.md's Production section, with a fresh secret for the placeholder."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Production\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```ini\n", 1)[1].split("```", 1)[0]
    env = dict(line.split("=", 1) for line in block.splitlines() if line.strip())
    return {name: secrets.token_urlsafe(50) if value.startswith("<") else value for name, value in env.items()}


def _check_deploy(extra_env: dict[str, str]) -> tuple[int, list[str]]:
    # Only the variables under test: the caller's DJANGO_* must not leak into the subprocess.
    env = {name: value for name, value in os.environ.items() if not name.startswith(("DJANGO_", "IMAGESITE_"))}
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT, env={**env, **extra_env}, capture_output=True, text=True, timeout=120,
    )
    return result.returncode, CHECK_ID.findall(result.stdout + result.stderr)


def test_documented_production_env_passes_check_deploy():
    env = _documented_production_env()
    assert env["DJANGO_DEBUG"] == "false" and env["DJANGO_HSTS_SECONDS"] == "31536000"
    returncode, found = _check_deploy(env)
    assert found == [] and returncode == 0


def test_without_the_https_switches_check_deploy_warns():
    env = {name: value for name, value in _documented_production_env().items()
           if name not in {"DJANGO_HSTS_SECONDS", "DJANGO_SSL_REDIRECT"}}
    _, found = _check_deploy(env)
    assert sorted(check for check in found if check.startswith("security.")) == ["security.W004", "security.W008"]


def test_https_switches_are_off_by_default():
    # The embedded set-up serves plain HTTP on 127.0.0.1: no redirect, no HSTS, no trusted proxy header.
    assert settings.SECURE_HSTS_SECONDS == 0 and not settings.SECURE_SSL_REDIRECT
    assert settings.SECURE_PROXY_SSL_HEADER is None
