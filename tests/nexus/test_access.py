"""Every endpoint and page: another team's user gets 404; a viewer cannot write."""
from __future__ import annotations

import pytest
from django.test import Client

from nexus.models import Membership
from nexus.teams import team_member_add
from tests.conftest import api_client_for
from tests.factories import make_adapter, make_deployment, make_job, make_user, personal_team


@pytest.fixture
def owned(user, base_model):
    from datasets_app.models import DistillationItem, DistillationJob, DistillationTeacher, TeacherConnection

    job = make_job(user, base_model)
    distillation = DistillationJob.objects.create(team=job.team, name="d", status="completed")
    teacher = DistillationTeacher.objects.create(job=distillation, model="gpt-4o-mini")
    item = DistillationItem.objects.create(job=distillation, group=0, teacher=teacher, prompt="p", status="accepted",
                                           record={"instruction": "p", "output": "an answer"})
    from evaluation_app.models import JudgeRun, PerformanceTest
    from tests.factories import make_comparison_session

    session = make_comparison_session(user, base_model, n=1)
    return {"dataset": job.dataset, "job": job, "adapter": make_adapter(job), "deployment": make_deployment(user, base_model),
            "distillation": distillation, "item": item,
            "connection": TeacherConnection.objects.create(team=job.team, name="c", model="gpt-4o-mini"),
            "session": session, "comparison": session.comparisons.get(),
            "judge": JudgeRun.objects.create(team=job.team, session=session, model="gpt-4o", status="completed"),
            "performance": PerformanceTest.objects.create(team=job.team, adapter=session.adapter, base_model=base_model,
                                                          status="completed")}


def _login(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.django_db
def test_new_user_gets_a_personal_team_they_own(user):
    team = personal_team(user)
    assert team.personal_owner == user
    assert Membership.objects.get(team=team, user=user).role == "owner"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("kind", "url"),
    [
        ("dataset", "/api/v1/finetune/datasets/{id}"),
        ("job", "/api/v1/finetune/jobs/{id}"),
        ("job", "/api/v1/finetune/jobs/{id}/events"),
        ("job", "/api/v1/finetune/jobs/{id}/metrics"),
        ("job", "/api/v1/finetune/jobs/{id}/logs"),
        ("job", "/api/v1/finetune/jobs/{id}/checkpoints"),
        ("adapter", "/api/v1/finetune/adapters/{id}"),
        ("deployment", "/api/v1/finetune/deployments/{id}"),
        ("deployment", "/api/v1/finetune/deployments/{id}/status"),
        ("deployment", "/api/v1/finetune/deployments/{id}/logs"),
        ("distillation", "/api/v1/finetune/distillation/jobs/{id}"),
        ("distillation", "/api/v1/finetune/distillation/jobs/{id}/preview"),
        ("distillation", "/api/v1/finetune/distillation/jobs/{id}/events"),
        ("connection", "/api/v1/finetune/distillation/connections/{id}"),
        ("session", "/api/v1/finetune/eval/compare/{id}"),
        ("session", "/api/v1/finetune/eval/compare/{id}/export"),
        ("session", "/api/v1/finetune/eval/compare/{id}/events"),
        ("judge", "/api/v1/finetune/eval/judge/{id}"),
        ("judge", "/api/v1/finetune/eval/judge/{id}/events"),
        ("performance", "/api/v1/finetune/eval/performance/{id}"),
        ("performance", "/api/v1/finetune/eval/performance/{id}/events"),
    ],
)
def test_outsider_gets_404_from_the_api(owned, outsider_api, api, kind, url):
    target = url.format(id=owned[kind].pk)
    assert api.get(target).status_code == 200
    r = outsider_api.get(target)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("kind", "url"),
    [
        ("dataset", "/finetune/datasets/{id}/"),
        ("job", "/finetune/training/{id}/"),
        ("adapter", "/finetune/adapters/{id}/"),
        ("adapter", "/finetune/adapters/{id}/exports/"),
        ("deployment", "/finetune/deployments/{id}/"),
        ("deployment", "/finetune/deployments/{id}/chat/"),
        ("distillation", "/finetune/distillation/{id}/"),
        ("distillation", "/finetune/distillation/{id}/items/"),
    ],
)
def test_outsider_gets_404_from_the_pages(owned, user, outsider, kind, url):
    target = url.format(id=owned[kind].pk)
    assert _login(user).get(target).status_code == 200
    assert _login(outsider).get(target).status_code == 404


@pytest.mark.django_db
def test_outsider_cannot_cancel_or_train_on_anothers_dataset(owned, outsider, outsider_api):
    assert outsider_api.delete(f"/api/v1/finetune/jobs/{owned['job'].pk}").status_code == 404
    assert _login(outsider).post(f"/finetune/training/{owned['job'].pk}/cancel/").status_code == 404
    r = outsider_api.post("/api/v1/finetune/jobs", {"name": "x", "base_model": "SmolLM2-135M-Instruct",
                                                    "dataset_id": owned["dataset"].pk}, format="json")
    assert r.status_code == 404
    owned["job"].refresh_from_db()
    assert owned["job"].cancel_requested is False


