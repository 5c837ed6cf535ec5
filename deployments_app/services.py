"""Deployments: managed llama.cpp servers behind one OpenAI-compatible endpoint per deployment.

The writes: create, start, launch (on a worker), stop, fail, the host's checks. Processes are
handled by `deployments_app.engine.serving`; this module keeps their rows right. Routing and the
proxy are in `proxy.py`, the reads in `selectors.py`."""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from adapters_app.models import AdapterExport, LoRAAdapter
from deployments_app.engine import serving
from deployments_app.models import Deployment, DeploymentArm
from nexus.errors import NexusError
from nexus.storage import stage_file
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
LOG_LINES = 80  # of each server's log, kept on its arm by the host


@dataclass
class ArmInput:
    """What one arm serves: the base model alone, base + an adapter, or a merged GGUF export."""

    weight: int = 100
    adapter: LoRAAdapter | None = None
    export: AdapterExport | None = None




def gguf_local_path(name: str) -> str:
    """A local path for a GGUF given as an absolute path or a storage name (llama.cpp needs a file):
    on an object store, this host's cached copy."""
    return str(stage_file(name)) if name else ""


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


def _ask_host_to_stop(deployment: Deployment) -> None:
    """Once the transaction commits, the worker on the deployment's host stops its servers."""
    from deployments_app.tasks import stop_deployment_servers

    pk, host = deployment.pk, deployment.host
    transaction.on_commit(lambda: stop_deployment_servers.apply_async((pk,), queue=host_queue(host)))


def _stop_arms(deployment: Deployment) -> None:
    """Stop its servers: here when this is their host, else by the host's own worker."""
    if deployment.host and deployment.host != host_name():
        _ask_host_to_stop(deployment)
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
        _ask_host_to_stop(deployment)
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
