"""The job kit's reaper, as `manage.py nexus_reap_jobs` runs one round of it (beat runs the same)."""
from __future__ import annotations

import io
import subprocess
import sys

import pytest
import redis
from django.conf import settings
from django.core.management import call_command
from django.utils import timezone

from adapters_app.models import AdapterExport
from deployments_app.models import Deployment
from nexus.jobs.workers import host_name, host_queue
from nexus.models import WorkerHeartbeat
from tests.factories import claim_job, make_adapter, make_deployment, make_job

pytestmark = pytest.mark.django_db


def _dead_server_deployment(user, base_model, tmp_path, host: str) -> Deployment:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no longer runs anything
    deployment = make_deployment(user, base_model, status="running")
    Deployment.objects.filter(pk=deployment.pk).update(host=host)
    log = tmp_path / "arm.log"
    log.write_text("INFO:     Uvicorn running on http://127.0.0.1:1\nSegmentation fault\n")
    deployment.arms.update(pid=gone.pid, port=1, log_path=str(log))
    return deployment


def test_the_host_check_fails_a_deployment_whose_server_died_with_its_log_tail(user, base_model, tmp_path):
    from deployments_app.services import deployments_check_host

    deployment = _dead_server_deployment(user, base_model, tmp_path, host=host_name())
    elsewhere = _dead_server_deployment(user, base_model, tmp_path, host="another-host")
    assert deployments_check_host(host=host_name()) == [deployment.pk]
    deployment.refresh_from_db()
    assert deployment.status == Deployment.Status.FAILED
    assert "is no longer running" in deployment.error and "Segmentation fault" in deployment.error
    elsewhere.refresh_from_db()
    assert elsewhere.status == Deployment.Status.RUNNING  # not this host's to judge


def test_reap_command_asks_live_hosts_gives_up_lost_ones_and_resends_lost_work(user, base_model, tmp_path):
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    broker.delete(host_queue(host_name()))
    here = _dead_server_deployment(user, base_model, tmp_path, host=host_name())
    lost = _dead_server_deployment(user, base_model, tmp_path, host="gone-host")
    WorkerHeartbeat.objects.create(name=f"w@{host_name()}", host=host_name(), seen_at=timezone.now())
    WorkerHeartbeat.objects.create(name="w@gone-host", host="gone-host",
                                   seen_at=timezone.now() - timezone.timedelta(hours=1))
    export = AdapterExport.objects.create(team=here.team, adapter=make_adapter(make_job(user, base_model)),
                                          kind="adapter_gguf")  # queued, but the broker never got it
    job = make_job(user, base_model, name="held by the lost worker")
    claim_job(job.pk, worker="w@gone-host")
    out = io.StringIO()
    call_command("nexus_reap_jobs", stdout=out)
    text = out.getvalue()
    assert f"export: sent again [{export.pk}]" in text
    assert f"training: orphaned [{job.pk}]" in text  # no checkpoint: failed, with a reason
    job.refresh_from_db()
    assert job.status == "failed" and "worker" in job.error
    # the live host is asked (its worker does the check); the web side never looked at its processes
    assert f"hosts asked to check their servers: {host_name()}" in text
    assert broker.llen(host_queue(host_name())) == 1
    here.refresh_from_db()
    assert here.status == Deployment.Status.RUNNING
    # no worker on gone-host for an hour: its deployment is given up
    lost.refresh_from_db()
    assert lost.status == Deployment.Status.FAILED and "gone-host" in lost.error
    # a second round sends nothing twice: the broker holds the export's task now
    out = io.StringIO()
    call_command("nexus_reap_jobs", stdout=out)
    assert "export: sent again" not in out.getvalue()
