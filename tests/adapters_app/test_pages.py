"""The adapter pages through Django's test client: the browser of cards, the detail page's facts,
exports started from the dialog (and their errors), downloads, delete, and outsiders."""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.test import Client

from adapters_app.models import AdapterExport, LoRAAdapter
from deployments_app.models import Deployment, DeploymentArm
from nexus.models import Membership
from nexus.teams import team_member_add
from tests.factories import make_job, make_user, personal_team

pytestmark = pytest.mark.django_db

SHA = "ab12cd34ef56" + "0" * 52


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _htmx(client: Client, url: str, data: dict):
    return client.post(url, data, HTTP_HX_REQUEST="true")


def _adapter(job, **fields) -> LoRAAdapter:
    defaults = {"team": job.team, "name": job.name, "version": 1, "base_model": job.base_model, "job": job,
                "dataset": job.dataset, "path": f"adapters/team-{job.team_id}/missing-{job.pk}", "size_bytes": 3_400_000,
                "sha256": SHA, "final_loss": 0.8123, "lora_config": {"rank": 8, "alpha": 16, "dropout": 0.05,
                                                                       "target_modules": ["q_proj", "v_proj"]},
                "training_config": {"learning_rate": 0.0002, "max_steps": 60},
                "metrics": {"steps": 60, "final_loss": 0.8123, "best_eval_loss": 0.9321, "best_step": 40,
                            "train_runtime_s": 12.5, "tokens_seen": 4096}}
    return LoRAAdapter.objects.create(**{**defaults, **fields})


@pytest.fixture
def job(user, base_model):
    return make_job(user, base_model, name="pirate-speak", status="completed")


@pytest.fixture
def adapter(job):
    return _adapter(job)


def _peft_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "peft"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8, "peft_type": "LORA"}))
    (folder / "adapter_model.safetensors").write_bytes(b"not really tensors, enough for a download")
    return folder


def test_browser_groups_versions_by_name_with_their_facts(user, job):
    _adapter(job, version=1, final_loss=1.5, metrics={"steps": 30})
    _adapter(job, version=2, source="checkpoint", checkpoint_step=40, is_merged=True, gguf_path="exports/x.gguf")
    _adapter(job, name="sql-helper", version=1)
    page = _client(user).get("/finetune/adapters/")
    html = page.content.decode()
    assert page.status_code == 200
    assert html.count('class="adapter-group"') == 2 and html.count('class="adapter-card"') == 3
    pirate = html[html.index('data-name="pirate-speak"'):]
    pirate = pirate[:pirate.index("</section>")]
    assert pirate.index(">v2<") < pirate.index(">v1<")  # newest version first
    for fact in ("SmolLM2-135M-Instruct", "checkpoint at step 40", "job #", "final 1.5000", "best validation 0.9321",
                 "3.2\xa0MB", ">merged<", ">GGUF<", "2 versions"):
        assert fact in pirate, fact
    assert "3 adapters in your teams" in html


def test_browser_filters_by_name_and_says_when_nothing_matches(user, job):
    _adapter(job)
    _adapter(job, name="sql-helper")
    client = _client(user)
    html = client.get("/finetune/adapters/", {"q": "SQL"}).content.decode()
    assert 'data-name="sql-helper"' in html and 'data-name="pirate-speak"' not in html
    html = client.get("/finetune/adapters/", {"q": "nothing-like-this"}).content.decode()
    assert "No adapter's name contains" in html and "nothing-like-this" in html


def test_browser_empty_state_points_to_training(db):
    html = _client(make_user("newcomer")).get("/finetune/adapters/").content.decode()
    assert 'id="adapters-empty"' in html and "/finetune/training/" in html and "0 adapters" in html


def test_detail_shows_lineage_config_metrics_and_files(user, job, adapter):
    _adapter(job, version=2)
    adapter.description = "Talks like a pirate"
    adapter.save()
    html = _client(user).get(f"/finetune/adapters/{adapter.pk}/").content.decode()
    for fact in (f'href="/finetune/training/{job.pk}/"', f'href="/finetune/datasets/{job.dataset_id}/"', job.dataset.name,
                 "the finished job", "SmolLM2-135M-Instruct", "q_proj, v_proj", "0.8123", "0.9321 at step 40",
                 "12.5 s", "4096", SHA, f'href="/finetune/adapters/{adapter.pk}/download/"', ">v1</strong>",
                 "learning_rate", "No exports yet", "Not deployed", 'id="export-dialog"',
                 "<dt>rank</dt><dd>8</dd>", "<dt>alpha</dt><dd>16</dd>", "<dt>dropout</dt><dd>0.05</dd>",
                 "<dt>target_modules</dt>", "Talks like a pirate"):
        assert fact in html, fact
    assert 'id="export-dialog" open' not in html  # the dialog opens on request only
    assert 'id="export-dialog" open' in _client(user).get(f"/finetune/adapters/{adapter.pk}/?export=1").content.decode()


