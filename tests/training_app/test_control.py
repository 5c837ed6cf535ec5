"""Stop, pause, resume and checkpoint through the per-job control channel (Redis), backed by the
job's row: the API and pages record the request and signal the worker; the worker's poll reads
the channel every step and the row every few seconds, so a lost signal only delays a command."""
from __future__ import annotations

import pytest
from django.test import Client, override_settings

from nexus.control import control_receive, control_send
from nexus.models import Membership
from nexus.teams import team_member_add
from tests.conftest import api_client_for
from tests.factories import make_job, make_ready_dataset, make_user, personal_team
from training_app.models import FineTuningJob
from training_app.runner import _JobHooks

pytestmark = pytest.mark.django_db

UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"


@pytest.fixture
def running_job(user, base_model):
    job = make_job(user, base_model, status=FineTuningJob.Status.TRAINING)
    control_receive(kind="training", job_id=job.pk)  # nothing left over from another run
    return job


def signals(job) -> list[str]:
    return control_receive(kind="training", job_id=job.pk)


def test_stop_pause_and_checkpoint_are_recorded_and_signalled(api, running_job, django_capture_on_commit_callbacks):
    url = f"/api/v1/finetune/jobs/{running_job.pk}"
    with django_capture_on_commit_callbacks(execute=True):
        r = api.post(f"{url}/checkpoint")
    assert r.status_code == 202 and r.json()["checkpoint_requested"] is True and r.json()["status"] == "training"
    with django_capture_on_commit_callbacks(execute=True):
        assert api.post(f"{url}/pause").json()["pause_requested"] is True
    with django_capture_on_commit_callbacks(execute=True):
        assert api.delete(url).json()["cancel_requested"] is True
    assert signals(running_job) == ["checkpoint", "pause", "stop"]
    messages = [e["message"] for e in api.get(f"{url}/events").json()["results"]]
    assert "Checkpoint requested; the trainer saves one after the current step" in messages
    assert "Cancel requested; the trainer stops after the current step" in messages


def test_the_worker_poll_acts_on_signals_and_the_row_decides(running_job, api, django_capture_on_commit_callbacks):
    hooks = _JobHooks(running_job)
    assert hooks.poll() == set()
    with django_capture_on_commit_callbacks(execute=True):
        api.post(f"/api/v1/finetune/jobs/{running_job.pk}/checkpoint")
    assert hooks.poll() == {"checkpoint"}
    hooks.on_checkpoint(7, reason="request")  # the trainer saved it: the request is done
    running_job.refresh_from_db()
    assert running_job.checkpoint_requested is False
    # a pause withdrawn before the next step never happens, though both signals arrive together
    with django_capture_on_commit_callbacks(execute=True):
        api.post(f"/api/v1/finetune/jobs/{running_job.pk}/pause")
    with django_capture_on_commit_callbacks(execute=True):
        r = api.post(f"/api/v1/finetune/jobs/{running_job.pk}/resume")
    assert r.status_code == 202 and r.json()["pause_requested"] is False and r.json()["status"] == "training"
    assert hooks.poll() == set()
    # a stray signal that the row does not confirm is ignored
    control_send(kind="training", job_id=running_job.pk, command="pause")
    assert hooks.poll() == set()
    with django_capture_on_commit_callbacks(execute=True):
        api.delete(f"/api/v1/finetune/jobs/{running_job.pk}")
    assert hooks.poll() == {"stop"}


def test_a_lost_signal_still_arrives_through_the_row(running_job):
    hooks = _JobHooks(running_job)
    hooks.poll()
    FineTuningJob.objects.filter(pk=running_job.pk).update(pause_requested=True)  # no signal sent
    assert hooks.poll() == set()  # not re-read yet: the row is read every few seconds, not every step
    hooks._db_polled -= 60
    assert hooks.poll() == {"pause"}


def test_without_redis_the_row_is_read_every_step(running_job):
    hooks = _JobHooks(running_job)
    with override_settings(NEXUS_CONTROL_REDIS_URL=UNREACHABLE_REDIS):
        assert hooks.poll() == set()
        FineTuningJob.objects.filter(pk=running_job.pk).update(checkpoint_requested=True)
        assert hooks.poll() == {"checkpoint"}
        FineTuningJob.objects.filter(pk=running_job.pk).update(status=FineTuningJob.Status.FAILED)  # reaped meanwhile
        assert hooks.poll() == {"stop"}


