.PHONY: demo setup test test-fast serve worker

demo:            ## set up everything, start web + worker, run the demo fine-tune, keep serving
	scripts/demo.sh

setup:
	scripts/setup.sh

test:            ## the whole suite on real Postgres, Redis, Celery, websockets and Chromium
	scripts/setup.sh --browser
	.venv/bin/pytest

test-fast:       ## everything but the whole-system tests
	.venv/bin/pytest -m "not e2e and not browser and not scale"

serve:
	.venv/bin/uvicorn nexus.asgi:application --host 127.0.0.1 --port 8000 --workers $${NEXUS_WEB_WORKERS:-$$(nproc)}

worker:
	.venv/bin/celery -A nexus worker -Q cpu,gpu --concurrency 2 -n local@%h -l info -B  # -B: the reaper's beat (run it once per site)
