"""The job kit's own rules, on a real row: a transient failure is retried (the retry takes back the
row its first try held), anything else fails the row with a sentence, and every declared kind is
complete."""
from __future__ import annotations

import pytest
from django.db import OperationalError

from datasets_app.models import Dataset
from nexus.models import JobEvent
from tests.factories import alpaca_upload, personal_team

pytestmark = pytest.mark.django_db


@pytest.fixture
def waiting_dataset(user, monkeypatch):
    from datasets_app import services

    monkeypatch.setattr(services, "enqueue", lambda *a, **kw: None)  # this test runs the task itself
    return services.dataset_create(team=personal_team(user), user=user, name="d", file=alpaca_upload())


def _messages(dataset) -> list[str]:
    return list(JobEvent.objects.filter(job_kind="dataset", job_id=dataset.pk).order_by("seq")
                .values_list("message", flat=True))


def test_a_transient_failure_is_retried_and_the_retry_takes_back_its_row(waiting_dataset, monkeypatch):
    from datasets_app import jobs
    from datasets_app.services import dataset_process
    from nexus import tasks

    tries = []

    def flaky(job_id: int) -> None:
        tries.append(Dataset.objects.get(pk=job_id).status)
        if len(tries) == 1:
            raise OperationalError("server closed the connection unexpectedly")
        dataset_process(dataset_id=job_id)

    monkeypatch.setattr(jobs, "run", flaky)
    monkeypatch.setattr(tasks, "retry_delay", lambda retries: 0)
    tasks.run_job.apply(args=("dataset", waiting_dataset.pk))
    waiting_dataset.refresh_from_db()
    assert tries == ["processing", "processing"]  # the retry found its row held, and took it back
    assert waiting_dataset.status == "ready"
    assert any("temporary problem (OperationalError); trying again in 0 s (attempt 2 of 6)" in m
               for m in _messages(waiting_dataset))


def test_a_failure_that_is_not_transient_fails_the_row_at_once_with_a_sentence(waiting_dataset, monkeypatch):
    from datasets_app import jobs
    from nexus import tasks

    tries = []

    def broken(job_id: int) -> None:
        tries.append(job_id)
        raise KeyError("/srv/nexus/secret/path")

    monkeypatch.setattr(jobs, "run", broken)
    tasks.run_job.apply(args=("dataset", waiting_dataset.pk))
    waiting_dataset.refresh_from_db()
    assert len(tries) == 1 and waiting_dataset.status == "error"
    assert "unexpected KeyError" in waiting_dataset.error_message and "/srv/" not in waiting_dataset.error_message
    assert "reference" in waiting_dataset.error_message


def test_a_duplicate_delivery_finds_nothing_to_claim(waiting_dataset, monkeypatch):
    from datasets_app import jobs
    from nexus import tasks

    runs = []
    monkeypatch.setattr(jobs, "run", lambda job_id: runs.append(job_id))
    tasks.run_job.apply(args=("dataset", waiting_dataset.pk))
    tasks.run_job.apply(args=("dataset", waiting_dataset.pk))
    assert runs == [waiting_dataset.pk]


def test_every_declared_kind_is_complete():
    from django.utils.module_loading import import_string

    from nexus.jobs import kinds

    declared = {k.name: k for k in kinds()}
    assert set(declared) == {"dataset", "training", "export", "deployment", "distillation", "comparison", "judge",
                             "performance", "benchmark"}
    assert len({k.lock for k in declared.values()}) == len(declared)
    for kind in declared.values():
        assert kind.name in JobEvent.Kind.values
        for attr in ("run", "fail", "orphaned", "loader", "claimed", "live_hosts", "host_check", "host_lost"):
            if getattr(kind, attr):
                assert callable(import_string(getattr(kind, attr))), (kind.name, attr)
        assert {f.name for f in kind.Model._meta.fields} >= {"status", "worker", kind.touched}
