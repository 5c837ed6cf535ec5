"""Export and merge requests through the API: what is refused before any work starts, and how."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from adapters_app.models import AdapterExport
from nexus.models import BaseModel
from tests.factories import make_adapter, make_job

pytestmark = pytest.mark.django_db


@pytest.fixture
def adapter(user, base_model):
    job = make_job(user, base_model)
    return make_adapter(job)


def _post(api, adapter, **body):
    return api.post(f"/api/v1/finetune/adapters/{adapter.pk}/export", body, format="json")


def test_an_unsupported_architecture_is_refused_before_work_starts(api, adapter, base_model, tmp_path):
    folder = tmp_path / "gpt2ish"
    shutil.copytree(base_model.hf_path, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["GPT2LMHeadModel"]}))
    other = BaseModel.objects.create(name="gpt2ish", hf_path=str(folder), architecture="GPT2LMHeadModel")
    adapter.base_model = other
    adapter.save()
    for body in ({"kind": "adapter_gguf"}, {"kind": "model_gguf", "quantization": "q8_0"}):
        r = _post(api, adapter, **body)
        assert r.status_code == 400, r.content
        assert r.json()["error"]["code"] == "unsupported"
        assert "GPT2LMHeadModel is not supported yet" in r.json()["error"]["message"]
    assert not AdapterExport.objects.exists()  # nothing queued, nothing half-written


def test_bad_export_requests_say_which_field(api, adapter):
    r = _post(api, adapter, kind="model_gguf", quantization="q3_k")
    assert r.status_code == 400 and "quantization" in json.dumps(r.json())
    r = _post(api, adapter, kind="zip")
    assert r.status_code == 400 and "kind" in json.dumps(r.json())
    assert not AdapterExport.objects.exists()


def test_an_adapter_whose_files_are_gone_says_so(api, adapter):
    r = _post(api, adapter, kind="adapter_gguf")  # make_adapter records a path that holds no files
    assert r.status_code == 400 and "lost its files" in r.json()["error"]["message"]


def test_outsiders_get_404_on_merge_export_and_download(outsider_api, adapter):
    for url in (f"/api/v1/finetune/adapters/{adapter.pk}/merge", f"/api/v1/finetune/adapters/{adapter.pk}/export"):
        assert outsider_api.post(url, {"kind": "adapter_gguf"}, format="json").status_code == 404
    assert outsider_api.get(f"/api/v1/finetune/adapters/{adapter.pk}/download").status_code == 404
    assert outsider_api.delete(f"/api/v1/finetune/adapters/{adapter.pk}").status_code == 404
    export = AdapterExport.objects.create(team=adapter.team, adapter=adapter, kind="adapter_gguf")
    for url in (f"/api/v1/finetune/exports/{export.pk}", f"/api/v1/finetune/exports/{export.pk}/download",
                f"/api/v1/finetune/exports/{export.pk}/events"):
        assert outsider_api.get(url).status_code == 404, url


def test_an_unfinished_export_cannot_be_downloaded(api, adapter):
    export = AdapterExport.objects.create(team=adapter.team, adapter=adapter, kind="model_gguf", quantization="q8_0")
    r = api.get(f"/api/v1/finetune/exports/{export.pk}/download")
    assert r.status_code == 409 and "only a completed, verified export" in r.json()["error"]["message"]
