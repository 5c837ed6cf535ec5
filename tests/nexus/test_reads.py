"""Reads never change state: every GET of the API and of the pages leaves every table as it was,
including over a deployment whose server is gone (a read once marked it failed)."""
from __future__ import annotations

import re

import pytest
from django.test import Client

from tests.factories import make_adapter, make_deployment, make_job
from tests.nexus.test_access import _db_state

pytestmark = pytest.mark.django_db


def _routes(patterns, prefix: str = ""):
    """Every URL pattern of the URLconf as a route string, includes followed."""
    from django.urls import URLPattern, URLResolver

    for p in patterns:
        if isinstance(p, URLResolver):
            if str(p.pattern) == "admin/":
                continue  # Django's own admin: read-only views are Django's business
            yield from _routes(p.url_patterns, prefix + str(p.pattern))
        elif isinstance(p, URLPattern):
            yield prefix + str(p.pattern)


@pytest.fixture
def running_everything(user, base_model):
    """One of each row, with a deployment that says it runs a server whose process is long gone."""
    from adapters_app.models import AdapterExport
    from nexus.events import job_event_record

    job = make_job(user, base_model, status="training", current_step=3, total_steps=10)
    adapter = make_adapter(job)
    export = AdapterExport.objects.create(team=job.team, adapter=adapter, kind="merge", status="running",
                                          worker="w@nowhere")
    deployment = make_deployment(user, base_model, adapter=adapter, status="running")
    deployment.arms.update(pid=999_999, port=1, log_path="/nonexistent/log")
    job_event_record(kind="training", job_id=job.pk, message="step 3", data={"progress": 30})
    from datasets_app.models import DistillationItem, DistillationJob, DistillationTeacher, TeacherConnection

    distillation = DistillationJob.objects.create(team=job.team, name="d", status="running", worker="w@nowhere",
                                                  config={"rate_limit": 60, "batch_size": 2})
    teacher = DistillationTeacher.objects.create(job=distillation, model="gpt-4o-mini")
    item = DistillationItem.objects.create(job=distillation, group=0, teacher=teacher, prompt="p")
    connection = TeacherConnection.objects.create(team=job.team, name="c", model="gpt-4o-mini")
    from evaluation_app.models import JudgeRun, PerformanceTest
    from tests.factories import make_comparison_session

    session = make_comparison_session(user, base_model, n=2, blind=True)
    session.status = "running"
    session.worker = "w@nowhere"
    session.save(update_fields=["status", "worker"])
    judge = JudgeRun.objects.create(team=job.team, session=session, model="gpt-4o", status="running", worker="w@nowhere")
    performance = PerformanceTest.objects.create(team=job.team, adapter=adapter, base_model=base_model, status="queued")
    return {"session_id": session.pk, "judge_id": judge.pk, "performance_id": performance.pk,"dataset_id": job.dataset.pk, "job_id": job.pk, "adapter_id": adapter.pk, "export_id": export.pk,
            "deployment_id": deployment.pk, "step": 3, "preset_id": "balanced", "endpoint": "models",
            "action": "preview", "distillation_id": distillation.pk, "item_id": item.pk,
            "connection_id": connection.pk, "template_id": "coding-assistant"}


def test_no_get_of_any_api_endpoint_or_page_changes_a_row(user, running_everything):
    from nexus import urls

    client = Client()
    client.force_login(user)
    before = _db_state()
    walked = []
    for route in _routes(urls.urlpatterns):
        url = "/" + re.sub(r"<(?:\w+:)?(\w+)>", lambda m: str(running_everything.get(m.group(1), 1)), route)
        r = client.get(url)
        walked.append((url, r.status_code))
        # 502: the deployment's proxy answers that its (long gone) server did not answer
        assert r.status_code < 500 or (r.status_code == 502 and "/v1/" in url), (url, r.status_code)
        assert _db_state() == before, f"GET {url} changed the database"
    assert len(walked) > 60
    assert ("/api/v1/finetune/deployments/%d" % running_everything["deployment_id"], 200) in walked
    assert ("/api/v1/finetune/distillation/jobs/%d/preview" % running_everything["distillation_id"], 200) in walked
    assert ("/finetune/distillation/%d/" % running_everything["distillation_id"], 200) in walked
    assert ("/api/v1/finetune/eval/compare/%d" % running_everything["session_id"], 200) in walked
    assert ("/api/v1/finetune/eval/compare/%d/export" % running_everything["session_id"], 200) in walked


def test_a_user_made_outside_nexus_has_a_personal_team_before_any_page_is_read():
    """Users made by createsuperuser or the admin get their personal team when they are made, so
    the upload page (which offers it) has nothing to create while it is read."""
    from django.contrib.auth import get_user_model

    from nexus.models import Team

    admin = get_user_model().objects.create_superuser("root2", "root2@example.com", "pw-123456-x")
    assert Team.objects.filter(personal_owner=admin).exists()
    client = Client()
    client.force_login(admin)
    before = _db_state()
    assert client.get("/finetune/datasets/upload/").status_code == 200
    assert _db_state() == before