@pytest.mark.django_db
def test_lists_show_only_the_users_teams(owned, outsider_api, api):
    for url in ("/api/v1/finetune/eval/compare", "/api/v1/finetune/eval/judge", "/api/v1/finetune/eval/performance"):
        assert len(api.get(url).json()["results"]) == 1
        assert outsider_api.get(url).json()["results"] == []
    for url in ("/api/v1/finetune/datasets", "/api/v1/finetune/jobs"):
        assert len(api.get(url).json()["results"]) == 2  # the owned job's, and the evaluated adapter's
        assert outsider_api.get(url).json()["results"] == []
    page = _login(make_user("eve")).get("/finetune/datasets/")
    assert owned["dataset"].name.encode() not in page.content


@pytest.mark.django_db
def test_naming_a_team_you_are_not_in_is_404(owned, outsider_api, user):
    team = personal_team(user)
    assert outsider_api.get("/api/v1/finetune/datasets", {"team": team.pk}).status_code == 404
    assert outsider_api.get("/api/v1/finetune/datasets", {"team": team.slug}).status_code == 404


@pytest.mark.django_db
def test_viewer_reads_evaluations_writes_none_and_rates_only_when_the_team_allows(owned, user):
    viewer = make_user("valerie")
    team = personal_team(user)
    team_member_add(team=team, user=viewer, role=Membership.Role.VIEWER)
    client = api_client_for(viewer)
    sid, cid = owned["session"].pk, owned["comparison"].pk
    base = "/api/v1/finetune/eval"
    assert client.get(f"{base}/compare/{sid}").status_code == 200
    assert client.get(f"{base}/judge/{owned['judge'].pk}").status_code == 200
    for method, url, body in (("delete", f"{base}/compare/{sid}", None), ("post", f"{base}/compare/{sid}/run", None),
                              ("post", f"{base}/compare/{sid}/cancel", None),
                              ("post", f"{base}/compare/{sid}/prompts", {"prompts": ["x"]}),
                              ("delete", f"{base}/judge/{owned['judge'].pk}", None),
                              ("delete", f"{base}/performance/{owned['performance'].pk}", None),
                              ("post", f"{base}/compare", {"team": team.pk, "name": "x", "adapter_id": owned["adapter"].pk}),
                              ("post", f"{base}/performance", {"team": team.pk, "adapter_id": owned["adapter"].pk}),
                              ("post", f"{base}/compare/{sid}/rate", {"comparison_id": cid, "preferred": "A"})):
        r = getattr(client, method)(url, body, format="json") if body else getattr(client, method)(url)
        assert r.status_code == 403, (method, url, r.status_code)
    team.viewers_rate_evaluations = True
    team.save(update_fields=["viewers_rate_evaluations"])
    r = client.post(f"{base}/compare/{sid}/rate", {"comparison_id": cid, "preferred": "A"}, format="json")
    assert r.status_code == 201
    assert client.delete(f"{base}/compare/{sid}").status_code == 403


@pytest.mark.django_db
def test_viewer_can_read_but_not_write(owned, user):
    viewer = make_user("victor")
    team_member_add(team=personal_team(user), user=viewer, role=Membership.Role.VIEWER)
    client = api_client_for(viewer)
    assert client.get(f"/api/v1/finetune/jobs/{owned['job'].pk}").status_code == 200
    r = client.delete(f"/api/v1/finetune/jobs/{owned['job'].pk}")
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "permission_denied"
    r = client.post("/api/v1/finetune/jobs", {"team": personal_team(user).pk, "name": "x", "base_model": "SmolLM2-135M-Instruct",
                                              "dataset_id": owned["dataset"].pk}, format="json")
    assert r.status_code == 403


@pytest.mark.django_db
def test_member_works_in_a_shared_team_by_naming_it(owned, user, base_model):
    member = make_user("mia")
    team = personal_team(user)
    team_member_add(team=team, user=member, role=Membership.Role.MEMBER)
    client = api_client_for(member)
    assert client.get(f"/api/v1/finetune/datasets/{owned['dataset'].pk}").status_code == 200
    r = client.post("/api/v1/finetune/jobs", {"team": team.slug, "name": "shared", "base_model": base_model.name,
                                              "dataset_id": owned["dataset"].pk}, format="json")
    assert r.status_code == 201, r.content
    # without naming the team, the call acts in the member's personal team, which does not own the dataset
    r = client.post("/api/v1/finetune/jobs", {"name": "x", "base_model": base_model.name,
                                              "dataset_id": owned["dataset"].pk}, format="json")
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("dataset_id")


@pytest.mark.django_db
def test_pages_require_login(client):
    r = client.get("/finetune/training/")
    assert r.status_code == 302 and "/accounts/login/" in r["Location"]


