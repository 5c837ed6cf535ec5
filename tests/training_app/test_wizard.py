"""The new-job wizard: its partials (dataset preview, live estimate, review) and the final post."""
from __future__ import annotations

import re

import pytest
from django.test import Client

from tests.factories import make_ready_dataset, make_user, personal_team, pirate_records
from training_app.models import FineTuningJob

pytestmark = pytest.mark.django_db


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _form(base_model, dataset, **overrides) -> dict:
    """Every wizard field as the browser posts it (an unchecked checkbox is left out)."""
    data = {"name": "wizard-job", "description": "from the wizard", "base_model": base_model.pk, "dataset": dataset.pk,
            "eval_dataset": "", "validation_split": "0", "preset": "", "rank": "8", "alpha": "16",
            "dropout": "0.05", "target_modules": "", "bias": "none", "num_epochs": "1", "max_steps": "5",
            "batch_size": "2", "gradient_accumulation_steps": "1", "learning_rate": "0.0002", "lr_scheduler": "cosine",
            "warmup_steps": "0", "weight_decay": "0.01", "max_seq_length": "256", "packing": "padding_free",
            "optimizer": "adamw_torch", "bf16": "on", "save_steps": "0", "save_total_limit": "2", "eval_steps": "0",
            "early_stopping_patience": "0", "load_best_model_at_end": "on"}
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def _splits(user):
    from datasets_app.services import dataset_split

    return {d.split: d for d in dataset_split(dataset=make_ready_dataset(user, pirate_records(12)), user=user)}


def test_the_page_has_five_steps_and_preselects_the_dataset_with_its_val_split(user, base_model):
    splits = _splits(user)
    html = _client(user).get(f"/finetune/training/new/?dataset={splits['train'].pk}").content.decode()
    assert re.findall(r'<fieldset class="wizard-step" data-step="(\d)"', html) == ["1", "2", "3", "4", "5"]
    assert '<ol class="wizard-steps">' in html
    assert re.search(rf'<option value="{splits["train"].pk}" selected>', html)
    eval_select = html[html.index('name="eval_dataset"'):]
    assert re.search(rf'<option value="{splits["val"].pk}" selected>', eval_select[:eval_select.index("</select>")])
    assert "134.5M parameters" in html and "8192-token context" in html
    assert 'id="wizard-presets"' in html and "High Quality" in html


def test_the_preview_shows_the_first_three_conversations_and_the_sizes(user, base_model):
    splits = _splits(user)
    train = splits["train"]
    r = _client(user).get("/finetune/training/new/preview/", {"dataset": train.pk})
    assert r.status_code == 200
    html = r.content.decode()
    assert html.count('<div class="conversation') == 3
    assert f'<strong id="preview-examples">{train.num_examples}</strong>' in html
    assert f'<strong id="preview-tokens">{train.total_tokens}</strong>' in html
    assert f'data-val-dataset="{splits["val"].pk}"' in html


def test_the_estimate_draws_the_memory_breakdown_as_stacked_bars(user, base_model):
    from training_app.services import training_estimate

    dataset = make_ready_dataset(user)
    r = _client(user).post("/finetune/training/new/estimate/", _form(base_model, dataset, qlora="on"))
    assert r.status_code == 200
    html = r.content.decode()
    expected = {device: training_estimate(user=user, base_model=base_model, dataset_id=dataset.pk, device=device,
                                          lora_config={"rank": 8, "alpha": 16, "dropout": 0.05},
                                          training_config={"max_steps": 5, "batch_size": 2, "gradient_accumulation_steps": 1,
                                                           "max_seq_length": 256, "optimizer": "adamw_torch"},
                                          qlora_config={"enabled": True})["memory"] for device in ("cuda", "cpu")}
    for device, memory in expected.items():
        row = html[html.index(f'data-device="{device}"'):]
        assert f'{memory["total_gib"]} GiB' in row[:300]
    widths = [float(w) for w in re.findall(r'style="width:([0-9.]+)%"', html)]
    assert len(widths) == 12 and all(0 <= w <= 100 for w in widths)
    # both bars on one scale: the larger total fills the width, the other is shorter
    assert max(sum(widths[:6]), sum(widths[6:])) == pytest.approx(100, abs=0.05)
    assert min(sum(widths[:6]), sum(widths[6:])) < 100
    for part in ("weights", "lora_parameters_gradients_optimizer", "activations", "logits", "runtime_overhead", "allocator_slack"):
        assert f'data-part="{part}"' in html and f'class="mem-{part}"' in html
    assert "nf4" in html
    assert "No time estimate: no throughput measured" in html and "5 optimizer steps" in html


