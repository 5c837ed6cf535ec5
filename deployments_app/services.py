"""Deployments: managed llama.cpp servers behind one OpenAI-compatible endpoint per deployment.

Writes (create, start, launch, stop, fail, reap, record) and the reads the pages and the proxy
need. Processes are handled by `deployments_app.engine.serving`; this module keeps their rows right."""
from __future__ import annotations

import json
import random
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import requests
from django.conf import settings
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import Count, Q, QuerySet, Sum
from django.urls import reverse
from django.utils import timezone

from adapters_app.models import AdapterExport, LoRAAdapter
from deployments_app.engine import serving
from deployments_app.models import Deployment, DeploymentArm, DeploymentRequest
from nexus.errors import NexusError
from nexus.quotas import quota_check
from nexus.secrets import secret_encrypt
from nexus.redact import public_error
from nexus.models import BaseModel, JobEvent, Team
from deployments_app.jobs import DEPLOYMENT
from nexus.jobs import enqueue, event, status_event
from nexus.jobs.workers import host_name, host_queue

S = Deployment.Status
START_TIMEOUT_S = 180.0
EXPORT_TIMEOUT_S = 30 * 60.0
PROXY_TIMEOUT_S = 600.0
LOG_LINES = 80  # of each server's log, kept on its arm by the host
# OpenAI path below /v1 -> HTTP method the llama.cpp server answers it with
ENDPOINTS = {"chat/completions": "POST", "completions": "POST", "models": "GET"}


@dataclass
class ArmInput:
    """What one arm serves: the base model alone, base + an adapter, or a merged GGUF export."""

    weight: int = 100
    adapter: LoRAAdapter | None = None
    export: AdapterExport | None = None




def gguf_local_path(name: str) -> str:
    """A local path for a GGUF given as an absolute path or a storage name (llama.cpp needs a file)."""
    if not name:
        return ""
    if Path(name).is_absolute():
        return name
    try:
        return default_storage.path(name)
    except NotImplementedError as exc:  # remote storage: the server needs the file on this machine
        raise NexusError(f"{name} is not on local storage; llama.cpp servers need local GGUF files",
                         code="not_local") from exc


def _settings(base_model: BaseModel, raw: dict | None) -> dict[str, int]:
    raw = dict(raw or {})
    out = {"n_ctx": min(base_model.context_length or 2048, 2048)}
    # n_gpu_layers: layers llama.cpp offloads to the GPU (-1: all); needs a llama-cpp-python built with CUDA
    limits = {"n_ctx": (128, 131072), "n_threads": (1, 256), "n_gpu_layers": (-1, 10_000)}
    for key, value in raw.items():
        if key not in limits:
            raise NexusError(f"settings: unknown setting '{key}' (known: {', '.join(limits)})",
                             code="validation_error", details={"settings": key})
        lo, hi = limits[key]
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise NexusError(f"settings.{key}: must be an integer from {lo} to {hi}, got {value!r}",
                             code="validation_error", details={f"settings.{key}": value})
        out[key] = value
    return out


def _check_arm(team: Team, base_model: BaseModel, arm: ArmInput, label: str) -> None:
    def bad(message: str) -> NexusError:
        return NexusError(f"arm {label}: {message}", code="validation_error", details={"arms": {label: message}})

    if not 0 <= arm.weight <= 100:
        raise bad(f"weight must be a percentage from 0 to 100, got {arm.weight}")
    if arm.adapter and arm.export:
        raise bad("serve either an adapter or a merged export, not both")
    if arm.adapter:
        if arm.adapter.team_id != team.pk:
            raise bad(f"adapter #{arm.adapter.pk} belongs to another team")
        if arm.adapter.base_model_id != base_model.pk:
            raise bad(f"adapter '{arm.adapter}' was trained on {arm.adapter.base_model.name}, not {base_model.name}")
    if arm.export:
        if arm.export.team_id != team.pk:
            raise bad(f"export #{arm.export.pk} belongs to another team")
        if arm.export.kind != AdapterExport.Kind.MODEL_GGUF or arm.export.status != AdapterExport.Status.COMPLETED:
            raise bad(f"export #{arm.export.pk} is not a completed merged-model GGUF")
        if arm.export.adapter.base_model_id != base_model.pk:
            raise bad(f"export #{arm.export.pk} is of a {arm.export.adapter.base_model.name} adapter, not {base_model.name}")


