"""Every setting that comes from the environment is read here, once."""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlparse

BASE_DIR = Path(__file__).resolve().parent.parent.parent


def _str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


def _list(name: str, default: str) -> list[str]:
    return [part.strip() for part in _str(name, default).split(",") if part.strip()]


def parse_database_url(url: str) -> dict:
    """postgres://user:pass@host:port/name -> Django DATABASES entry."""
    parsed = urlparse(url)
    if parsed.scheme not in {"postgres", "postgresql", "pgsql"}:
        raise ValueError(f"DATABASE_URL must be a postgres:// URL, got scheme {parsed.scheme!r}")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parsed.path.lstrip("/")) or "nexus",
        "USER": unquote(parsed.username or "postgres"),
        "PASSWORD": unquote(parsed.password or ""),
        "HOST": parsed.hostname or "127.0.0.1",
        "PORT": str(parsed.port or 5432),
        "CONN_MAX_AGE": 0,
    }


DATABASE_URL = _str("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/nexus")
NEXUS_DB_POOL_MAX = int(_str("NEXUS_DB_POOL_MAX", "8"))  # connections per process at most; 0: no pool
REDIS_URL = _str("REDIS_URL", "redis://127.0.0.1:6379/0")
NEXUS_DATA_DIR = Path(_str("NEXUS_DATA_DIR", str(BASE_DIR / "var"))).resolve()
# Where provisioned base models live; shared between runs so the demo model is built once.
NEXUS_MODELS_DIR = Path(_str("NEXUS_MODELS_DIR", str(NEXUS_DATA_DIR / "models"))).resolve()
SECRET_KEY = _str("SECRET_KEY", "")
# Artifacts (datasets, checkpoints, adapters, GGUF files, uploaded base models): the local folder
# NEXUS_DATA_DIR/media by default (one machine), or an S3-compatible store shared by every host:
# s3+http://KEY:SECRET@host:port/bucket[/prefix] (s3+https:// for TLS), or s3://bucket[/prefix] with the
# usual AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_S3_ENDPOINT_URL and AWS_S3_REGION_NAME.
NEXUS_STORAGE_URL = _str("NEXUS_STORAGE_URL", "")
# Each host's cache of what it staged down from the store (base models, GGUF files, checkpoints)
# and of its jobs' working folders. Local to the host; safe to delete while no job runs.
NEXUS_CACHE_DIR = Path(_str("NEXUS_CACHE_DIR", str(NEXUS_DATA_DIR / "cache"))).resolve()


def parse_storage_url(url: str) -> dict | None:
    """NEXUS_STORAGE_URL -> django-storages S3Storage options (None: the local folder)."""
    if not url:
        return None
    parsed = urlparse(url)
    if parsed.scheme not in {"s3", "s3+http", "s3+https"}:
        raise ValueError(f"NEXUS_STORAGE_URL must be s3://bucket, s3+http://KEY:SECRET@host:port/bucket or "
                         f"s3+https://..., got scheme {parsed.scheme!r}")
    if parsed.scheme == "s3":
        bucket, _, location = (parsed.netloc + parsed.path).strip("/").partition("/")
        endpoint = os.environ.get("AWS_S3_ENDPOINT_URL") or None
        key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    else:
        bucket, _, location = parsed.path.strip("/").partition("/")
        endpoint = f"{parsed.scheme.split('+')[1]}://{parsed.hostname}{f':{parsed.port}' if parsed.port else ''}"
        key, secret = unquote(parsed.username or ""), unquote(parsed.password or "")
    if not bucket:
        raise ValueError("NEXUS_STORAGE_URL names no bucket (s3+http://KEY:SECRET@host:port/BUCKET)")
    return {"bucket_name": bucket, "location": location, "endpoint_url": endpoint, "access_key": key or None,
            "secret_key": secret or None, "region_name": os.environ.get("AWS_S3_REGION_NAME", "us-east-1"),
            "addressing_style": "path", "signature_version": "s3v4", "file_overwrite": True, "default_acl": None,
            # objects are never served by URL: downloads go through team-checked views
            "querystring_auth": True}