@pytest.mark.django_db
def test_viewer_gets_403_on_write_pages_and_uploads(owned, user):
    from tests.factories import alpaca_upload

    viewer = make_user("vera")
    team = personal_team(user)
    team_member_add(team=team, user=viewer, role=Membership.Role.VIEWER)
    page = _login(viewer)
    assert page.get(f"/finetune/training/{owned['job'].pk}/").status_code == 200
    assert page.post(f"/finetune/training/{owned['job'].pk}/cancel/").status_code == 403
    assert page.post("/finetune/datasets/upload/", {"team": team.pk, "format": "auto", "file": alpaca_upload()}).status_code == 403
    r = api_client_for(viewer).post("/api/v1/finetune/datasets", {"team": team.pk, "file": alpaca_upload()}, format="multipart")
    assert r.status_code == 403 and r.json()["error"]["code"] == "permission_denied"
    owned["job"].refresh_from_db()
    assert owned["job"].cancel_requested is False


@pytest.mark.django_db
def test_log_export_is_for_members_only(owned, user, outsider):
    from tests.factories import record_event

    record_event(owned["job"], "secret step log")
    r = _login(user).get(f"/finetune/training/{owned['job'].pk}/log.txt")
    assert r.status_code == 200 and b"secret step log" in r.content
    assert _login(outsider).get(f"/finetune/training/{owned['job'].pk}/log.txt").status_code == 404
    assert _login(outsider).post(f"/finetune/training/{owned['job'].pk}/checkpoints/1/adapter/").status_code == 404



def _db_state() -> dict:
    """Every table's rows, as values: what a refused request must leave exactly as it was."""
    from django.apps import apps

    return {model._meta.label: sorted(map(repr, model.objects.values_list()))
            for model in apps.get_models()
            if model._meta.app_label in ("nexus", "datasets_app", "training_app", "adapters_app", "deployments_app",
                                         "evaluation_app")}


def _wizard_form(base_model, dataset) -> dict:
    from tests.training_app.test_wizard import _form

    return _form(base_model, dataset)


def _upload(o):
    from tests.factories import alpaca_upload

    return {"team": o["team"].pk, "format": "auto", "name": "x", "file": alpaca_upload()}


# every page that takes a POST, with a body that would work for a member who may write
VIEWER_POSTS = [
    ("datasets/upload/", _upload),
    ("datasets/{dataset_id}/remove-duplicates/", dict),
    ("datasets/{dataset_id}/restore-duplicates/", dict),
    ("datasets/{dataset_id}/split/", dict),
    ("datasets/{dataset_id}/validate/", dict),
    ("datasets/{dataset_id}/contamination/", lambda o: {"against": o["dataset"].pk}),
    ("datasets/{dataset_id}/delete/", dict),
    ("training/new/", lambda o: _wizard_form(o["base_model"], o["dataset"])),
    ("training/{job_id}/cancel/", dict),
    ("training/{job_id}/pause/", dict),
    ("training/{job_id}/resume/", dict),
    ("training/{job_id}/checkpoint/", dict),
    ("training/{job_id}/checkpoints/1/adapter/", dict),
    ("adapters/{adapter_id}/delete/", dict),
    ("adapters/{adapter_id}/exports/", lambda o: {"kind": "model_gguf", "quantization": "q8_0"}),
    ("deployments/new/", lambda o: {"name": "viewer-deploy", "arm_a": o["adapter"].pk}),
    ("deployments/new/", lambda o: {"name": "viewer-deploy", "arm_a": "", "team": o["team"].pk,
                                    "base_model": o["base_model"].name}),
    ("deployments/{deployment_id}/start/", dict),
    ("deployments/{deployment_id}/stop/", dict),
    ("distillation/{distillation_id}/approve/", lambda o: {"name": "viewer-dataset"}),
    ("distillation/{distillation_id}/items/{item_id}/review/", lambda o: {"decision": "reject"}),
    ("distillation/{distillation_id}/cancel/", dict),
    ("distillation/connections/{connection_id}/test/", dict),
]


@pytest.mark.django_db
def test_every_page_post_is_refused_to_a_viewer_and_changes_nothing(owned, user, base_model):
    """The pages check write access as the APIs do (a viewer once started a deployment through
    the deploy form): each write form answers a viewer 403 and leaves every table as it was. Then
    every page of the URLconf gets a viewer's POST, so a new page that writes without checking
    fails here too."""
    import re

    from nexus import urls

    viewer = make_user("vic")
    team = personal_team(user)
    team_member_add(team=team, user=viewer, role=Membership.Role.VIEWER)
    objects = {**owned, "team": team, "base_model": base_model}
    ids = {f"{k}_id": v.pk for k, v in owned.items()}
    page = _login(viewer)
    before = _db_state()
    for route, body in VIEWER_POSTS:
        r = page.post(f"/finetune/{route.format(**ids)}", body(objects))
        assert r.status_code == 403, (route, r.status_code)
        assert _db_state() == before, route

    for pattern in urls.pages:
        route = re.sub(r"<int:(\w+)>", lambda m: str(ids.get(m.group(1), 1)), str(pattern.pattern))
        for action in (["remove-duplicates", "restore-duplicates", "split", "validate", "contamination", "delete"]
                       if "<slug:action>" in route else [""]):
            url = "/finetune/" + route.replace("<slug:action>", action)
            page.post(url, {"name": "x", "arm_a": owned["adapter"].pk, "team": team.pk})
            assert _db_state() == before, url