@transaction.atomic
def deployment_create(*, team: Team, user, name: str, base_model: BaseModel, arms: list[ArmInput],
                      settings: dict | None = None) -> Deployment:
    """Record a deployment of one or two arms (an A/B split by percentage) and start it on the cpu queue."""
    if not base_model.gguf_path:
        raise NexusError(f"base_model: '{base_model.name}' has no GGUF file, so llama.cpp cannot serve it",
                         code="validation_error", details={"base_model": "no GGUF"})
    if not 1 <= len(arms) <= 2:
        raise NexusError("arms: a deployment has one arm, or two for an A/B split", code="validation_error",
                         details={"arms": len(arms)})
    if base_model.team_id not in (None, team.pk):
        raise NexusError(f"base_model: '{base_model.name}' belongs to another team", code="validation_error",
                         details={"base_model": "other team"})
    labels = "AB"[: len(arms)]
    for label, arm in zip(labels, arms):
        _check_arm(team, base_model, arm, label)
    total = sum(a.weight for a in arms)
    if total != 100:
        raise NexusError(f"arms: traffic weights must add up to 100%, got {total}%", code="validation_error",
                         details={"arms": "weights"})
    quota_check(team=team, kind="live_deployments")
    deployment = Deployment(team=team, name=name.strip() or base_model.name, base_model=base_model,
                            settings=_settings(base_model, settings), created_by=user, status=S.STARTING)
    deployment.full_clean()
    deployment.save()
    for label, arm in zip(labels, arms):
        row = DeploymentArm(deployment=deployment, label=label, adapter=arm.adapter, export=arm.export,
                            weight=arm.weight)
        row.full_clean()
        row.save()
    shares = "; ".join(f"{a.label} ({a.weight}%): {a.serves}" for a in deployment.arms.all())
    status_event(DEPLOYMENT, deployment.pk, S.STARTING, f"Deployment created: {shares}")
    enqueue(DEPLOYMENT, deployment.pk)
    return deployment


def _lock_ended(deployment: Deployment, *, code: str, hint: str) -> Deployment:
    """The row, locked; 409 while it is live."""
    deployment = Deployment.objects.select_for_update().get(pk=deployment.pk)
    if deployment.is_live:
        raise NexusError(f"Deployment '{deployment.name}' is {deployment.status}; {hint}.", code=code, status_code=409)
    return deployment


def deployment_check_use(*, user, deployment: Deployment) -> None:
    """Sending requests to a deployment spends the team's compute: members may; viewers only when
    the team allows it (`Team.viewers_use_deployments`, off by default). 403 otherwise."""
    from django.core.exceptions import PermissionDenied

    from nexus.models import Membership
    from nexus.teams import membership_for

    membership = membership_for(user, deployment.team_id)
    if membership and membership.role == Membership.Role.VIEWER and not deployment.team.viewers_use_deployments:
        raise PermissionDenied("Viewers may not send requests to this team's deployments: they spend the team's "
                               "compute. A team owner can allow it (the team's 'viewers use deployments' setting).")


@transaction.atomic
def deployment_start(*, deployment: Deployment) -> Deployment:
    """Start a stopped or failed deployment again."""
    deployment = _lock_ended(deployment, code="conflict", hint="it is already live")
    quota_check(team=deployment.team, kind="live_deployments")
    deployment.status, deployment.error, deployment.started_at, deployment.stopped_at = S.STARTING, "", None, None
    deployment.host = deployment.worker = ""
    deployment.save(update_fields=["status", "error", "started_at", "stopped_at", "host", "worker", "updated_at"])
    deployment.arms.update(pid=None, port=None, healthy_at=None)
    status_event(DEPLOYMENT, deployment.pk, S.STARTING, "Starting again")
    enqueue(DEPLOYMENT, deployment.pk)
    return deployment