def test_control_requests_work_without_redis(api, running_job, django_capture_on_commit_callbacks):
    with override_settings(NEXUS_CONTROL_REDIS_URL=UNREACHABLE_REDIS), django_capture_on_commit_callbacks(execute=True):
        r = api.post(f"/api/v1/finetune/jobs/{running_job.pk}/pause")
    assert r.status_code == 202 and r.json()["pause_requested"] is True


def test_checkpoint_on_request_needs_a_running_job(api, user, base_model):
    job = make_job(user, base_model)
    r = api.post(f"/api/v1/finetune/jobs/{job.pk}/checkpoint")
    assert r.status_code == 409 and r.json()["error"]["message"].startswith("Only a running job can save a checkpoint")


def test_claiming_forgets_stale_signals_and_says_preparing(user, base_model, api):
    from tests.factories import claim_job

    job = make_job(user, base_model)
    control_send(kind="training", job_id=job.pk, command="stop")
    assert claim_job(job.pk, worker="w1@host")
    assert signals(job) == []
    events = api.get(f"/api/v1/finetune/jobs/{job.pk}/events").json()["results"]
    assert events[-1]["data"] == {"status": "preparing"} and "w1@host" in events[-1]["message"]


def test_outsiders_get_404_and_viewers_403_on_controls(running_job, user, outsider_api, outsider):
    for path in ("checkpoint", "pause", "resume"):
        assert outsider_api.post(f"/api/v1/finetune/jobs/{running_job.pk}/{path}").status_code == 404
    page = Client()
    page.force_login(outsider)
    for path in ("checkpoint", "pause", "resume", "cancel"):
        assert page.post(f"/finetune/training/{running_job.pk}/{path}/").status_code == 404
    assert page.get(f"/finetune/training/{running_job.pk}/checkpoints/").status_code == 404
    viewer = make_user("vic")
    team_member_add(team=personal_team(user), user=viewer, role=Membership.Role.VIEWER)
    assert api_client_for(viewer).post(f"/api/v1/finetune/jobs/{running_job.pk}/checkpoint").status_code == 403
    running_job.refresh_from_db()
    assert not running_job.checkpoint_requested and not running_job.pause_requested


def test_htmx_controls_answer_with_the_summary(user, running_job):
    page = Client()
    page.force_login(user)
    r = page.post(f"/finetune/training/{running_job.pk}/pause/", HTTP_HX_REQUEST="true")
    assert r.status_code == 200
    html = r.content.decode()
    assert 'id="job-summary"' in html and "(pausing after this step)" in html and 'id="resume-button"' in html
    r = page.post(f"/finetune/training/{running_job.pk}/pause/", HTTP_HX_REQUEST="true")  # already pausing
    assert "cannot be paused" not in r.content.decode()  # a repeat request is harmless
    FineTuningJob.objects.filter(pk=running_job.pk).update(status=FineTuningJob.Status.COMPLETED)
    r = page.post(f"/finetune/training/{running_job.pk}/checkpoint/", HTTP_HX_REQUEST="true")
    assert 'id="control-error"' in r.content.decode() and "Only a running job" in r.content.decode()


def test_validation_data_is_checked_when_the_job_is_created(api, user, base_model, outsider):
    dataset = make_ready_dataset(user)
    val = make_ready_dataset(user)
    foreign = make_ready_dataset(outsider)
    body = {"name": "v", "base_model": "SmolLM2-135M-Instruct", "dataset_id": dataset.pk}
    r = api.post("/api/v1/finetune/jobs", {**body, "eval_dataset_id": val.pk}, format="json")
    assert r.status_code == 201 and r.json()["eval_dataset_id"] == val.pk
    cases = [
        ({"eval_dataset_id": foreign.pk}, 404, None),
        ({"eval_dataset_id": dataset.pk}, 400, "eval_dataset_id: the validation dataset must not be the training dataset"),
        ({"eval_dataset_id": val.pk, "training_config": {"validation_split": 0.1}}, 400, "eval_dataset_id: give either"),
        ({"training_config": {"early_stopping_patience": 2}}, 400, "training_config.early_stopping_patience: early stopping needs"),
        ({"training_config": {"validation_split": 0.1, "early_stopping_patience": 2, "load_best_model_at_end": False}}, 400,
         "training_config.early_stopping_patience: early stopping keeps the best checkpoint"),
        ({"training_config": {"save_steps": 5, "eval_steps": 2, "validation_split": 0.1}}, 400, "training_config.save_steps"),
    ]
    for extra, code, message in cases:
        r = api.post("/api/v1/finetune/jobs", {**body, **extra}, format="json")
        assert r.status_code == code, (extra, r.content)
        if message:
            assert r.json()["error"]["message"].startswith(message), r.json()
    assert FineTuningJob.objects.count() == 1
