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
from tests.datasets_app.distillation.conftest import KEY, openai_teacher, run_job
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
            "output_format": "alpaca"}
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


def test_a_written_template_is_saved_with_the_job_and_a_builtin_one_is_used_as_is(user, teacher):
    page = _login(user)
    r = page.post("/finetune/distillation/new/", form_data(
        teacher, name="tips", source="template", template_prompt="Give a {tone} tip about {topic}.",
        template_variables="tone: short | friendly\ntopic: tea | rain | maps", num_examples="6"))
    assert r.status_code == 302, r.content.decode()[:3000]
    job = DistillationJob.objects.get(name="tips")
    saved = DistillationTemplate.objects.get(team=personal_team(user))
    assert saved.name == "tips template" and saved.variables["topic"] == ["tea", "rain", "maps"]
    assert job.config["source"]["template_id"] == str(saved.pk)
    assert job.num_items == 6 and job.prompts_to_generate == 0

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


def test_the_estimate_of_an_unsaved_template_counts_its_examples(user, teacher):
    html = _login(user).post("/finetune/distillation/new/estimate/", form_data(
        teacher, source="template", template_prompt="Tip about {topic}", template_variables="topic: tea | rain",
        num_examples="10")).content.decode()
    assert re.search(r'id="estimate-prompts">10<', html) and re.search(r'id="estimate-requests">10<', html)
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