def _ensure_adapter_gguf(deployment_id: int, adapter: LoRAAdapter, user, worker: str) -> LoRAAdapter:
    """The adapter's GGUF, exporting it first (synchronously, on this worker) when it has none."""
    from adapters_app.exports import export_create, export_run  # noqa: PLC0415 - exports import services
    from adapters_app.jobs import EXPORT
    from nexus.jobs import claim

    adapter.refresh_from_db()
    if adapter.gguf_path:
        return adapter
    event(DEPLOYMENT, deployment_id, f"Adapter '{adapter}' has no GGUF yet; exporting it first")
    # an identical export already queued or running is returned; whoever claims it runs it
    export = export_create(adapter=adapter, user=user, kind=AdapterExport.Kind.ADAPTER_GGUF)
    if claim(EXPORT, export.pk, worker=worker):  # held by this worker: the reaper knows whether it lives
        export = export_run(export_id=export.pk)
    deadline = time.monotonic() + EXPORT_TIMEOUT_S
    while export.status in AdapterExport.ACTIVE and time.monotonic() < deadline:  # another worker runs it
        time.sleep(1.0)
        export.refresh_from_db()
    adapter.refresh_from_db()
    if not adapter.gguf_path:
        raise serving.ServerFailed(f"The GGUF export of adapter '{adapter}' did not finish ({export.status}): "
                                   f"{export.error or 'no adapter GGUF was recorded'}")
    event(DEPLOYMENT, deployment_id, f"Adapter '{adapter}' exported to GGUF")
    return adapter


def _arm_files(arm: DeploymentArm) -> tuple[str, str]:
    base = arm.deployment.base_model
    if arm.export_id:
        return gguf_local_path(arm.export.path), ""
    return gguf_local_path(base.gguf_path), gguf_local_path(arm.adapter.gguf_path) if arm.adapter_id else ""


def _log_path(arm: DeploymentArm) -> Path:
    # the creation time keeps a new deployment off an old one's log after ids restart
    stamp = f"{arm.deployment.created_at:%Y%m%d-%H%M%S}"
    return Path(settings.NEXUS_DATA_DIR) / "deployments" / f"deployment-{arm.deployment_id}-{stamp}-{arm.label}.log"


def _spawn_arms(deployment_id: int) -> list[DeploymentArm]:
    """Launch every arm whose server is not running; under the row lock, so stop cannot interleave."""
    with transaction.atomic():
        deployment = Deployment.objects.select_for_update().select_related("base_model").get(pk=deployment_id)
        if deployment.status != S.STARTING:
            return []
        arms = list(deployment.arms.select_related("deployment__base_model", "adapter", "export"))
        taken = {a.port for a in arms if a.port}
        threads = deployment.settings.get("n_threads")
        for arm in arms:
            if serving.is_alive(arm.pid, arm.port):
                continue  # a redelivered task: this arm is already up
            model_path, lora_path = _arm_files(arm)
            port = serving.free_port(settings.NEXUS_SERVE_BIND, exclude=taken)
            taken.add(port)
            log = _log_path(arm)
            api_key = secrets.token_urlsafe(32)  # a new key each start; the old server (if any) is gone
            spec = serving.ServerSpec(model_path=model_path, lora_path=lora_path, port=port, log_path=str(log),
                                      n_ctx=deployment.settings.get("n_ctx", 2048), n_threads=threads,
                                      n_gpu_layers=deployment.settings.get("n_gpu_layers", 0), api_key=api_key,
                                      host=settings.NEXUS_SERVE_BIND)
            pid = serving.spawn(spec)
            arm.model_path, arm.lora_path, arm.host, arm.port, arm.pid = model_path, lora_path, serve_address(), port, pid
            arm.log_path, arm.healthy_at, arm.api_key_encrypted = str(log), None, secret_encrypt(api_key)
            arm.save(update_fields=["model_path", "lora_path", "host", "port", "pid", "log_path", "healthy_at",
                                    "api_key_encrypted"])
            event(DEPLOYMENT, deployment_id, f"Arm {arm.label}: llama.cpp server started (pid {pid}, port {port}) serving "
                                  f"{arm.serves}", data={"arm": arm.label, "pid": pid, "port": port})
        return arms


