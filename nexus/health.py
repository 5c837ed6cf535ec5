"""GET /healthz for load balancers and Docker: no login; 200 when the database and Redis answer."""
from __future__ import annotations

import time

from django.conf import settings
from django.db import connection
from django.http import JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET


def _probe(check) -> str:  # noqa: ANN001
    try:
        check()
    except Exception:  # noqa: BLE001 - any failure is "down"; the reason stays in the server's log
        import logging

        logging.getLogger("nexus.health").exception("health check failed")
        return "down"
    return "ok"


def _database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _redis() -> None:
    from nexus.control import redis_client

    redis_client(settings.NEXUS_CONTROL_REDIS_URL).ping()


@never_cache
@require_GET
def healthz(request):
    started = time.perf_counter()
    checks = {"database": _probe(_database), "redis": _probe(_redis)}
    ok = all(v == "ok" for v in checks.values())
    return JsonResponse({"status": "ok" if ok else "down", **checks,
                         "ms": round((time.perf_counter() - started) * 1000, 1)}, status=200 if ok else 503)