def test_detail_lists_exports_with_progress_verification_and_downloads(user, adapter):
    done = AdapterExport.objects.create(
        team=adapter.team, adapter=adapter, kind="adapter_gguf", quantization="f32", status="completed", progress=1.0,
        path="exports/x/pirate-speak-v1.lora.gguf", size_bytes=1_700_000, sha256="feedbeef" * 8, verified=True,
        verification={"prompt": "What is the capital of France?", "text": " Arr, Paris it be.", "completion_tokens": 7,
                      "tokens_per_s": 48.25, "passed": True, "metadata": {"general.type": "adapter"}})
    running = AdapterExport.objects.create(team=adapter.team, adapter=adapter, kind="model_gguf", quantization="q8_0",
                                           status="running", progress=0.42, stage="Merged the LoRA weights")
    failed = AdapterExport.objects.create(team=adapter.team, adapter=adapter, kind="merge", status="failed",
                                          error="RuntimeError: merged logits differ")
    html = _client(user).get(f"/finetune/adapters/{adapter.pk}/").content.decode()
    rows = {e.pk: html[html.index(f'id="export-{e.pk}"'):][:3000].split("</tr>")[0] for e in (done, running, failed)}
    assert "✓ verified" in rows[done.pk] and "Arr, Paris it be." in rows[done.pk] and "7 tokens at 48.3 tokens/s" in rows[done.pk]
    assert "feedbeeffeed" in rows[done.pk] and "1.6\xa0MB" in rows[done.pk]
    assert f'href="/finetune/exports/{done.pk}/download/"' in rows[done.pk] and "pirate-speak-v1.lora.gguf" in rows[done.pk]
    assert "data-active" in rows[running.pk] and 'value="0.420000"' in rows[running.pk] and "42%" in rows[running.pk]
    assert "Merged the LoRA weights" in rows[running.pk] and "q8_0" in rows[running.pk]
    assert "merged logits differ" in rows[failed.pk]
    for pk in (running.pk, failed.pk):
        assert "/download/" not in rows[pk] and "data-active" not in rows[failed.pk]
    assert "nexus/export.js" in html


def test_detail_lists_the_deployments_that_serve_it(user, adapter, base_model):
    deployment = Deployment.objects.create(team=adapter.team, name="pirate-prod", base_model=base_model, status="running")
    DeploymentArm.objects.create(deployment=deployment, label="A", adapter=adapter, weight=70)
    html = _client(user).get(f"/finetune/adapters/{adapter.pk}/").content.decode()
    table = html[html.index('id="adapter-deployments"'):]
    assert f'href="/finetune/deployments/{deployment.pk}/"' in table and "pirate-prod" in table and "A · 70%" in table
    assert "Not deployed" not in table


@pytest.fixture
def stored_adapter(adapter, tmp_path):
    """The adapter with its PEFT files in storage (exports check them before queueing)."""
    from nexus.storage import storage_save_folder

    storage_save_folder(adapter.path, _peft_folder(tmp_path))
    return adapter


def test_export_from_the_dialog_returns_the_table_with_the_queued_row(user, stored_adapter):
    adapter = stored_adapter
    r = _htmx(_client(user), f"/finetune/adapters/{adapter.pk}/exports/", {"kind": "model_gguf", "quantization": "q8_0"})
    assert r.status_code == 200, r.content[:2000]
    export = AdapterExport.objects.get(adapter=adapter)
    assert (export.kind, export.quantization, export.status) == ("model_gguf", "q8_0", "queued")
    html = r.content.decode()
    assert html.startswith('<div id="exports"') and f'id="export-{export.pk}"' in html and "data-active" in html
    assert json.loads(r["HX-Trigger"]) == {"nexus:export-created": {"id": export.pk}}  # closes the dialog


def test_export_without_javascript_redirects_back_with_a_message(user, stored_adapter):
    adapter = stored_adapter
    client = _client(user)
    r = client.post(f"/finetune/adapters/{adapter.pk}/exports/", {"kind": "model_gguf", "quantization": "f16"})
    assert r.status_code == 302 and r["Location"] == f"/finetune/adapters/{adapter.pk}/"
    html = client.get(r["Location"]).content.decode()
    assert "queued; its progress shows below" in html and 'class="badge queued export-status"' in html