def _status_is(deployment_id: int, status: str) -> bool:
    return Deployment.objects.filter(pk=deployment_id, status=status).exists()


def deployment_launch(*, deployment_id: int) -> Deployment:
    """The start task's work: export missing adapter GGUFs, spawn the servers, wait until they answer."""
    deployment = Deployment.objects.select_related("created_by").get(pk=deployment_id)
    if deployment.status != S.STARTING:
        return deployment
    try:
        for arm in deployment.arms.select_related("adapter").filter(adapter__isnull=False, export__isnull=True):
            _ensure_adapter_gguf(deployment_id, arm.adapter, deployment.created_by, deployment.worker)
        arms = _spawn_arms(deployment_id)
        last_check = [0.0]

        def stopped() -> bool:  # the user stopped it meanwhile (checked once a second)
            if time.monotonic() - last_check[0] < 1.0:
                return False
            last_check[0] = time.monotonic()
            return not _status_is(deployment_id, S.STARTING)

        for arm in arms:
            seconds = serving.wait_healthy(pid=arm.pid, host=arm.host, port=arm.port, log_path=arm.log_path,
                                           timeout=START_TIMEOUT_S, should_stop=stopped, api_key=arm.api_key)
            DeploymentArm.objects.filter(pk=arm.pk).update(healthy_at=timezone.now(), checked_at=timezone.now(),
                                                           log_tail=serving.log_tail(arm.log_path, lines=LOG_LINES))
            event(DEPLOYMENT, deployment_id, f"Arm {arm.label} answers on port {arm.port} ({seconds:.1f} s to load)",
                   data={"arm": arm.label, "load_seconds": round(seconds, 2)})
    except (serving.ServerFailed, NexusError, OSError) as exc:
        if _status_is(deployment_id, S.STARTING):
            return deployment_fail(deployment_id=deployment_id, error=public_error(exc, what="Starting the server"))
        return Deployment.objects.get(pk=deployment_id)
    with transaction.atomic():
        if Deployment.objects.filter(pk=deployment_id, status=S.STARTING).update(status=S.RUNNING,
                                                                                started_at=timezone.now()):
            status_event(DEPLOYMENT, deployment_id, S.RUNNING, "Running: the endpoint takes requests")
    return Deployment.objects.get(pk=deployment_id)


def serve_address() -> str:
    """Where the proxy reaches this host's servers: NEXUS_SERVE_ADDRESS, else the bind address (this
    host's name when servers bind every interface)."""
    if settings.NEXUS_SERVE_ADDRESS:
        return settings.NEXUS_SERVE_ADDRESS
    return host_name() if settings.NEXUS_SERVE_BIND in ("0.0.0.0", "::") else settings.NEXUS_SERVE_BIND


def _stop_arms(deployment: Deployment) -> None:
    """Stop its servers: here when this is their host, else by the host's own worker."""
    if deployment.host and deployment.host != host_name():
        from deployments_app.tasks import stop_deployment_servers

        transaction.on_commit(lambda: stop_deployment_servers.apply_async((deployment.pk,),
                                                                          queue=host_queue(deployment.host)))
        return
    for arm in deployment.arms.all():
        serving.stop(arm.pid, arm.port)
        if arm.log_path:
            DeploymentArm.objects.filter(pk=arm.pk).update(log_tail=serving.log_tail(arm.log_path, lines=LOG_LINES),
                                                           checked_at=timezone.now())
    deployment.arms.update(pid=None, healthy_at=None)


