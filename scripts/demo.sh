#!/usr/bin/env bash
# One command: set everything up, start the ASGI server and a Celery worker (cpu + gpu queues),
# then run the demo fine-tune and keep serving until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
PORT=${PORT:-8000}
HOST=${HOST:-127.0.0.1}
mkdir -p var/log
PIDS=()
cleanup() {
  trap - INT TERM EXIT
  echo; echo "Stopping the server and the worker..."
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "Stopped."
}
trap cleanup INT TERM EXIT

.venv/bin/uvicorn nexus.asgi:application --host "$HOST" --port "$PORT" --workers "${NEXUS_WEB_WORKERS:-$(nproc)}" \
  >var/log/web.log 2>&1 &
WEB=$!
PIDS+=($WEB)
.venv/bin/celery -A nexus worker -Q cpu,gpu --concurrency 2 -n demo@%h -l info -B >var/log/worker.log 2>&1 &
PIDS+=($!)
for _ in $(seq 1 120); do
  .venv/bin/python -c "import socket,sys; socket.create_connection(('$HOST', $PORT), timeout=1)" 2>/dev/null && break
  kill -0 "$WEB" 2>/dev/null || { echo "The web server did not start:"; tail -n 30 var/log/web.log; exit 1; }
  sleep 0.5
done
echo "Web server on http://$HOST:$PORT (log: var/log/web.log), worker log: var/log/worker.log"
.venv/bin/python manage.py nexus_demo --base-url "http://$HOST:$PORT"
echo
echo "Serving on http://$HOST:$PORT until Ctrl-C. Log in as demo / nexus-demo."
wait
