"""What the benches that run the whole system share: their own database, Redis database and data
folder, production settings on plain HTTP, and manage.py against them."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse, urlunparse

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_path(url: str, path: str) -> str:
    return urlunparse(urlparse(url)._replace(path=path))


class BenchSystem:
    """A bench's own database `database`, Redis database `redis_db` and data folder under `workdir`."""

    def __init__(self, workdir: Path, *, database: str, redis_db: int):
        import secrets

        from cryptography.fernet import Fernet

        self.workdir = workdir
        self.database = database
        self.database_url = with_path(os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/nexus"),
                                      f"/{database}")
        self.redis_url = with_path(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), f"/{redis_db}")
        self.env = {**os.environ, "DJANGO_SETTINGS_MODULE": "nexus.settings.production",
                    "DATABASE_URL": self.database_url, "REDIS_URL": self.redis_url,
                    "NEXUS_DATA_DIR": str(workdir / "data"), "NEXUS_MODELS_DIR": str(ROOT / "var/models"),
                    "SECRET_KEY": secrets.token_urlsafe(40), "NEXUS_SECRET_KEYS": Fernet.generate_key().decode(),
                    "NEXUS_HTTPS_ONLY": "0", "PYTHONUNBUFFERED": "1"}

    def manage(self, *args: str) -> str:
        out = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True,
                             text=True)
        if out.returncode:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
        return out.stdout

    def maintenance(self, sql: str) -> None:
        import psycopg

        u = urlparse(self.database_url)
        with psycopg.connect(host=u.hostname, port=u.port or 5432, user=u.username or "postgres",
                             password=u.password or "", dbname="postgres", autocommit=True) as conn:
            conn.execute(sql)

    def fresh(self) -> None:
        """An empty database migrated, an empty Redis database, the demo model registered."""
        self.drop()
        self.maintenance(f"CREATE DATABASE {self.database}")
        self.manage("migrate", "--noinput")
        self.manage("nexus_demo_model")

    def drop(self) -> None:
        import redis

        redis.Redis.from_url(self.redis_url).flushdb()
        self.maintenance(f"DROP DATABASE IF EXISTS {self.database} WITH (FORCE)")