@transaction.atomic
def deployment_fail(*, deployment_id: int, error: str, statuses: tuple[str, ...] = Deployment.LIVE) -> Deployment:
    """Mark a live deployment failed with a visible error and stop whatever of it still runs."""
    deployment = Deployment.objects.select_for_update().get(pk=deployment_id)
    if deployment.status not in statuses:
        return deployment
    _stop_arms(deployment)
    deployment.status, deployment.error, deployment.stopped_at = S.FAILED, error[-20_000:], timezone.now()
    deployment.save(update_fields=["status", "error", "stopped_at", "updated_at"])
    status_event(DEPLOYMENT, deployment_id, S.FAILED, f"Failed: {error}", level=JobEvent.Level.ERROR)
    return deployment


def deployment_stop(*, deployment: Deployment) -> Deployment:
    """Ask for a stop: the deployment is `stopping` until the worker on its host has stopped the
    servers (SIGTERM, then SIGKILL) and marked it stopped. One that never reached a host has nothing
    running and is stopped at once. Idempotent."""
    with transaction.atomic():
        deployment = Deployment.objects.select_for_update().get(pk=deployment.pk)
        if not deployment.is_live:
            return deployment
        if not deployment.host:
            deployment.status, deployment.stopped_at = S.STOPPED, timezone.now()
            deployment.save(update_fields=["status", "stopped_at", "updated_at"])
            status_event(DEPLOYMENT, deployment.pk, S.STOPPED, "Stopped before it started")
            return deployment
        if deployment.status != S.STOPPING:
            deployment.status = S.STOPPING
            deployment.save(update_fields=["status", "updated_at"])
            status_event(DEPLOYMENT, deployment.pk, S.STOPPING, f"Stopping: asking {deployment.host} to stop its servers")
        from deployments_app.tasks import stop_deployment_servers

        host = deployment.host
        transaction.on_commit(lambda: stop_deployment_servers.apply_async((deployment.pk,), queue=host_queue(host)))
    return deployment


def deployment_stop_here(*, deployment_id: int) -> Deployment:
    """On the deployment's host: stop its servers and mark it stopped (when it is still stopping)."""
    with transaction.atomic():
        deployment = Deployment.objects.select_for_update().get(pk=deployment_id)
        if deployment.host and deployment.host != host_name():
            raise RuntimeError(f"deployment {deployment_id} runs on {deployment.host}, not {host_name()}")
        _stop_arms(deployment)
        if deployment.status == S.STOPPING:
            deployment.status, deployment.stopped_at = S.STOPPED, timezone.now()
            deployment.save(update_fields=["status", "stopped_at", "updated_at"])
            status_event(DEPLOYMENT, deployment.pk, S.STOPPED, "Stopped")
    return deployment


def deployments_check_host(*, host: str) -> list[int]:
    """On `host`, from the reaper's rounds: running deployments with an arm whose server died (or
    whose pid now belongs to something else) become failed with that server's log tail as the error;
    the others get their log tails refreshed; a stop whose message was lost is finished. Returns
    the failed ones."""
    failed = []
    for deployment in Deployment.objects.filter(host=host, status__in=(S.RUNNING, S.STOPPING)).prefetch_related("arms"):
        if deployment.status == S.STOPPING and deployment.updated_at < timezone.now() - timezone.timedelta(minutes=1):
            deployment_stop_here(deployment_id=deployment.pk)
            continue
        if deployment.status != S.RUNNING:
            continue
        dead = [a for a in deployment.arms.all() if not serving.is_alive(a.pid, a.port)]
        if not dead:
            for arm in deployment.arms.all():
                DeploymentArm.objects.filter(pk=arm.pk).update(
                    checked_at=timezone.now(), log_tail=serving.log_tail(arm.log_path, lines=LOG_LINES))
            continue
        parts = [f"Arm {a.label} ({a.serves}): llama.cpp server pid {a.pid} on port {a.port} is no longer running. "
                 f"Last lines of its log:\n{serving.log_tail(a.log_path, lines=20)}" for a in dead]
        if deployment_fail(deployment_id=deployment.pk, error="\n\n".join(parts), statuses=(S.RUNNING,)).status == S.FAILED:
            failed.append(deployment.pk)
    return failed


