"""Small factories over the real services and models (no fixtures files)."""
from __future__ import annotations

import json
from pathlib import Path

from django.core.files.uploadedfile import SimpleUploadedFile

from nexus.models import JobEvent

DATA = Path(__file__).resolve().parent / "data"


def make_user(username: str, password: str = "pw-123456"):
    from nexus.teams import user_create

    return user_create(username=username, password=password)


def personal_team(user):
    from nexus.teams import team_ensure_personal

    return team_ensure_personal(user=user)


def alpaca_upload(records: list[dict] | None = None, name: str = "data.jsonl", raw: bytes | None = None) -> SimpleUploadedFile:
    if raw is None:
        records = records or pirate_records(8)
        raw = ("\n".join(json.dumps(r) for r in records) + "\n").encode()
    return SimpleUploadedFile(name, raw, content_type="application/octet-stream")


def pirate_records(n: int) -> list[dict]:
    rows = [json.loads(line) for line in (Path(__file__).resolve().parents[1] / "datasets_app/demo_data/pirate_alpaca.jsonl").read_text().splitlines()]
    return rows[:n]


def claim_dataset(dataset_id: int, worker: str = "test@host") -> bool:
    """What the worker's run task does first (the job kit's claim)."""
    from datasets_app.jobs import DATASET
    from nexus.jobs import claim

    return claim(DATASET, dataset_id, worker=worker)


def claim_job(job_id: int, worker: str) -> bool:
    from nexus.jobs import claim
    from training_app.jobs import TRAINING

    return claim(TRAINING, job_id, worker=worker)


def reap_worker(worker: str) -> dict[str, list[int]]:
    """What a worker restarting under `worker`'s name reaps at start: the rows it held."""
    from nexus.jobs.reaper import reap

    return reap(worker=worker, resend=False, check_hosts=False).orphaned


def make_ready_dataset(user, records: list[dict] | None = None, team=None):
    """A dataset processed by the real service (synchronously, as the worker would)."""
    from datasets_app.services import dataset_create, dataset_process

    team = team or personal_team(user)
    dataset = dataset_create(team=team, user=user, name="pirates", file=alpaca_upload(records))
    assert claim_dataset(dataset.pk)
    return dataset_process(dataset_id=dataset.pk)


def make_job(user, base_model, dataset=None, **overrides):
    from training_app.models import FineTuningJob

    dataset = dataset or make_ready_dataset(user)
    return FineTuningJob.objects.create(team=dataset.team, created_by=user, name=overrides.pop("name", "job"),
                                        base_model=base_model, dataset=dataset, **overrides)


def make_adapter(job):
    from adapters_app.models import LoRAAdapter

    return LoRAAdapter.objects.create(team=job.team, name=job.name, version=1, base_model=job.base_model, job=job,
                                      path=f"adapters/team-{job.team_id}/job-{job.pk}-v1")


def make_deployment(user, base_model, *, adapter=None, status: str = "stopped"):
    """A deployment row with one arm and no server behind it."""
    from deployments_app.models import Deployment, DeploymentArm

    deployment = Deployment.objects.create(team=personal_team(user), name="d", base_model=base_model, status=status,
                                           created_by=user)
    DeploymentArm.objects.create(deployment=deployment, label="A", adapter=adapter, weight=100, host="127.0.0.1")
    return deployment


def record_event(job, message: str, **kw) -> JobEvent:
    from nexus.events import job_event_record

    return job_event_record(kind=JobEvent.Kind.TRAINING, job_id=job.pk, message=message, **kw)


def _response(text: str, finetuned: bool) -> dict:
    return {"model_id": "x", "model_name": "ft" if finetuned else "base", "is_finetuned": finetuned, "adapter_id": None,
            "response": text, "tokens_generated": 5, "generation_time_ms": 100.0, "tokens_per_second": 50.0,
            "finish_reason": "stop"}


def make_comparison_session(user, base_model, n: int = 4, blind: bool = False):
    """A session whose run has completed: fine-tuned answers say FINE, base answers say BASE."""
    from evaluation_app.models import ComparisonSession, PromptComparison

    adapter = make_adapter(make_job(user, base_model, name="evaluated"))
    session = ComparisonSession.objects.create(
        team=personal_team(user), created_by=user, name="judged", base_model=base_model, adapter=adapter,
        comparison_type="blind" if blind else "batch", status="completed",
        sides=[{"role": "base", "type": "base", "label": "b", "is_finetuned": False, "base_model_id": base_model.pk},
               {"role": "finetuned", "type": "adapter", "label": "f", "is_finetuned": True,
                "base_model_id": base_model.pk, "adapter_id": adapter.pk}])
    for i in range(n):
        PromptComparison.objects.create(session=session, index=i, prompt=f"Question {i}?", status="done",
                                        messages=[{"role": "user", "content": f"Question {i}?"}], a_is_base=i % 2 == 0,
                                        base_response=_response(f"BASE answer {i}", False),
                                        finetuned_response=_response(f"FINE answer {i}", True))
    return session
