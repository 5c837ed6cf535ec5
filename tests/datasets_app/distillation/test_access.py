"""Who may see and change distillation jobs, templates and teacher connections: another team's user
gets 404 on every one of them (and learns nothing from a job body that names them); a viewer of the
team reads but gets 403 on every write."""
from __future__ import annotations

import pytest

from datasets_app.distillation.models import DistillationJob, DistillationTemplate, TeacherConnection
from nexus.models import Membership
from nexus.teams import team_member_add
from tests.conftest import api_client_for
from tests.datasets_app.distillation.conftest import KEY, openai_teacher
from tests.datasets_app.distillation.support import API, create_job, error_of, items, job, job_body, run_task
from tests.factories import make_ready_dataset, make_user, personal_team

pytestmark = pytest.mark.django_db


@pytest.fixture
def owned(api, user, teacher) -> dict:
    """A finished job with items, a template and a saved connection of alice's team."""
    created = create_job(api, job_body(openai_teacher(teacher), ["First question here?", "Second question here?"]))
    assert run_task(created["id"]) is None
    template = api.post(f"{API}/templates", {"name": "Ours", "prompt": "Say {x}.", "variables": {"x": ["hi"]}},
                        format="json").json()
    connection = api.post(f"{API}/connections", {"name": "ours", "model": "gpt-4o-mini", "api_key": KEY,
                                                 "base_url": teacher.openai_base_url}, format="json").json()
    item = items(api, created["id"])[0]
    teacher.reset()
    return {"job": created["id"], "item": item["id"], "template": template["id"], "connection": connection["id"],
            "team": personal_team(user)}


def endpoints(o: dict) -> list[tuple[str, str, dict | None]]:
    job_url, conn_url = f"{API}/jobs/{o['job']}", f"{API}/connections/{o['connection']}"
    return [
        ("get", job_url, None),
        ("delete", job_url, None),
        ("get", f"{job_url}/preview", None),
        ("get", f"{job_url}/events", None),
        ("post", f"{job_url}/items/{o['item']}/review", {"decision": "reject"}),
        ("post", f"{job_url}/approve", {"name": "mine now"}),
        ("get", f"{API}/templates/{o['template']}", None),
        ("get", f"{API}/templates/ours", None),
        ("delete", f"{API}/templates/{o['template']}", None),
        ("post", f"{API}/templates/preview", {"template_id": o["template"]}),
        ("get", conn_url, None),
        ("patch", conn_url, {"model": "gpt-4o"}),
        ("delete", conn_url, None),
        ("post", f"{conn_url}/test", None),
    ]


def _call(client, method: str, url: str, body: dict | None):
    return getattr(client, method)(url, body, format="json") if body is not None else getattr(client, method)(url)


def _unchanged(o: dict) -> None:
    row = job(o["job"])
    assert row.status == "completed" and row.dataset_id is None and (row.accepted, row.rejected) == (2, 0)
    assert DistillationTemplate.objects.filter(pk=o["template"]).exists()
    connection = TeacherConnection.objects.get(pk=o["connection"])
    assert connection.model == "gpt-4o-mini" and connection.last_check == {}


def test_an_outsider_gets_404_from_every_endpoint_and_changes_nothing(owned, outsider_api, teacher):
    for method, url, body in endpoints(owned):
        r = _call(outsider_api, method, url, body)
        assert r.status_code == 404, (method, url, r.status_code, r.content)
        assert error_of(r)["code"] == "not_found"
    _unchanged(owned)
    assert teacher.count() == 0  # not even a test call went out with alice's key


def test_an_outsider_sees_none_of_the_teams_rows_in_lists(owned, outsider_api):
    assert outsider_api.get(f"{API}/jobs").json()["count"] == 0
    assert outsider_api.get(f"{API}/connections").json()["count"] == 0
    assert "Ours" not in {t["name"] for t in outsider_api.get(f"{API}/templates").json()["results"]}
    team = owned["team"]
    for url in (f"{API}/jobs", f"{API}/connections", f"{API}/templates"):
        assert outsider_api.get(url, {"team": team.pk}).status_code == 404