def deployments_host_lost(*, host: str) -> list[int]:
    """No worker on `host` has been heard from for NEXUS_HOST_LOST_AFTER_S: its live deployments
    are given up (their servers, if the machine still runs, cannot be reached from here)."""
    ids = list(Deployment.objects.filter(host=host, status__in=Deployment.LIVE).values_list("pk", flat=True))
    minutes = settings.NEXUS_HOST_LOST_AFTER_S / 60
    for pk in ids:
        with transaction.atomic():
            if Deployment.objects.filter(pk=pk, status__in=Deployment.LIVE).update(
                    status=S.FAILED, stopped_at=timezone.now(), updated_at=timezone.now(),
                    error=f"No worker on {host}, the machine running its servers, has been heard from for "
                          f"{minutes:g} minutes. Start it again to run it on a live machine."):
                status_event(DEPLOYMENT, pk, S.FAILED, f"Failed: host {host} lost", level=JobEvent.Level.ERROR)
    return ids


def deployments_using(*, adapter: LoRAAdapter) -> list[Deployment]:
    """Live deployments with an arm serving the adapter directly or through one of its exports."""
    return list(_serving(adapter).filter(status__in=Deployment.LIVE))


def _serving(adapter: LoRAAdapter) -> QuerySet[Deployment]:
    return Deployment.objects.filter(Q(arms__adapter=adapter) | Q(arms__export__adapter=adapter)).distinct()


def deployments_delete_ended(*, adapter: LoRAAdapter) -> int:
    """With an adapter being deleted: its stopped or failed deployments go too (they could not start
    again without it; their arms protect the adapter row). Returns how many."""
    ended = _serving(adapter).exclude(status__in=Deployment.LIVE)
    ids = list(ended.values_list("pk", flat=True))
    Deployment.objects.filter(pk__in=ids).delete()
    return len(ids)


@transaction.atomic
def deployment_delete(*, deployment: Deployment) -> None:
    """Delete a deployment that is not live, with its request records (its log files stay in var/)."""
    _lock_ended(deployment, code="in_use", hint="stop it first").delete()


# ---- routing, the proxy and request records ---------------------------------------------------------------


def deployment_arm_pick(*, deployment: Deployment, rng: random.Random | None = None) -> DeploymentArm:
    """An arm by weighted random choice among arms with a share of the traffic."""
    if deployment.status != S.RUNNING:
        raise NexusError(f"Deployment '{deployment.name}' is {deployment.status}; start it first.", code="not_running",
                         status_code=409)
    arms = [a for a in deployment.arms.all() if a.weight > 0 and a.port]
    if not arms:
        raise NexusError("No arm of this deployment takes traffic.", code="not_running", status_code=409)
    return (rng or random).choices(arms, weights=[a.weight for a in arms])[0]


def deployment_endpoint(*, deployment: Deployment, arm: DeploymentArm | None = None) -> tuple[str, str]:
    """An OpenAI-compatible base URL (ending in /v1) of a running deployment's arm and the API key
    its server requires, for internal code on this machine (distillation teacher, evaluation
    target). Picks an arm by weight unless one is named. Calls made with it are not recorded;
    `deployment_call` routes and records them."""
    arm = arm or deployment_arm_pick(deployment=deployment)
    return f"http://{arm.host}:{arm.port}/v1", arm.api_key