def test_export_errors_show_in_the_dialog(user, adapter, base_model):
    adapter.merged_model = base_model
    adapter.save()
    client = _client(user)
    r = _htmx(client, f"/finetune/adapters/{adapter.pk}/exports/", {"kind": "merge"})
    assert r.status_code == 200 and r["HX-Retarget"] == "#export-form" and r["HX-Reswap"] == "outerHTML"
    html = r.content.decode()
    assert html.startswith('<form id="export-form"') and 'id="export-error"' in html and "is already merged into" in html
    assert 'value="merge" checked' in html  # the choice is kept
    assert 'value="q4_k_m" selected' in html  # the (disabled, unsent) quantization keeps its default
    # an adapter whose files are gone cannot become a GGUF (and says so); without JavaScript the
    # page comes back with the dialog open and the message in it
    r = client.post(f"/finetune/adapters/{adapter.pk}/exports/", {"kind": "adapter_gguf"})
    assert r.status_code == 400
    html = r.content.decode()
    assert 'id="export-dialog" open' in html and "has lost its files" in html
    r = _htmx(client, f"/finetune/adapters/{adapter.pk}/exports/", {"kind": "model_gguf", "quantization": "q2_k"})
    assert "quantization must be one of f32, f16, q8_0, q4_k_m" in r.content.decode()
    assert not AdapterExport.objects.filter(adapter=adapter).exists()


def test_exports_partial_reloads_the_table(user, adapter):
    export = AdapterExport.objects.create(team=adapter.team, adapter=adapter, kind="adapter_gguf", status="completed",
                                          path="exports/a.gguf", verified=True)
    r = _client(user).get(f"/finetune/adapters/{adapter.pk}/exports/", HTTP_HX_REQUEST="true")
    assert r.status_code == 200 and r.content.decode().startswith('<div id="exports"')
    assert f'href="/finetune/exports/{export.pk}/download/"' in r.content.decode()


def test_adapter_download_is_a_zip_of_the_peft_folder(user, job, tmp_path):
    from adapters_app.services import adapter_create_from_job

    adapter = adapter_create_from_job(job=job, adapter_dir=_peft_folder(tmp_path), final_loss=0.5)
    r = _client(user).get(f"/finetune/adapters/{adapter.pk}/download/")
    assert r.status_code == 200 and r["Content-Type"] == "application/zip"
    assert 'filename="pirate-speak-v1.zip"' in r["Content-Disposition"]
    names = zipfile.ZipFile(io.BytesIO(b"".join(r.streaming_content))).namelist()
    assert sorted(names) == ["pirate-speak-v1/adapter_config.json", "pirate-speak-v1/adapter_model.safetensors"]


def test_missing_files_come_back_as_a_message_not_an_error_page(user, adapter):
    client = _client(user)
    r = client.get(f"/finetune/adapters/{adapter.pk}/download/", follow=True)
    assert r.redirect_chain[-1][0] == f"/finetune/adapters/{adapter.pk}/" and "missing from storage" in r.content.decode()
    queued = AdapterExport.objects.create(team=adapter.team, adapter=adapter, kind="merge")
    r = client.get(f"/finetune/exports/{queued.pk}/download/", follow=True)
    assert "only a completed, verified export can be downloaded" in r.content.decode()


def test_export_download_streams_the_gguf(user, adapter):
    path = default_storage.save(f"exports/test/adapter-{adapter.pk}/lora.gguf", ContentFile(b"GGUF" + b"\0" * 60))
    export = AdapterExport.objects.create(team=adapter.team, adapter=adapter, kind="adapter_gguf", status="completed",
                                          path=path, verified=True)
    try:
        r = _client(user).get(f"/finetune/exports/{export.pk}/download/")
        assert r.status_code == 200 and b"".join(r.streaming_content).startswith(b"GGUF")
        assert f'filename="{export.filename}"' in r["Content-Disposition"]
    finally:
        default_storage.delete(path)


def test_delete_removes_it_and_returns_to_the_list(user, adapter):
    r = _client(user).post(f"/finetune/adapters/{adapter.pk}/delete/", follow=True)
    assert r.redirect_chain == [("/finetune/adapters/", 302)]
    assert "Deleted adapter &#x27;pirate-speak v1&#x27;" in r.content.decode()
    assert not LoRAAdapter.objects.filter(pk=adapter.pk).exists()