def test_an_outsider_cannot_use_the_teams_rows_in_a_body(owned, outsider_api, outsider, user, teacher):
    team = owned["team"]
    r = outsider_api.post(f"{API}/jobs", {**job_body(openai_teacher(teacher)), "team": team.pk}, format="json")
    assert r.status_code == 404
    r = outsider_api.post(f"{API}/jobs", job_body({"connection_id": owned["connection"]}), format="json")
    assert r.status_code == 400 and error_of(r)["message"].startswith("teacher_config.connection_id: ")
    missing = outsider_api.post(f"{API}/jobs", job_body({"connection_id": 987654}), format="json")
    assert error_of(missing)["message"] == error_of(r)["message"].replace(str(owned["connection"]), "987654")
    dataset = make_ready_dataset(user)
    body = job_body(openai_teacher(teacher))
    body["prompts_config"] = {"dataset_id": dataset.pk}
    r = outsider_api.post(f"{API}/jobs", body, format="json")
    assert r.status_code == 400 and error_of(r)["message"].startswith("prompts_config.dataset_id: ")
    body["prompts_config"] = {"template_id": owned["template"]}
    r = outsider_api.post(f"{API}/jobs", body, format="json")
    assert r.status_code == 400 and error_of(r)["message"].startswith("prompts_config.template_id: ")
    r = outsider_api.post(f"{API}/estimate", {**job_body(openai_teacher(teacher)), "team": team.pk}, format="json")
    assert r.status_code == 404
    r = outsider_api.post(f"{API}/connections/test", {**openai_teacher(teacher), "team": team.pk}, format="json")
    assert r.status_code == 404
    assert not DistillationJob.objects.filter(created_by=outsider).exists() and teacher.count() == 0


@pytest.fixture
def viewer_api(owned):
    viewer = make_user("victor")
    team_member_add(team=owned["team"], user=viewer, role=Membership.Role.VIEWER)
    return api_client_for(viewer)


def test_a_viewer_reads_the_teams_jobs_connections_and_templates(owned, viewer_api):
    for method, url, body in endpoints(owned):
        if method == "get":
            # a slug names a template within a team: the caller's personal one unless another is named
            r = viewer_api.get(url, {"team": owned["team"].pk} if url.endswith("/ours") else {})
            assert r.status_code == 200, (url, r.content)
            assert KEY not in r.content.decode()
    assert viewer_api.get(f"{API}/jobs").json()["count"] == 1
    assert viewer_api.get(f"{API}/connections").json()["count"] == 1
    r = viewer_api.post(f"{API}/templates/preview", {"template_id": owned["template"]}, format="json")
    assert r.status_code == 200 and r.json()["prompts"] == ["Say hi."]
    assert viewer_api.get(f"{API}/templates/ours").status_code == 404  # not in the viewer's personal team


def test_a_viewer_gets_403_on_every_write_and_changes_nothing(owned, viewer_api, teacher):
    team = owned["team"].pk
    writes = [(m, u, b) for m, u, b in endpoints(owned) if m != "get" and not u.endswith("templates/preview")]
    writes += [
        ("post", f"{API}/jobs", {**job_body(openai_teacher(teacher)), "team": team}),
        ("post", f"{API}/templates", {"name": "Theirs", "prompt": "Hi.", "team": team}),
        ("post", f"{API}/connections", {"name": "theirs", "model": "gpt-4o-mini", "api_key": KEY,
                                        "base_url": teacher.openai_base_url, "team": team}),
        ("post", f"{API}/connections/test", {**openai_teacher(teacher), "team": team}),
    ]
    for method, url, body in writes:
        r = _call(viewer_api, method, url, body)
        assert r.status_code == 403, (method, url, r.status_code, r.content)
        assert error_of(r)["code"] == "permission_denied"
    _unchanged(owned)
    assert DistillationJob.objects.count() == 1 and DistillationTemplate.objects.count() == 1
    assert TeacherConnection.objects.count() == 1 and teacher.count() == 0


def test_a_viewer_cannot_cancel_a_queued_job(api, teacher, viewer_api):
    created = create_job(api, job_body(openai_teacher(teacher)))
    assert viewer_api.delete(f"{API}/jobs/{created['id']}").status_code == 403
    assert job(created["id"]).status == "queued" and not job(created["id"]).cancel_requested