def deployment_public_path(*, deployment: Deployment) -> str:
    """The Nexus proxy's base path (ending in /v1) that clients use with a token."""
    return reverse("api-deployment-openai", kwargs={"deployment_id": deployment.pk, "endpoint": "models"}
                   ).removesuffix("/models")


def deployment_request_record(*, deployment: Deployment, arm: DeploymentArm, endpoint: str, status_code: int,
                              latency_ms: int, user=None, usage: dict | None = None) -> DeploymentRequest:
    usage = usage or {}
    return DeploymentRequest.objects.create(
        deployment=deployment, arm=arm, endpoint=endpoint, status_code=status_code, latency_ms=max(0, latency_ms),
        prompt_tokens=int(usage.get("prompt_tokens") or 0), completion_tokens=int(usage.get("completion_tokens") or 0),
        user=user if getattr(user, "is_authenticated", False) else None)


def _check_endpoint(endpoint: str, method: str) -> None:
    if ENDPOINTS.get(endpoint) != method:
        raise NexusError(f"{method} /v1/{endpoint} is not served (served: "
                         f"{', '.join(f'{m} /v1/{e}' for e, m in ENDPOINTS.items())})", code="not_found",
                         status_code=404)


@dataclass
class ProxyResult:
    """An arm's answer. For a stream, iterate `chunks` (the SSE bytes as they come), then call
    `finish()` (also when the client went away): it closes the upstream and records the request."""

    arm: DeploymentArm
    status_code: int
    content_type: str
    body: bytes = b""
    chunks: Iterator[bytes] | None = None
    finish: Callable[[], None] = lambda: None


def _unreachable(deployment: Deployment, arm: DeploymentArm, endpoint: str, user, started: float,
                 exc: Exception, *, record: bool) -> NexusError:
    if record:
        deployment_request_record(deployment=deployment, arm=arm, endpoint=endpoint, status_code=502, user=user,
                                  latency_ms=int((time.perf_counter() - started) * 1000))
    deployment_check_soon(deployment=deployment)
    return NexusError(f"Arm {arm.label}'s llama.cpp server did not answer ({type(exc).__name__}); its host "
                      f"({deployment.host}) is asked to check it.", code="upstream_error", status_code=502)


def deployment_check_soon(*, deployment: Deployment) -> None:
    """Ask the deployment's host to check its servers now rather than at the reaper's next round."""
    from nexus.tasks import check_host

    if deployment.host:
        try:
            check_host.apply_async((DEPLOYMENT.name, deployment.host), queue=host_queue(deployment.host),
                                   expires=settings.NEXUS_REAP_EVERY_S)
        except Exception:  # noqa: BLE001 - the broker is down: the reaper's next round checks it
            pass


def deployment_call(*, deployment: Deployment, endpoint: str, method: str = "POST", payload: dict | None = None,
                    user=None, stream: bool = False) -> ProxyResult:
    """Route one OpenAI request to an arm by weight, send it to that arm's server and record it
    (generations only: a GET such as /v1/models is a read and records nothing).

    Internal code (distillation, evaluation) calls this to go through the deployment like a client
    does. With `stream`, the request is recorded when the stream ends: usage from the last chunk
    when the server sends one, else the number of content chunks as completion tokens."""
    _check_endpoint(endpoint, method)
    arm = deployment_arm_pick(deployment=deployment)
    url = f"http://{arm.host}:{arm.port}/v1/{endpoint}"
    started = time.perf_counter()
    try:
        r = requests.request(method, url, json=payload if method == "POST" else None, stream=stream,
                             headers=serving.auth_headers(arm.api_key), timeout=(5, PROXY_TIMEOUT_S))
    except requests.RequestException as exc:
        raise _unreachable(deployment, arm, endpoint, user, started, exc, record=method == "POST") from exc

    def record(status_code: int, usage: dict | None) -> None:
        if method != "POST":
            return
        deployment_request_record(deployment=deployment, arm=arm, endpoint=endpoint, status_code=status_code,
                                  latency_ms=int((time.perf_counter() - started) * 1000), user=user, usage=usage)

    content_type = r.headers.get("content-type", "application/json")
    if not stream or r.status_code != 200:
        body = r.content
        usage = None
        if r.status_code == 200 and "json" in content_type:
            try:
                usage = json.loads(body).get("usage")
            except (ValueError, AttributeError):
                usage = None
        record(r.status_code, usage)
        return ProxyResult(arm=arm, status_code=r.status_code, content_type=content_type, body=body)

    seen: dict[str, Any] = {"usage": None, "content_chunks": 0, "status_code": 200, "finished": False}

    def finish() -> None:
        if seen["finished"]:
            return
        seen["finished"] = True
        r.close()
        record(seen["status_code"], seen["usage"] or {"completion_tokens": seen["content_chunks"]})

    return ProxyResult(arm=arm, status_code=200, content_type=content_type, chunks=_relay(r, seen), finish=finish)


