"""What only a deployment's own host can do (its servers are processes there): sent to that host's
queue (nexus.jobs.workers.host_queue). Starting is the job kit's run task; checks are the reaper's."""
from __future__ import annotations

from celery import shared_task


@shared_task(name="deployments.stop_servers", acks_late=True, ignore_result=True)
def stop_deployment_servers(deployment_id: int) -> None:
    from deployments_app.services import deployment_stop_here

    deployment_stop_here(deployment_id=deployment_id)