def test_the_estimate_shows_service_and_field_errors_in_the_panel(user, base_model):
    dataset = make_ready_dataset(user)
    client = _client(user)
    r = client.post("/finetune/training/new/estimate/", _form(base_model, dataset, max_seq_length="16384"))
    assert r.status_code == 200 and "8192-token context" in r.content.decode()
    r = client.post("/finetune/training/new/estimate/", _form(base_model, dataset, learning_rate="fast"))
    assert r.status_code == 200 and "learning_rate: Enter a number." in r.content.decode()


def test_the_review_shows_the_resolved_config_or_names_the_bad_field(user, base_model):
    dataset = make_ready_dataset(user)
    client = _client(user)
    html = client.post("/finetune/training/new/review/", _form(base_model, dataset)).content.decode()
    assert 'id="review-config"' in html and "review-errors" not in html
    assert re.search(r'data-key="target_modules"><th>target_modules</th><td>q_proj, k_proj, v_proj, o_proj, gate_proj, '
                     r'up_proj, down_proj</td>', html)
    for key, value in (("rank", "8"), ("alpha", "16"), ("warmup_steps", "0"), ("optimizer", "adamw_torch"),
                       ("lr_scheduler", "cosine"), ("bf16", "yes"), ("fp16", "no")):
        assert f'data-key="{key}"><th>{key}</th><td>{value}</td>' in html
    assert re.search(r'data-key="learning_rate"><th>learning_rate</th><td>0.0002</td>', html)

    r = client.post("/finetune/training/new/review/", _form(base_model, dataset, learning_rate="5"))
    assert r.status_code == 200
    html = r.content.decode()
    assert 'id="review-config"' not in html
    assert re.search(r'data-goto-step="4">Step 4 · learning_rate</a>: must be greater than 0 and at most 1', html)


def test_an_outsider_gets_404_from_the_preview_and_the_estimate(user, outsider, base_model):
    dataset = make_ready_dataset(user)
    client = _client(outsider)
    assert client.get("/finetune/training/new/preview/", {"dataset": dataset.pk}).status_code == 404
    assert client.post("/finetune/training/new/estimate/", _form(base_model, dataset)).status_code == 404
    r = client.post("/finetune/training/new/", _form(base_model, dataset))
    assert r.status_code == 200 and "Select a valid choice" in r.content.decode()
    assert not FineTuningJob.objects.exists()


def test_posting_the_form_creates_the_job_with_its_validation_data(user, base_model):
    splits = _splits(user)
    client = _client(user)
    r = client.post("/finetune/training/new/", _form(base_model, splits["train"], eval_dataset=splits["val"].pk,
                                                     lr_scheduler="linear", packing="none",
                                                     target_modules="q_proj, v_proj", early_stopping_patience="2"))
    job = FineTuningJob.objects.get(name="wizard-job")
    assert r.status_code == 302 and r["Location"] == f"/finetune/training/{job.pk}/"
    assert job.dataset == splits["train"] and job.eval_dataset == splits["val"]
    assert job.description == "from the wizard" and job.lora_config["target_modules"] == ["q_proj", "v_proj"]
    assert job.training_config["lr_scheduler"] == "linear" and job.training_config["packing"] == "none"
    assert job.lora_config["rank"] == 8 and job.training_config["bf16"] is True and job.qlora_config["enabled"] is False
    assert job.training_config["early_stopping_patience"] == 2 and job.training_config["load_best_model_at_end"] is True

    r = client.post("/finetune/training/new/", _form(base_model, splits["train"], name="held-out", validation_split="0.2"))
    job = FineTuningJob.objects.get(name="held-out")
    assert r.status_code == 302 and job.eval_dataset is None and job.training_config["validation_split"] == 0.2


def test_a_bad_post_reopens_the_wizard_on_the_step_of_the_first_bad_field(user, base_model):
    splits = _splits(user)
    client = _client(user)
    r = client.post("/finetune/training/new/", _form(base_model, splits["train"], learning_rate="5"))
    html = r.content.decode()
    assert r.status_code == 200 and 'data-initial-step="4"' in html
    assert '<span class="error">must be greater than 0 and at most 1</span>' in html
    r = client.post("/finetune/training/new/", _form(base_model, splits["train"], eval_dataset=splits["val"].pk,
                                                     validation_split="0.2"))
    html = r.content.decode()
    assert 'data-initial-step="2"' in html and "give either a validation dataset" in html
    assert not FineTuningJob.objects.exists()


def test_a_viewer_cannot_start_a_job(user, base_model):
    from nexus.models import Membership
    from nexus.teams import team_member_add

    dataset = make_ready_dataset(user)
    viewer = make_user("vera")
    team_member_add(team=personal_team(user), user=viewer, role=Membership.Role.VIEWER)
    assert _client(viewer).post("/finetune/training/new/", _form(base_model, dataset)).status_code == 403
    assert not FineTuningJob.objects.exists()
