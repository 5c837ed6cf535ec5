"""The distillation pages with Django's test client: the list, the new-job form and its partials
(test connection, template preview, estimate), the job page, review, cancel and approve; who may
see and change what; and the teacher's key never in a page."""
from __future__ import annotations

import re

import pytest
from django.test import Client

from datasets_app.distillation.models import DistillationItem, DistillationJob, DistillationTemplate, TeacherConnection
from datasets_app.distillation.services import distillation_job_create, teacher_connection_create
from nexus.models import Membership
from nexus.teams import team_member_add
from tests.datasets_app.distillation.conftest import JUDGE_MODEL, KEY, openai_teacher, run_job
from tests.factories import make_user, personal_team

pytestmark = pytest.mark.django_db

PROMPTS = ["What is 15% of 80?", "Name three primary colours.", "Explain what a hash map is."]


def _login(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def form_data(fake, **overrides) -> dict:
    data = {"name": "page job", "connection": "", "provider": "openai", "model": "gpt-4o-mini",
            "base_url": fake.openai_base_url, "api_key": KEY, "temperature": "0.7", "max_tokens": "256",
            "source": "prompts", "prompts": "\n".join(PROMPTS), "dataset": "", "template": "", "template_prompt": "",
            "template_variables": "", "template_system_prompt": "", "template_name": "", "num_examples": "",
            "mode": "response", "system_prompt": "", "quality_threshold": "0", "batch_size": "2", "rate_limit": "600",
            "output_format": "alpaca", "multi_teacher": "best", "judge": "", "min_words": "3", "check_language": "on",
            "near_threshold": "", "pivot_language": "French"}
    data.update(overrides)
    return data


def make_job(user, fake, prompts=PROMPTS) -> DistillationJob:
    return distillation_job_create(team=personal_team(user), user=user, body={
        "name": "colours", "teacher_config": openai_teacher(fake),
        "prompts_config": {"prompts": prompts}, "batch_size": 2, "rate_limit": 600})


def make_connection(user, fake) -> TeacherConnection:
    return teacher_connection_create(team=personal_team(user), user=user,
                                     raw={"name": "fake openai", **openai_teacher(fake)})


@pytest.fixture
def finished_job(user, teacher):
    """A job run to the end in this process: 'refusal' for the second prompt."""
    teacher.script = lambda r: "refusal" if "primary colours" in (r.get("prompt") or "") else "ok"
    job = make_job(user, teacher)
    run_job(job.pk)
    job.refresh_from_db()
    assert (job.status, job.accepted, job.rejected) == ("completed", 2, 1)
    return job


@pytest.fixture
def viewer(user):
    vic = make_user("vic")
    team_member_add(team=personal_team(user), user=vic, role=Membership.Role.VIEWER)
    return vic


# -- pages render -------------------------------------------------------------------------------------


def test_every_page_and_partial_renders_for_a_member(user, teacher, finished_job):
    make_connection(user, teacher)
    page = _login(user)
    r = page.get("/finetune/distillation/")
    assert r.status_code == 200
    html = r.content.decode()
    assert "colours" in html and "New distillation" in html and "fake openai" in html
    assert 'class="badge completed"' in html
    r = page.get("/finetune/distillation/new/")
    assert r.status_code == 200
    assert "Test connection" in r.content.decode() and "coding-assistant" in r.content.decode()
    r = page.get(f"/finetune/distillation/{finished_job.pk}/")
    assert r.status_code == 200
    html = r.content.decode()
    assert 'id="distill-progress" max="100" value="100.0"' in html
    assert 'data-reason="refusal"' in html and 'id="approve-form"' in html
    assert html.count('<tr id="item-') == 3
    r = page.get(f"/finetune/distillation/{finished_job.pk}/", HTTP_HX_REQUEST="true")
    assert r.status_code == 200 and r.content.decode().startswith('<div id="distill-status"')


def test_the_nav_links_to_distillation(user):
    html = _login(user).get("/finetune/datasets/").content.decode()
    assert 'href="/finetune/distillation/"' in html


def test_the_review_table_filters_by_status_and_reason_and_pages(user, finished_job):
    page = _login(user)
    url = f"/finetune/distillation/{finished_job.pk}/items/"
    rejected = page.get(url, {"status": "rejected"}).content.decode()
    assert rejected.count('<tr id="item-') == 1 and "primary colours" in rejected and 'data-reason="refusal"' in rejected
    accepted = page.get(url, {"status": "accepted"}).content.decode()
    assert accepted.count('<tr id="item-') == 2 and "primary colours" not in accepted
    assert page.get(url, {"status": "rejected", "reason": "refusal"}).content.decode().count('<tr id="item-') == 1
    assert page.get(url, {"status": "rejected", "reason": "duplicate"}).content.decode().count('<tr id="item-') == 0
    # a made-up filter is ignored rather than an error
    assert page.get(url, {"status": "everything", "page": "x"}).content.decode().count('<tr id="item-') == 3


# -- access ---------------------------------------------------------------------------------------------


def test_an_outsider_gets_404_from_the_job_page_partials_and_posts(user, outsider, teacher, finished_job):
    conn = make_connection(user, teacher)
    item = finished_job.items.first()
    page = _login(outsider)
    j = finished_job.pk
    for url in (f"/finetune/distillation/{j}/", f"/finetune/distillation/{j}/items/"):
        assert page.get(url).status_code == 404, url
    for url, body in ((f"/finetune/distillation/{j}/cancel/", {}),
                      (f"/finetune/distillation/{j}/approve/", {"name": "stolen"}),
                      (f"/finetune/distillation/{j}/items/{item.pk}/review/", {"decision": "reject"}),
                      (f"/finetune/distillation/connections/{conn.pk}/test/", {})):
        assert page.post(url, body).status_code == 404, url
    team = personal_team(user)
    for url, body in (("/finetune/distillation/new/", form_data(teacher, team=team.pk)),
                      ("/finetune/distillation/new/estimate/", form_data(teacher, team=team.pk)),
                      ("/finetune/distillation/new/template-preview/", {"team": team.pk, "template_prompt": "x"}),
                      ("/finetune/distillation/new/test-teacher/", form_data(teacher, team=team.pk)),
                      ("/finetune/distillation/new/test-teacher/", form_data(teacher, connection=conn.pk)),
                      ("/finetune/distillation/connections/", {"name": "x", "team": team.pk, "provider": "openai",
                                                              "model": "gpt-4o-mini", "api_key": KEY})):
        assert page.post(url, body).status_code == 404, url
    # the outsider's own list shows none of it
    html = page.get("/finetune/distillation/").content.decode()
    assert "colours" not in html and "fake openai" not in html
    item.refresh_from_db()
    assert item.review == "" and DistillationJob.objects.get(pk=j).dataset_id is None
    assert DistillationJob.objects.count() == 1 and TeacherConnection.objects.count() == 1


def test_a_viewer_may_read_but_gets_403_on_every_post(user, viewer, teacher, finished_job):
    conn = make_connection(user, teacher)
    team = personal_team(user)
    item = finished_job.items.filter(status="accepted").first()
    page = _login(viewer)
    j = finished_job.pk
    assert page.get(f"/finetune/distillation/{j}/").status_code == 200
    assert page.get(f"/finetune/distillation/{j}/items/").status_code == 200
    posts = [(f"/finetune/distillation/{j}/cancel/", {}),
             (f"/finetune/distillation/{j}/approve/", {"name": "viewer's"}),
             (f"/finetune/distillation/{j}/items/{item.pk}/review/", {"decision": "reject"}),
             (f"/finetune/distillation/connections/{conn.pk}/test/", {}),
             ("/finetune/distillation/connections/", {"name": "v", "team": team.pk, "provider": "openai",
                                                     "model": "gpt-4o-mini", "api_key": KEY}),
             ("/finetune/distillation/new/", form_data(teacher, team=team.pk)),
             ("/finetune/distillation/new/estimate/", form_data(teacher, team=team.pk)),
             ("/finetune/distillation/new/template-preview/", {"team": team.pk, "template_prompt": "x"}),
             ("/finetune/distillation/new/test-teacher/", form_data(teacher, team=team.pk)),
             ("/finetune/distillation/new/test-teacher/", form_data(teacher, connection=conn.pk))]
    for url, body in posts:
        assert page.post(url, body).status_code == 403, url
    item.refresh_from_db()
    conn.refresh_from_db()
    assert item.review == "" and conn.last_check == {}
    assert DistillationJob.objects.count() == 1 and DistillationJob.objects.get(pk=j).dataset_id is None


def test_the_key_is_in_no_page_partial_or_re_rendered_form(user, teacher, finished_job):
    conn = make_connection(user, teacher)
    page = _login(user)
    responses = [
        page.get("/finetune/distillation/"),
        page.get("/finetune/distillation/new/"),
        page.get(f"/finetune/distillation/{finished_job.pk}/"),
        page.get(f"/finetune/distillation/{finished_job.pk}/items/"),
        page.post(f"/finetune/distillation/connections/{conn.pk}/test/", HTTP_HX_REQUEST="true"),
        page.post("/finetune/distillation/new/test-teacher/", form_data(teacher), HTTP_HX_REQUEST="true"),
        page.post("/finetune/distillation/new/estimate/", form_data(teacher), HTTP_HX_REQUEST="true"),
        # a bad form comes back with the fields as typed, but not the key
        page.post("/finetune/distillation/new/", form_data(teacher, batch_size="1000")),
        page.post("/finetune/distillation/connections/", {"name": "fake openai", "provider": "openai",
                                                          "model": "gpt-4o-mini", "api_key": KEY,
                                                          "base_url": teacher.openai_base_url}),
    ]
    for r in responses:
        html = r.content.decode()
        assert KEY not in html and KEY[4:-4] not in html, r.request["PATH_INFO"]
    assert responses[-2].status_code == 400 and responses[-1].status_code == 409
    assert f"••••{KEY[-4:]}" in responses[0].content.decode()


# -- the new-job form ------------------------------------------------------------------------------------


def test_the_form_creates_the_job_and_redirects_to_its_page(user, teacher):
    r = _login(user).post("/finetune/distillation/new/", form_data(teacher, name="from the page", batch_size="3"))
    job = DistillationJob.objects.get(name="from the page")
    assert r.status_code == 302 and r["Location"] == f"/finetune/distillation/{job.pk}/"
    assert job.team == personal_team(user) and job.num_items == 3 and job.config["batch_size"] == 3
    teacher_row = job.teachers.get()
    assert (teacher_row.model, teacher_row.key_last4, teacher_row.max_tokens) == ("gpt-4o-mini", KEY[-4:], 256)
    assert sorted(job.items.values_list("prompt", flat=True)) == sorted(PROMPTS)


def test_the_form_uses_a_saved_connection(user, teacher):
    conn = make_connection(user, teacher)
    r = _login(user).post("/finetune/distillation/new/", form_data(teacher, connection=conn.pk, api_key="", model=""))
    assert r.status_code == 302, r.content.decode()[:2000]
    assert DistillationJob.objects.get().teachers.get().connection == conn


def test_a_teams_ready_dataset_gives_the_prompts(user, teacher):
    from tests.factories import make_ready_dataset

    dataset = make_ready_dataset(user)
    page = _login(user)
    html = page.get("/finetune/distillation/new/", {"dataset": dataset.pk}).content.decode()
    assert f'<option value="{dataset.pk}" selected>' in html
    assert re.search(r'<input[^>]*name="source" value="dataset"[^>]*checked', html)
    r = page.post("/finetune/distillation/new/", form_data(teacher, name="rephrased", source="dataset",
                                                           dataset=dataset.pk, mode="rephrase", num_examples="4"))
    assert r.status_code == 302, r.content.decode()[:3000]
    job = DistillationJob.objects.get(name="rephrased")
    assert job.mode == "rephrase" and job.num_items == 4 and job.config["source"]["dataset_id"] == dataset.pk
    assert all(job.items.values_list("reference", flat=True))  # the dataset's answers are kept


def test_a_written_template_goes_inline_a_named_one_is_saved_and_a_builtin_one_is_used_as_is(user, teacher):
    page = _login(user)
    written = form_data(teacher, name="tips", source="template", template_prompt="Give a {tone} tip about {topic}.",
                        template_variables="tone: short | friendly\ntopic: tea | rain | maps", num_examples="6")
    r = page.post("/finetune/distillation/new/", written)
    assert r.status_code == 302, r.content.decode()[:3000]
    job = DistillationJob.objects.get(name="tips")
    assert not DistillationTemplate.objects.exists()  # inline: no team template for a one-off
    assert job.config["source"]["template"]["prompt"] == "Give a {tone} tip about {topic}."
    assert job.config["source"]["variables"]["topic"] == ["tea", "rain", "maps"]
    assert job.num_items == 6 and job.prompts_to_generate == 0

    r = page.post("/finetune/distillation/new/", {**written, "name": "tips again", "template_name": "Tea tips"})
    assert r.status_code == 302, r.content.decode()[:3000]
    saved = DistillationTemplate.objects.get(team=personal_team(user))
    assert saved.name == "Tea tips" and saved.variables["topic"] == ["tea", "rain", "maps"]
    assert DistillationJob.objects.get(name="tips again").config["source"]["template_id"] == str(saved.pk)

    from datasets_app.distillation.engine.templates import BUILTIN_TEMPLATES
    from datasets_app.distillation.views import variables_text

    builtin = BUILTIN_TEMPLATES["coding-assistant"]
    r = page.post("/finetune/distillation/new/", form_data(
        teacher, name="code", source="template", template="coding-assistant", template_prompt=builtin.prompt,
        template_variables=variables_text(builtin.variables), template_system_prompt=builtin.system_prompt,
        num_examples="4"))
    assert r.status_code == 302, r.content.decode()[:3000]
    assert DistillationJob.objects.get(name="code").config["source"]["template_id"] == "coding-assistant"
    assert DistillationTemplate.objects.count() == 1


@pytest.mark.parametrize(("overrides", "field", "message"), [
    ({"model": ""}, "model", "is required"),
    ({"api_key": "", "base_url": ""}, "api_key", "is required for openai"),
    ({"batch_size": "100"}, "batch_size", "must be from 1 to 64"),
    ({"prompts": "   "}, "prompts", "must be a non-empty list"),
    ({"source": "dataset"}, "dataset", "must be the id of one of the team"),
    ({"base_url": "http://10.1.2.3/v1"}, "base_url", "'10.1.2.3' is not on NEXUS_TEACHER_ALLOWED_HOSTS"),
    ({"mode": "rephrase"}, "mode", "augments an existing dataset"),
    ({"source": "template", "template_prompt": "About {topic}", "template_variables": "topic:"},
     "template_variables", "no values are given for it"),
    ({"source": "template", "template_prompt": "About {to pic}"}, "template_prompt", "'{to pic}' is not allowed"),
])
def test_bad_input_comes_back_with_the_services_message_next_to_the_field(user, teacher, overrides, field, message):
    r = _login(user).post("/finetune/distillation/new/", form_data(teacher, **overrides))
    assert r.status_code in (400, 409)
    html = r.content.decode().replace("&#x27;", "'")
    at = html.find(message)
    assert at > 0, f"{message!r} not in the page:\n{re.findall(r'<span class=.error.>[^<]*', html)}"
    assert html.rfind('<span class="error">', 0, at) > html.rfind("</span>", 0, at), "the message is not an error"
    # the error is shown right after the field's own input(s)
    assert re.findall(r'name="(\w+)"', html[:at])[-1] == field
    assert DistillationJob.objects.count() == 0 and DistillationTemplate.objects.count() == 0


def test_the_template_preview_renders_a_sample_prompt_and_counts_combinations(user):
    r = _login(user).post("/finetune/distillation/new/template-preview/", {
        "template_prompt": "Explain {topic} to a {level}.", "template_variables": "topic: rain | tides\nlevel: child | expert",
        "template_system_prompt": "You teach {level}s."})
    html = r.content.decode()
    assert r.status_code == 200
    assert re.search(r'id="template-combinations">4<', html)
    assert re.search(r"Explain (rain|tides) to a (child|expert)\.", html)
    assert re.search(r"You teach (child|expert)s\.", html)


@pytest.mark.parametrize(("prompt", "variables", "message"), [
    ("Explain {to pic}.", "", "&#x27;{to pic}&#x27; is not allowed"),
    ("Explain {topic.", "", "is never closed"),
    ("Explain {topic}.", "", "the prompt uses {topic} but no values are given for it"),
    ("Explain {topic}.", "topic rain", "Variables: line 1: write it as name: value one | value two"),
])
def test_the_template_preview_names_what_is_wrong(user, prompt, variables, message):
    r = _login(user).post("/finetune/distillation/new/template-preview/",
                          {"template_prompt": prompt, "template_variables": variables})
    assert r.status_code == 200
    html = r.content.decode()
    assert 'id="template-error"' in html and message in html


def test_the_estimate_prices_gpt_4o_mini_in_dollars(user, teacher):
    r = _login(user).post("/finetune/distillation/new/estimate/", form_data(teacher, api_key=""))
    html = r.content.decode()
    assert r.status_code == 200 and 'id="estimate-result"' in html
    expected = re.search(r'id="estimate-expected">\$(\d+\.\d{4})<', html)
    assert expected and float(expected.group(1)) > 0
    assert re.search(r'id="estimate-requests">3<', html) and "openai:gpt-4o-mini" in html


def test_the_estimate_names_an_unpriced_model_and_a_form_error(user, teacher):
    page = _login(user)
    html = page.post("/finetune/distillation/new/estimate/", form_data(teacher, model="my-own-model")).content.decode()
    assert 'id="estimate-unpriced"' in html and "my-own-model" in html
    html = page.post("/finetune/distillation/new/estimate/", form_data(teacher, batch_size="100")).content.decode()
    assert 'id="estimate-error"' in html and "batch_size: must be from 1 to 64" in html


def test_the_estimate_of_an_unsaved_template_counts_its_examples_and_what_the_teacher_writes(user, teacher):
    html = _login(user).post("/finetune/distillation/new/estimate/", form_data(
        teacher, source="template", template_prompt="Tip about {topic}", template_variables="topic: tea | rain",
        num_examples="10")).content.decode()
    # 2 combinations, 8 more prompts written by the teacher (one request per 20), 10 answers
    assert re.search(r'id="estimate-prompts">10 <span class="muted">\(8 written by the teacher\)', html), html
    assert re.search(r'id="estimate-requests">11<', html)
    assert DistillationTemplate.objects.count() == 0


# -- test connection ---------------------------------------------------------------------------------------


def test_test_connection_says_connected_or_what_failed(user, teacher):
    page = _login(user)
    ok = page.post("/finetune/distillation/new/test-teacher/", form_data(teacher), HTTP_HX_REQUEST="true")
    assert "Connected: model gpt-4o-mini" in ok.content.decode()
    wrong_key = page.post("/finetune/distillation/new/test-teacher/", form_data(teacher, api_key="sk-wrong-key-0000"))
    assert "Wrong key" in wrong_key.content.decode()
    unknown = page.post("/finetune/distillation/new/test-teacher/", form_data(teacher, model="gpt-nonexistent"))
    assert "Unknown model" in unknown.content.decode()
    missing = page.post("/finetune/distillation/new/test-teacher/", form_data(teacher, model=""))
    assert "teacher_config.model: is required" in missing.content.decode()


def test_test_connection_of_a_saved_connection_records_the_result(user, teacher):
    conn = make_connection(user, teacher)
    page = _login(user)
    r = page.post(f"/finetune/distillation/connections/{conn.pk}/test/", HTTP_HX_REQUEST="true")
    assert "Connected" in r.content.decode()
    conn.refresh_from_db()
    assert conn.last_check["ok"] is True
    teacher.stop()
    r = page.post(f"/finetune/distillation/connections/{conn.pk}/test/", HTTP_HX_REQUEST="true")
    assert "Unreachable" in r.content.decode()
    # without htmx: back to the list with the result as a message
    r = page.post(f"/finetune/distillation/connections/{conn.pk}/test/", follow=True)
    assert r.redirect_chain[-1][0] == "/finetune/distillation/" and "fake openai:" in r.content.decode()


def test_a_connection_is_saved_from_the_list_page_or_its_error_shown_by_the_field(user, teacher):
    page = _login(user)
    body = {"name": "saved", "provider": "openai", "model": "gpt-4o-mini", "api_key": KEY,
            "base_url": teacher.openai_base_url}
    r = page.post("/finetune/distillation/connections/", body)
    assert r.status_code == 302 and TeacherConnection.objects.get().key_last4 == KEY[-4:]
    r = page.post("/finetune/distillation/connections/", {**body, "name": "other", "model": ""})
    assert r.status_code == 400 and re.search(r'invalid">\s*Model.*is required', r.content.decode(), re.S)


# -- job page actions ------------------------------------------------------------------------------------


def test_a_person_rejects_an_accepted_item_and_the_row_and_counts_change(user, finished_job):
    item = finished_job.items.filter(status="accepted").first()
    r = _login(user).post(f"/finetune/distillation/{finished_job.pk}/items/{item.pk}/review/", {"decision": "reject"},
                          HTTP_HX_REQUEST="true")
    html = r.content.decode()
    assert r.status_code == 200 and html.strip().startswith(f'<tr id="item-{item.pk}"')
    assert 'data-status="rejected"' in html and "by hand" in html and r["HX-Trigger"] == "distillation-reviewed"
    finished_job.refresh_from_db()
    assert (finished_job.accepted, finished_job.rejected) == (1, 2)
    # and accepts the refusal after all (it has an answer; a person may overrule the filters)
    refused = finished_job.items.get(reason="refusal")
    html = _login(user).post(f"/finetune/distillation/{finished_job.pk}/items/{refused.pk}/review/",
                             {"decision": "accept"}, HTTP_HX_REQUEST="true").content.decode()
    assert 'data-status="accepted"' in html


def test_a_review_the_service_refuses_says_why_in_the_row(user, teacher):
    job = make_job(user, teacher)
    item = job.items.first()
    html = _login(user).post(f"/finetune/distillation/{job.pk}/items/{item.pk}/review/", {"decision": "reject"},
                             HTTP_HX_REQUEST="true").content.decode()
    assert 'data-status="pending"' in html and "has no answer yet" in html


def test_approving_makes_a_dataset_and_goes_to_its_page(user, finished_job):
    page = _login(user)
    r = page.post(f"/finetune/distillation/{finished_job.pk}/approve/", {"name": "colour answers"})
    finished_job.refresh_from_db()
    assert finished_job.dataset is not None and finished_job.dataset.name == "colour answers"
    assert r.status_code == 302 and r["Location"] == f"/finetune/datasets/{finished_job.dataset_id}/"
    html = page.get(f"/finetune/distillation/{finished_job.pk}/").content.decode()
    assert 'id="distill-dataset"' in html and 'id="approve-form"' not in html
    r = page.post(f"/finetune/distillation/{finished_job.pk}/approve/", {"name": "again"}, follow=True)
    assert "already approved" in r.content.decode()


def test_cancel_stops_a_queued_job_and_the_partial_shows_it(user, teacher):
    job = make_job(user, teacher)
    r = _login(user).post(f"/finetune/distillation/{job.pk}/cancel/", HTTP_HX_REQUEST="true")
    assert r.status_code == 200 and 'class="badge cancelled"' in r.content.decode()
    assert 'id="cancel-button"' not in r.content.decode()
    r = _login(user).post(f"/finetune/distillation/{job.pk}/cancel/", HTTP_HX_REQUEST="true")
    assert 'id="control-error"' in r.content.decode()
    assert DistillationItem.objects.filter(job=job).count() == 3


# -- several teachers, a judge, deployed models, quality ---------------------------------------------------


def second_teacher(fake, n: int = 2, **overrides) -> dict:
    block = {"provider": "anthropic", "model": "claude-haiku-4-5", "base_url": fake.anthropic_base_url,
             "api_key": KEY, "connection": "", "deployment": ""}
    block.update(overrides)
    return {f"t{n}_{k}": v for k, v in block.items()}


def test_two_teachers_and_a_saved_judge_make_a_job_with_teacher_configs_and_judge_config(user, teacher, monkeypatch):
    from datasets_app.distillation import views

    conn = teacher_connection_create(team=personal_team(user), user=user,
                                     raw={"name": "judge", **openai_teacher(teacher, model=JUDGE_MODEL)})
    bodies = []
    real = views.distillation_job_create
    monkeypatch.setattr(views, "distillation_job_create", lambda **kw: bodies.append(kw["body"]) or real(**kw))
    r = _login(user).post("/finetune/distillation/new/", {
        **form_data(teacher, name="two", quality_threshold="0.5", judge=conn.pk), **second_teacher(teacher)})
    assert r.status_code == 302, r.content.decode()[:3000]
    (body,) = bodies
    assert "teacher_config" not in body and [t.get("model") for t in body["teacher_configs"]] == \
        ["gpt-4o-mini", "claude-haiku-4-5"]
    assert body["multi_teacher"] == "best" and body["judge_config"] == {"connection_id": conn.pk}
    job = DistillationJob.objects.get(name="two")
    teachers = list(job.teachers.order_by("role", "position").values_list("role", "model"))
    assert teachers == [("judge", JUDGE_MODEL), ("teacher", "gpt-4o-mini"), ("teacher", "claude-haiku-4-5")]
    assert job.teachers.get(role="judge").connection == conn
    assert job.config["multi_teacher"] == "best" and job.num_items == 6  # every teacher answers every prompt


def test_round_robin_shares_the_prompts_and_a_typed_judge_is_used_only_when_needed(user, teacher):
    page = _login(user)
    judge = {"judge": "typed", "judge_provider": "openai", "judge_model": JUDGE_MODEL,
             "judge_base_url": teacher.openai_base_url, "judge_api_key": KEY}
    r = page.post("/finetune/distillation/new/", {**form_data(teacher, name="rr", multi_teacher="round_robin"),
                                                 **second_teacher(teacher), **second_teacher(teacher, 3, model="gpt-4o",
                                                 provider="openai", base_url=teacher.openai_base_url), **judge})
    assert r.status_code == 302, r.content.decode()[:3000]
    job = DistillationJob.objects.get(name="rr")
    # round robin and no threshold: nothing to judge, so no judge
    assert job.config["multi_teacher"] == "round_robin" and job.num_items == 3
    assert not job.teachers.filter(role="judge").exists() and job.teachers.count() == 3
    r = page.post("/finetune/distillation/new/", {**form_data(teacher, name="judged", quality_threshold="0.6"),
                                                 **judge})
    assert r.status_code == 302, r.content.decode()[:3000]
    job = DistillationJob.objects.get(name="judged")
    assert job.teachers.get(role="judge").model == JUDGE_MODEL and job.config["quality_threshold"] == 0.6


def test_an_empty_extra_teacher_block_is_ignored_and_a_half_filled_one_is_named(user, teacher):
    page = _login(user)
    r = page.post("/finetune/distillation/new/", {**form_data(teacher, name="one"), **second_teacher(
        teacher, 4, model="", base_url="", api_key="")})
    assert r.status_code == 302 and DistillationJob.objects.get(name="one").teachers.count() == 1
    r = page.post("/finetune/distillation/new/", {**form_data(teacher, name="half"), **second_teacher(teacher, model="")})
    assert r.status_code == 400
    html = r.content.decode()
    at = html.find("is required (e.g.")
    assert at > 0 and re.findall(r'name="(\w+)"', html[:at])[-1] == "t2_model"
    assert KEY not in html and not DistillationJob.objects.filter(name="half").exists()


def test_the_estimate_lists_every_teacher_and_the_judge(user, teacher):
    html = _login(user).post("/finetune/distillation/new/estimate/", {
        **form_data(teacher, api_key=""), **second_teacher(teacher, api_key="")}).content.decode()
    assert 'id="estimate-result"' in html, html
    rows = [(role, name.strip()) for role, name in re.findall(r'<tr data-role="(\w+)"><td>([^<]+)<', html)]
    # best of two: both answer all 3 prompts and the judge (the first teacher) scores 6 answers
    assert rows == [("teacher", "openai:gpt-4o-mini"), ("teacher", "anthropic:claude-haiku-4-5"),
                    ("judge", "openai:gpt-4o-mini")]
    assert re.search(r'id="estimate-requests">12<', html)


@pytest.fixture
def deployment(user, base_model, teacher):
    """A running deployment whose one arm is the fake server, and a stopped one."""
    from nexus.secrets import secret_encrypt
    from tests.factories import make_deployment

    row = make_deployment(user, base_model, status="running")
    row.name = "house-model"
    row.save(update_fields=["name"])
    row.arms.update(port=teacher.port, api_key_encrypted=secret_encrypt("arm-key-1234567890"))
    teacher.api_key = "arm-key-1234567890"
    teacher.models.append(row.name)
    return row


def test_a_deployed_model_is_a_teacher_with_no_key_or_address(user, teacher, deployment, outsider):
    from tests.factories import make_deployment

    stopped = make_deployment(user, deployment.base_model, status="stopped")
    theirs = make_deployment(outsider, deployment.base_model, status="running")
    page = _login(user)
    html = page.get("/finetune/distillation/new/").content.decode()
    assert '<option value="deployed"' in html
    assert re.search(rf'<option value="{deployment.pk}">house-model \(running\)</option>', html)
    assert re.search(rf'<option value="{stopped.pk}" disabled>d \(stopped\)</option>', html)
    assert f'<option value="{theirs.pk}"' not in html
    deployed = form_data(teacher, name="self", provider="deployed", deployment=deployment.pk, model="", base_url="",
                         api_key="")
    check = page.post("/finetune/distillation/new/test-teacher/", deployed, HTTP_HX_REQUEST="true").content.decode()
    assert "check ok" in check and "house-model" in check
    estimate = page.post("/finetune/distillation/new/estimate/", deployed).content.decode()
    assert "deployed:house-model" in estimate
    r = page.post("/finetune/distillation/new/", deployed)
    assert r.status_code == 302, r.content.decode()[:3000]
    row = DistillationJob.objects.get(name="self").teachers.get()
    assert (row.provider, row.deployment_id, row.key_last4, row.base_url) == ("deployed", deployment.pk, "", "")
    # a stopped one is named by its field; another team's is not in the team
    r = page.post("/finetune/distillation/new/", {**deployed, "name": "stopped", "deployment": stopped.pk})
    assert r.status_code == 400 and "is not running (stopped)" in r.content.decode()
    check = page.post("/finetune/distillation/new/test-teacher/", {**deployed, "deployment": stopped.pk}).content
    assert b"is not running" in check
    r = page.post("/finetune/distillation/new/", {**deployed, "name": "theirs", "deployment": theirs.pk})
    assert r.status_code == 400 and not DistillationJob.objects.filter(name__in=["stopped", "theirs"]).exists()
    # as a second teacher, tested from its own block
    both = {**form_data(teacher, name="mixed"), **second_teacher(teacher, provider="deployed",
                                                                 deployment=deployment.pk, model="", base_url="",
                                                                 api_key="")}
    check = page.post("/finetune/distillation/new/test-teacher/", {**both, "which": "2"}).content.decode()
    assert "check ok" in check and "house-model" in check
    assert page.post("/finetune/distillation/new/", both).status_code == 302
    assert DistillationJob.objects.get(name="mixed").teachers.filter(provider="deployed").count() == 1


def test_the_judge_block_is_tested_with_its_own_settings(user, teacher):
    page = _login(user)
    body = {**form_data(teacher), "judge": "typed", "judge_provider": "openai", "judge_model": "gpt-nonexistent",
            "judge_base_url": teacher.openai_base_url, "judge_api_key": KEY, "which": "judge"}
    assert "Unknown model" in page.post("/finetune/distillation/new/test-teacher/", body).content.decode()
    body["judge"] = ""  # the first teacher
    assert "Connected: model gpt-4o-mini" in page.post("/finetune/distillation/new/test-teacher/", body).content.decode()


def test_quality_settings_and_the_pivot_language_reach_the_job(user, teacher):
    from tests.factories import make_ready_dataset

    page = _login(user)
    r = page.post("/finetune/distillation/new/", {
        **form_data(teacher, name="picky", min_words="7", near_threshold="0.9"), "check_language": ""})
    assert r.status_code == 302, r.content.decode()[:3000]
    assert DistillationJob.objects.get(name="picky").config["quality"] == \
        {"min_words": 7, "check_language": False, "near_threshold": 0.9}
    dataset = make_ready_dataset(user)
    r = page.post("/finetune/distillation/new/", form_data(teacher, name="pivot", source="dataset", dataset=dataset.pk,
                                                           mode="back_translate", pivot_language="German",
                                                           num_examples="2"))
    assert r.status_code == 302, r.content.decode()[:3000]
    job = DistillationJob.objects.get(name="pivot")
    assert job.config["pivot_language"] == "German" and job.config["quality"]["check_language"] is True
    r = page.post("/finetune/distillation/new/", form_data(teacher, name="bad", near_threshold="0.2"))
    assert r.status_code == 400 and not DistillationJob.objects.filter(name="bad").exists()


# -- deleting a connection or a template from the list ---------------------------------------------------


def test_a_connection_and_a_team_template_are_deleted_from_the_list(user, teacher):
    from datasets_app.distillation.services import template_create

    conn = make_connection(user, teacher)
    template = template_create(team=personal_team(user), user=user,
                               raw={"name": "Tea tips", "prompt": "Tip about {topic}", "variables": {"topic": ["tea"]}})
    page = _login(user)
    html = page.get("/finetune/distillation/").content.decode()
    assert f'data-template="{template.pk}"' in html and "Tea tips" in html and "coding-assistant" not in html
    assert f'action="/finetune/distillation/connections/{conn.pk}/delete/"' in html and "onsubmit=\"return confirm(" in html
    r = page.post(f"/finetune/distillation/connections/{conn.pk}/delete/", follow=True)
    assert r.redirect_chain[-1][0] == "/finetune/distillation/" and "Deleted the connection" in r.content.decode()
    r = page.post(f"/finetune/distillation/templates/{template.pk}/delete/")
    assert r.status_code == 302
    assert not TeacherConnection.objects.exists() and not DistillationTemplate.objects.exists()
    assert page.get(f"/finetune/distillation/connections/{conn.pk}/delete/").status_code == 405


def test_deleting_is_404_for_an_outsider_and_403_for_a_viewer(user, outsider, viewer, teacher):
    from datasets_app.distillation.services import template_create

    conn = make_connection(user, teacher)
    template = template_create(team=personal_team(user), user=user, raw={"name": "Mine", "prompt": "Say hi"})
    for who, code in ((outsider, 404), (viewer, 403)):
        page = _login(who)
        assert page.post(f"/finetune/distillation/connections/{conn.pk}/delete/").status_code == code
        assert page.post(f"/finetune/distillation/templates/{template.pk}/delete/").status_code == code
    assert "Mine" not in _login(outsider).get("/finetune/distillation/").content.decode()
    assert "Mine" in _login(viewer).get("/finetune/distillation/").content.decode()
    assert TeacherConnection.objects.count() == 1 and DistillationTemplate.objects.count() == 1


def test_no_key_of_any_teacher_block_or_the_judge_is_rendered_back(user, teacher):
    judge_key = "sk-judge-Other-Secret-Key-77aa"
    r = _login(user).post("/finetune/distillation/new/", {
        **form_data(teacher, batch_size="1000", quality_threshold="0.5"), **second_teacher(teacher),
        "judge": "typed", "judge_provider": "openai", "judge_model": JUDGE_MODEL, "judge_api_key": judge_key})
    html = r.content.decode()
    assert r.status_code == 400 and KEY not in html and judge_key not in html
    assert 'value="claude-haiku-4-5"' in html  # the rest is kept as typed