# Fernet keys for secrets at rest (comma-separated; the first encrypts, every one decrypts: rotation)
NEXUS_SECRET_KEYS = _list("NEXUS_SECRET_KEYS", "")
# Production behind a TLS-terminating proxy: trust its X-Forwarded-Proto header for "is this HTTPS"
NEXUS_BEHIND_TLS_PROXY = _bool("NEXUS_BEHIND_TLS_PROXY", False)
NEXUS_HSTS_SECONDS = int(_str("NEXUS_HSTS_SECONDS", str(365 * 24 * 3600)))
NEXUS_HSTS_PRELOAD = _bool("NEXUS_HSTS_PRELOAD", True)
# 0 only for a production-settings process on plain HTTP on one machine (benchmarks): no redirect, no HSTS
NEXUS_HTTPS_ONLY = _bool("NEXUS_HTTPS_ONLY", True)
ALLOWED_HOSTS = _list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
DEBUG = _bool("DEBUG", False)
NEXUS_MAX_UPLOAD_MB = int(_str("NEXUS_MAX_UPLOAD_MB", "512"))
NEXUS_ALLOW_HUB_DOWNLOADS = _bool("NEXUS_ALLOW_HUB_DOWNLOADS", False)
# Per-team quotas on work that spends the machine (a request past one is a 429 naming it)
NEXUS_QUOTA_LIVE_DEPLOYMENTS = int(_str("NEXUS_QUOTA_LIVE_DEPLOYMENTS", "4"))
NEXUS_QUOTA_ACTIVE_TRAINING_JOBS = int(_str("NEXUS_QUOTA_ACTIVE_TRAINING_JOBS", "10"))
NEXUS_QUOTA_ACTIVE_EXPORTS = int(_str("NEXUS_QUOTA_ACTIVE_EXPORTS", "10"))
NEXUS_QUOTA_PROCESSING_DATASETS = int(_str("NEXUS_QUOTA_PROCESSING_DATASETS", "20"))
NEXUS_QUOTA_ACTIVE_DISTILLATIONS = int(_str("NEXUS_QUOTA_ACTIVE_DISTILLATIONS", "5"))
# Hosts teachers and judges may be reached at (names or addresses, comma-separated; "host:port" for
# one port). Private, loopback and link-local addresses are refused unless listed themselves.
NEXUS_TEACHER_ALLOWED_HOSTS = _str("NEXUS_TEACHER_ALLOWED_HOSTS", "api.openai.com,api.anthropic.com")
NEXUS_DISTILLATION_MAX_EXAMPLES = int(_str("NEXUS_DISTILLATION_MAX_EXAMPLES", "100000"))
NEXUS_QUOTA_ACTIVE_EVALUATIONS = int(_str("NEXUS_QUOTA_ACTIVE_EVALUATIONS", "5"))
NEXUS_EVAL_MAX_PROMPTS = int(_str("NEXUS_EVAL_MAX_PROMPTS", "2000"))
NEXUS_JUDGE_TIMEOUT_S = float(_str("NEXUS_JUDGE_TIMEOUT_S", "120"))
# The job kit (nexus/jobs): workers heartbeat every few seconds; one silent for LOST_AFTER is gone and
# the reaper (beat, every REAP_EVERY) resumes or fails what it held. A host none of whose workers is
# heard from for HOST_LOST_AFTER has its servers given up. Waiting work the broker holds is marked for
# RESEND_AFTER; unmarked waiting work is sent again.
NEXUS_HOST_NAME = _str("NEXUS_HOST_NAME", "")  # default: the machine's host name
NEXUS_WORKER_HEARTBEAT_S = float(_str("NEXUS_WORKER_HEARTBEAT_S", "10"))
NEXUS_WORKER_LOST_AFTER_S = int(_str("NEXUS_WORKER_LOST_AFTER_S", "45"))
NEXUS_HOST_LOST_AFTER_S = int(_str("NEXUS_HOST_LOST_AFTER_S", "300"))
NEXUS_REAP_EVERY_S = float(_str("NEXUS_REAP_EVERY_S", "60"))
NEXUS_RESEND_AFTER_S = int(_str("NEXUS_RESEND_AFTER_S", str(6 * 3600)))
# Managed llama.cpp servers listen on SERVE_BIND; the proxy reaches them at SERVE_ADDRESS (default:
# the bind address, or this host's name when it binds every interface)
# Redis redelivers a task that no worker acknowledged within this many seconds. Tasks are acknowledged
# when they end (acks_late) and training runs for days, so it must be longer than any task; every
# process must use the same value (the shortest wins), and workers refuse to start when one already
# running uses another. A lost worker is found by its heartbeat and `celery inspect ping`, not by this.
NEXUS_BROKER_VISIBILITY_TIMEOUT_S = int(_str("NEXUS_BROKER_VISIBILITY_TIMEOUT_S", str(7 * 24 * 3600)))
NEXUS_SERVE_BIND = _str("NEXUS_SERVE_BIND", "127.0.0.1")
NEXUS_SERVE_ADDRESS = _str("NEXUS_SERVE_ADDRESS", "")
# Tests use their own Redis database so a running demo worker never takes their tasks.
TEST_REDIS_URL = _str("TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