def test_delete_of_a_deployed_adapter_is_refused_with_the_reason(user, adapter, base_model):
    deployment = Deployment.objects.create(team=adapter.team, name="pirate-prod", base_model=base_model, status="running")
    DeploymentArm.objects.create(deployment=deployment, label="A", adapter=adapter)
    r = _client(user).post(f"/finetune/adapters/{adapter.pk}/delete/", follow=True)
    assert r.redirect_chain == [(f"/finetune/adapters/{adapter.pk}/", 302)]
    html = r.content.decode()
    assert 'class="flash error"' in html and "is used by deployment &#x27;pirate-prod&#x27;" in html
    assert "stop that deployment first" in html
    assert LoRAAdapter.objects.filter(pk=adapter.pk).exists()


@pytest.mark.parametrize(("method", "url"), [
    ("get", "/finetune/adapters/{adapter}/"),
    ("get", "/finetune/adapters/{adapter}/download/"),
    ("get", "/finetune/adapters/{adapter}/exports/"),
    ("post", "/finetune/adapters/{adapter}/exports/"),
    ("post", "/finetune/adapters/{adapter}/delete/"),
    ("get", "/finetune/exports/{export}/download/"),
])
def test_outsiders_get_404_and_change_nothing(adapter, outsider, method, url):
    export = AdapterExport.objects.create(team=adapter.team, adapter=adapter, kind="adapter_gguf", status="completed",
                                          path="exports/a.gguf", verified=True)
    client = _client(outsider)
    target = url.format(adapter=adapter.pk, export=export.pk)
    r = getattr(client, method)(target, {"kind": "model_gguf"} if method == "post" else None)
    assert r.status_code == 404
    assert LoRAAdapter.objects.filter(pk=adapter.pk).exists() and adapter.exports.count() == 1
    assert adapter.name not in client.get("/finetune/adapters/").content.decode()


def test_viewers_can_look_but_not_export_or_delete(user, adapter):
    viewer = make_user("victor")
    team_member_add(team=personal_team(user), user=viewer, role=Membership.Role.VIEWER)
    client = _client(viewer)
    assert client.get(f"/finetune/adapters/{adapter.pk}/").status_code == 200
    assert adapter.name in client.get("/finetune/adapters/").content.decode()
    assert client.post(f"/finetune/adapters/{adapter.pk}/exports/", {"kind": "model_gguf"}).status_code == 403
    assert client.post(f"/finetune/adapters/{adapter.pk}/delete/").status_code == 403
    assert LoRAAdapter.objects.filter(pk=adapter.pk).exists() and not adapter.exports.exists()


def test_pages_ask_for_a_login(adapter, client):
    for url in ("/finetune/adapters/", f"/finetune/adapters/{adapter.pk}/", f"/finetune/adapters/{adapter.pk}/download/"):
        r = client.get(url)
        assert r.status_code == 302 and r["Location"].startswith("/accounts/login/"), url


def test_the_deploy_form_offers_merged_gguf_exports_and_deploys_one(user, outsider, adapter):
    export = AdapterExport.objects.create(team=adapter.team, adapter=adapter, kind="model_gguf", quantization="q4_k_m",
                                          status="completed", path="exports/x.q4_k_m.gguf", verified=True)
    client = _client(user)
    page = client.get("/finetune/deployments/").content.decode()
    assert f'value="export:{export.pk}"' in page and "pirate-speak v1 merged q4_k_m GGUF" in page
    assert f'value="export:{export.pk}"' not in _client(outsider).get("/finetune/deployments/").content.decode()

    r = client.post("/finetune/deployments/new/", {"name": "merged", "arm_a": f"export:{export.pk}", "weight_a": "70",
                                                   "arm_b": "base"})
    deployment = Deployment.objects.get(name="merged")
    assert r.status_code == 302 and r["Location"] == f"/finetune/deployments/{deployment.pk}/"
    arms = {a.label: a for a in deployment.arms.all()}
    assert (arms["A"].export_id, arms["A"].weight, arms["B"].export_id, arms["B"].adapter_id, arms["B"].weight) == (
        export.pk, 70, None, None, 30)
    assert deployment.base_model == adapter.base_model and deployment.team == adapter.team
    # another team's export cannot be named
    r = _client(outsider).post("/finetune/deployments/new/", {"arm_a": f"export:{export.pk}"})
    assert r.status_code == 404 and Deployment.objects.count() == 1
