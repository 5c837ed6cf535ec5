"""`manage.py nexus_reap_jobs`: what an operator runs when workers or servers died unseen."""
from __future__ import annotations

import io
import subprocess
import sys

import pytest
from django.core.management import call_command

from adapters_app.models import AdapterExport
from deployments_app.models import Deployment
from tests.factories import make_adapter, make_deployment, make_job

pytestmark = pytest.mark.django_db


def test_reap_command_fails_deployments_whose_server_died_and_resends_queued_exports(user, base_model, tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no longer runs anything
    deployment = make_deployment(user, base_model, status="running")
    log = tmp_path / "arm.log"
    log.write_text("INFO:     Uvicorn running on http://127.0.0.1:1\nSegmentation fault\n")
    deployment.arms.update(pid=gone.pid, port=1, log_path=str(log))
    export = AdapterExport.objects.create(team=deployment.team, adapter=make_adapter(make_job(user, base_model)),
                                          kind="adapter_gguf")
    out = io.StringIO()
    call_command("nexus_reap_jobs", stdout=out)
    deployment.refresh_from_db()
    assert deployment.status == Deployment.Status.FAILED
    assert "is no longer running" in deployment.error and "Segmentation fault" in deployment.error
    assert f"Marked 1 deployment(s) failed: [{deployment.pk}]" in out.getvalue()
    assert f"exports [{export.pk}]" in out.getvalue()
