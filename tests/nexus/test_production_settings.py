"""Production settings pass Django's deployment checks and refuse what would make them unsafe."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _manage(*args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "NEXUS_SECRET_KEYS")}
    environ.update(DJANGO_SETTINGS_MODULE="nexus.settings.production", **env)
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=environ, capture_output=True, text=True,
                          timeout=120)


def test_check_deploy_is_clean_with_production_settings():
    from cryptography.fernet import Fernet

    r = _manage("check", "--deploy", "--fail-level", "WARNING", SECRET_KEY="k" * 20 + "x9#Lq2!vT7@pZ4$wR1&mN8*bY5^cE3",
                NEXUS_SECRET_KEYS=Fernet.generate_key().decode(), NEXUS_BEHIND_TLS_PROXY="1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no issues" in r.stdout


def test_production_refuses_a_blank_secret_key_or_no_secret_keys():
    for key in ("", "   "):
        r = _manage("check", SECRET_KEY=key)
        assert r.returncode != 0 and "SECRET_KEY must be set" in r.stderr
    r = _manage("check", SECRET_KEY="k" * 50)
    assert r.returncode != 0 and "NEXUS_SECRET_KEYS must be set" in r.stderr
