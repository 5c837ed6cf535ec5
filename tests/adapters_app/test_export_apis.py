"""Export and merge requests through the API: what is refused before any work starts, and how."""
from __future__ import annotations

import json
import shutil

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
    folder = tmp_path / "toy"  # an architecture llama.cpp's converter does not know
    shutil.copytree(base_model.hf_path, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["NexusToyForCausalLM"]}))
    other = BaseModel.objects.create(name="toy", hf_path=str(folder), architecture="NexusToyForCausalLM")
    adapter.base_model = other
    adapter.save()
    for body in ({"kind": "adapter_gguf"}, {"kind": "model_gguf", "quantization": "q8_0"}):
        r = _post(api, adapter, **body)
        assert r.status_code == 400, r.content
        assert r.json()["error"]["code"] == "unsupported"
        assert "GGUF export of NexusToyForCausalLM is not supported by the llama.cpp of llama-cpp-python" in \
            r.json()["error"]["message"]
    assert not AdapterExport.objects.exists()  # nothing queued, nothing half-written


def test_bad_export_requests_say_which_field(api, adapter):
    r = _post(api, adapter, kind="model_gguf", quantization="q3_k")
    assert r.status_code == 400 and "quantization" in json.dumps(r.json())
    r = _post(api, adapter, kind="zip")
    assert r.status_code == 400 and "kind" in json.dumps(r.json())
    assert not AdapterExport.objects.exists()


def test_an_adapter_whose_files_are_gone_says_so(api, adapter):
    for body in ({"kind": "adapter_gguf"}, {"quantization": "q8_0"}):
        r = _post(api, adapter, **body)  # make_adapter records a path that holds no files
        assert r.status_code == 400 and "lost its files" in r.json()["error"]["message"]
    assert api.post(f"/api/v1/finetune/adapters/{adapter.pk}/merge").status_code == 400
    assert not AdapterExport.objects.exists()


@pytest.fixture
def stored_adapter(adapter):
    from nexus.storage import storage_save_bytes

    storage_save_bytes(f"{adapter.path}/adapter_config.json",
                       json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]}).encode())
    storage_save_bytes(f"{adapter.path}/adapter_model.safetensors", _lora_safetensors())
    return adapter


def _lora_safetensors() -> bytes:
    """A safetensors file whose header names one LoRA pair (only the header is read before work)."""
    import torch
    from safetensors.torch import save

    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    return save({f"{prefix}.lora_A.weight": torch.zeros(2, 576), f"{prefix}.lora_B.weight": torch.zeros(576, 2)})


def test_an_unreadable_adapter_file_is_refused_before_work(api, stored_adapter):
    from nexus.storage import storage_save_bytes

    storage_save_bytes(f"{stored_adapter.path}/adapter_model.safetensors", b"not a safetensors file")
    r = _post(api, stored_adapter, kind="adapter_gguf")
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported"
    assert r.json()["error"]["message"].startswith("adapter_model.safetensors is not a readable safetensors file (")
    assert not AdapterExport.objects.exists()


@pytest.mark.parametrize(
    ("body", "kind", "quantization"),
    [
        ({"quantization": "q4_k_m"}, "model_gguf", "q4_k_m"),  # section 11.3's export_adapter(id, quantization=...)
        ({"quantization": "f16"}, "model_gguf", "f16"),
        ({"quantization": "f32"}, "model_gguf", "f32"),  # the converter's full precision
        ({}, "model_gguf", "q4_k_m"),
        ({"kind": "model_gguf", "quantization": "q8_0"}, "model_gguf", "q8_0"),
        ({"kind": "adapter_gguf"}, "adapter_gguf", "f32"),
    ],
)
def test_quantization_alone_means_a_merged_model_gguf(api, stored_adapter, body, kind, quantization):
    r = _post(api, stored_adapter, **body)
    assert r.status_code == 202, r.content
    export = r.json()
    assert (export["kind"], export["quantization"], export["status"]) == (kind, quantization, "queued")
    assert export["gguf_path"] is None  # until the file is written and verified
    assert AdapterExport.objects.get(pk=export["id"]).kind == kind


def test_an_adapter_gguf_takes_no_quantization(api, stored_adapter):
    r = _post(api, stored_adapter, kind="adapter_gguf", quantization="q4_k_m")
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("quantization:")
    assert not AdapterExport.objects.exists()


def test_a_completed_export_carries_its_gguf_path(api, stored_adapter):
    export = AdapterExport.objects.create(team=stored_adapter.team, adapter=stored_adapter, kind="model_gguf",
                                          quantization="q4_k_m", status="completed", path="exports/x-q4_k_m.gguf")
    body = api.get(f"/api/v1/finetune/exports/{export.pk}").json()
    assert body["gguf_path"] == "exports/x-q4_k_m.gguf"
    listed = api.get(f"/api/v1/finetune/adapters/{stored_adapter.pk}").json()["exports"]
    assert listed[0]["gguf_path"] == "exports/x-q4_k_m.gguf"


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
