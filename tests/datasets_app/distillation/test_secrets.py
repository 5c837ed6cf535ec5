"""A teacher's API key goes in and never comes out: encrypted at rest, shown as its last four
characters only, and in no response, log line (DEBUG included, a 401 included), event, row or file."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
from django.apps import apps
from django.conf import settings
from django.db import connection

from datasets_app.distillation.models import DistillationTeacher, TeacherConnection
from nexus.models import JobEvent
from nexus.secrets import secret_decrypt
from tests.datasets_app.distillation.conftest import JUDGE_MODEL, KEY, anthropic_teacher, openai_teacher
from tests.datasets_app.distillation.support import API, create_job, job, job_body, run_task

pytestmark = pytest.mark.django_db
WRONG = "sk-wrong-Secret-Key-That-Was-Typed-8c2e"
SECRETS = (KEY, WRONG)


def _rows_as_text() -> str:
    """Every row of the distillation tables, the datasets and the events, as Postgres writes them."""
    tables = [apps.get_model("datasets_app", name)._meta.db_table for name in
              ("TeacherConnection", "DistillationTemplate", "DistillationJob", "DistillationTeacher",
               "DistillationItem", "Dataset")] + [JobEvent._meta.db_table]
    with connection.cursor() as cursor:
        text = []
        for table in tables:
            cursor.execute(f'SELECT row_to_json(t)::text FROM "{table}" t')  # noqa: S608 - our own table names
            text += [row[0] for row in cursor.fetchall()]
    return "\n".join(text)


def _files_holding(secret: str) -> list[Path]:
    root = Path(settings.NEXUS_DATA_DIR)
    return [p for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_a_saved_key_is_encrypted_at_rest_and_shown_as_its_last_four_characters(api, teacher):
    r = api.post(f"{API}/connections", {"name": "c", **openai_teacher(teacher)}, format="json")
    assert r.status_code == 201
    row = TeacherConnection.objects.get(pk=r.json()["id"])
    assert row.api_key_encrypted and KEY not in row.api_key_encrypted
    assert secret_decrypt(row.api_key_encrypted) == KEY  # what the worker calls with
    assert row.key_last4 == KEY[-4:] == r.json()["key_last4"]
    created = create_job(api, job_body({"connection_id": row.pk}))
    copy = DistillationTeacher.objects.get(job_id=created["id"])
    assert KEY not in copy.api_key_encrypted and secret_decrypt(copy.api_key_encrypted) == KEY
    assert KEY not in _rows_as_text()


def test_no_api_response_holds_a_key(api, teacher):
    responses = []

    def keep(r):
        responses.append(r)
        return r

    conn = keep(api.post(f"{API}/connections", {"name": "c", **openai_teacher(teacher)}, format="json")).json()
    keep(api.patch(f"{API}/connections/{conn['id']}", {"api_key": WRONG}, format="json"))
    keep(api.post(f"{API}/connections/{conn['id']}/test"))
    keep(api.patch(f"{API}/connections/{conn['id']}", {"api_key": KEY}, format="json"))
    keep(api.get(f"{API}/connections"))
    keep(api.get(f"{API}/connections/{conn['id']}"))
    keep(api.post(f"{API}/connections/test", openai_teacher(teacher, api_key=WRONG), format="json"))
    keep(api.post(f"{API}/connections/test", anthropic_teacher(teacher, api_key=WRONG), format="json"))
    body = job_body(anthropic_teacher(teacher), quality_threshold=0.5,
                    judge_config=openai_teacher(teacher, model=JUDGE_MODEL))
    keep(api.post(f"{API}/estimate", body, format="json"))
    created = keep(api.post(f"{API}/jobs", body, format="json")).json()
    assert {t["key_last4"] for t in created["teachers"]} == {KEY[-4:]}
    assert run_task(created["id"]) is None
    for url in (f"{API}/jobs", f"{API}/jobs/{created['id']}", f"{API}/jobs/{created['id']}/preview",
                f"{API}/jobs/{created['id']}/events"):
        keep(api.get(url))
    keep(api.post(f"{API}/jobs/{created['id']}/approve", {}, format="json"))
    bad = keep(api.post(f"{API}/jobs", job_body(openai_teacher(teacher, api_key=WRONG, temperature=9)),
                        format="json"))
    assert bad.status_code == 400
    assert [r.status_code for r in responses if r.status_code >= 400] == [400]
    for r in responses:
        text = r.content.decode()
        assert KEY not in text and WRONG not in text, (r.request["PATH_INFO"], text[:300])


@pytest.mark.parametrize("make_teacher", [openai_teacher, anthropic_teacher], ids=["openai", "anthropic"])
def test_no_log_line_event_row_or_file_holds_a_key_even_when_it_is_refused(api, teacher, caplog, make_teacher):
    caplog.set_level(logging.DEBUG)
    good = create_job(api, job_body(make_teacher(teacher)))
    assert run_task(good["id"]) is None
    approved = api.post(f"{API}/jobs/{good['id']}/approve", {}, format="json")
    assert approved.status_code == 201
    refused = create_job(api, job_body(make_teacher(teacher, api_key=WRONG)))
    assert run_task(refused["id"]) is not None
    row = job(refused["id"])
    assert row.status == "failed" and "API key" in row.error_message and teacher.count(status=401) == 1
    conn = api.post(f"{API}/connections", {"name": "c", **make_teacher(teacher, api_key=WRONG)}, format="json").json()
    assert api.post(f"{API}/connections/{conn['id']}/test").json()["problem"] == "key"

    logged = caplog.text + "\n".join(str(r.__dict__) for r in caplog.records)
    assert "401" in logged and len(caplog.records) > 20  # DEBUG lines of the SDKs and HTTP clients were captured
    rows = _rows_as_text()
    events = "\n".join(f"{e.message} {e.data}" for e in JobEvent.objects.all())
    assert "401" in events
    for secret in SECRETS:
        assert secret not in logged
        assert secret not in rows
        assert secret not in events
        assert _files_holding(secret) == []
    headers = {k.lower(): v for k, v in teacher.requests[0]["headers"].items()}
    assert KEY in (headers.get("authorization", "").removeprefix("Bearer "), headers.get("x-api-key"))  # sent, though