_DATA = re.compile(rb"^data:\s?(.*)$")


def _relay(r: requests.Response, seen: dict[str, Any]) -> Iterator[bytes]:
    """Pass SSE lines through unchanged, noting usage and content chunks in `seen`."""
    try:
        for line in r.iter_lines(chunk_size=None):
            yield line + b"\n"
            match = _DATA.match(line)
            if not match or match.group(1).strip() in (b"", b"[DONE]"):
                continue
            try:
                chunk = json.loads(match.group(1))
            except ValueError:
                continue
            seen["usage"] = chunk.get("usage") or seen["usage"]
            choice = (chunk.get("choices") or [{}])[0]
            if (choice.get("delta") or {}).get("content") or choice.get("text"):
                seen["content_chunks"] += 1
    except requests.RequestException:
        seen["status_code"] = 502


# ---- reads for the pages and the status API -----------------------------------------------------------------


def deployment_arm_stats(*, deployment: Deployment) -> list[dict[str, Any]]:
    """Per arm: requests, errors, tokens and throughput over all recorded requests."""
    totals = {row["arm_id"]: row for row in deployment.requests.values("arm_id").annotate(
        requests=Count("id"), errors=Count("id", filter=~Q(status_code=200)), prompt_tokens=Sum("prompt_tokens"),
        completion_tokens=Sum("completion_tokens"), latency_ms=Sum("latency_ms"))}
    out = []
    for arm in deployment.arms.all():
        row = totals.get(arm.pk, {})
        completion, latency = row.get("completion_tokens") or 0, row.get("latency_ms") or 0
        out.append({"arm": arm, "requests": row.get("requests", 0), "errors": row.get("errors", 0),
                    "prompt_tokens": row.get("prompt_tokens") or 0, "completion_tokens": completion,
                    "tokens_per_s": round(completion / (latency / 1000), 1) if latency else None})
    return out


def deployment_recent_requests(*, deployment: Deployment, limit: int = 20) -> list[DeploymentRequest]:
    return list(deployment.requests.select_related("arm", "user")[:limit])


def deployment_health(*, deployment: Deployment) -> list[dict[str, Any]]:
    """Per arm: does its server answer /v1/models over the network (as the proxy reaches it), and
    how fast; `alive` is what its host last found of the process (`checked_at`). A read: nothing
    is written."""
    out = []
    for arm in deployment.arms.all():
        started = time.perf_counter()
        answer = serving.health(arm.host, arm.port, timeout=2.0, api_key=arm.api_key) if arm.port and arm.pid else None
        out.append({"label": arm.label, "alive": bool(arm.pid), "healthy": answer is not None,
                    "latency_ms": int((time.perf_counter() - started) * 1000) if answer is not None else None,
                    "healthy_at": arm.healthy_at, "checked_at": arm.checked_at})
    return out


def deployment_log_tail(*, arm: DeploymentArm, lines: int = LOG_LINES) -> str:
    """The end of the arm's server log as its host last read it (`checked_at`)."""
    return "\n".join(arm.log_tail.splitlines()[-lines:])
