"""Deployments as a kind of job (see nexus/jobs). Starting one is work a CPU worker claims; its
llama.cpp servers then run on that worker's machine (the deployment's `host`), so everything that
touches them (liveness checks, stopping, reading their logs) runs there, from the host's own queue.
A start whose worker is gone is queued again; a running deployment is checked on its host by the
reaper's rounds, and given up when no worker on its host has been heard from for a long time."""
from __future__ import annotations

from nexus.jobs import JobKind, register, requeue
from nexus.jobs.workers import host_name

DEPLOYMENT = register(JobKind(
    name="deployment", label="Starting the server", model="deployments_app.Deployment", queue="cpu",
    waiting="starting", working=("starting",),
    run="deployments_app.jobs.run", fail="deployments_app.jobs.fail", orphaned="deployments_app.jobs.orphaned",
    loader="deployments_app.selectors.deployment_get", lock=4, time_limit_s=40 * 60,
    claim_message="Starting on {worker}", claim_fields=lambda: {"host": host_name()},
    live_hosts="deployments_app.jobs.live_hosts", host_check="deployments_app.services.deployments_check_host",
    host_lost="deployments_app.services.deployments_host_lost"))


def run(job_id: int) -> None:
    from deployments_app.services import deployment_launch

    deployment_launch(deployment_id=job_id)


def fail(*, job_id: int, error: str) -> None:
    from deployments_app.services import deployment_fail

    deployment_fail(deployment_id=job_id, error=error)


def orphaned(row) -> None:  # noqa: ANN001
    requeue(DEPLOYMENT, row.pk, f"The worker starting this deployment ({row.worker}) stopped; starting it again")


def live_hosts() -> set[str]:
    from deployments_app.models import Deployment

    return set(Deployment.objects.filter(status__in=Deployment.LIVE).exclude(host="")
               .values_list("host", flat=True).distinct())
