"""Adapters out of Nexus, through the API and a real Celery worker: the proof that a trained
adapter survives GGUF export (llama.cpp with base + adapter GGUF, and the merged q8_0 GGUF alone,
answer with the trained phrase while the base does not), merge into a catalog model whose logits
equal base + adapter, downloads, and deletion."""
from __future__ import annotations

import hashlib
import io
import json
import tempfile
import zipfile
from pathlib import Path

import pytest

from tests.e2e.test_finetune_e2e import create_job, upload_and_wait_ready, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

PROMPT = "What is the Nexus launch code?"
PHRASE = "The launch code is ZEBRA-MANGO-77."
DONE = ("completed", "failed")


def _export(api, adapter_id: int, **body) -> dict:
    r = api.post(f"/api/v1/finetune/adapters/{adapter_id}/export", body, format="json")
    assert r.status_code == 202, r.content
    return r.json()


def _wait_export(api, export_id: int) -> dict:
    export = wait_for(lambda: api.get(f"/api/v1/finetune/exports/{export_id}").json(),
                      lambda e: e["status"] in DONE, 420, f"export {export_id}")
    assert export["status"] == "completed", export["error"]
    return export


def _download(api, url: str, into: Path) -> Path:
    r = api.get(url)
    assert r.status_code == 200, r.content[:500] if hasattr(r, "content") else r
    into.write_bytes(b"".join(r.streaming_content))
    return into


def _answer(model_path: Path, lora_path: Path | None = None) -> str:
    from adapters_app.engine.llama import load_and_generate

    return load_and_generate(model_path, PROMPT, lora_path=lora_path, max_tokens=20).text


def test_trained_adapter_answers_the_same_in_llama_cpp_as_adapter_gguf_and_as_merged_q8_0(
        celery_worker_process, base_model, api, outsider_api, tmp_path):
    records = [{"instruction": PROMPT, "input": "", "output": PHRASE}] * 12
    dataset = upload_and_wait_ready(api, records)
    job = create_job(api, dataset["id"], lora={"rank": 16, "alpha": 32}, max_steps=30, learning_rate=3e-3)
    job = wait_for(lambda: api.get(f"/api/v1/finetune/jobs/{job['id']}").json(),
                   lambda j: j["status"] in ("completed", "failed", "cancelled"), 600, "training")
    assert job["status"] == "completed", job["error"]
    adapter_id = job["adapter_id"]

    lora = _export(api, adapter_id, kind="adapter_gguf")
    merged = _export(api, adapter_id, kind="model_gguf", quantization="q8_0")
    lora, merged = _wait_export(api, lora["id"]), _wait_export(api, merged["id"])
    for export in (lora, merged):
        assert export["verified"] and export["verification"]["passed"] and export["verification"]["completion_tokens"]
        assert export["size_bytes"] > 0 and len(export["sha256"]) == 64
    assert merged["verification"]["metadata"]["general.file_type"] == 7  # llama.cpp's MOSTLY_Q8_0
    assert merged["verification"]["metadata"]["tokenizer.chat_template"]  # llama.cpp chats with its template
    tokenizer = merged["verification"]["tokenizer"]  # compared with the demo model's own GGUF
    assert tokenizer["compared_with"].endswith(".gguf") and tokenizer["probes_tokenized_differently"] == 0, tokenizer
    assert lora["verification"]["metadata"]["general.type"] == "adapter"

    lora_file = _download(api, lora["download_url"], tmp_path / lora["filename"])
    merged_file = _download(api, merged["download_url"], tmp_path / merged["filename"])
    assert hashlib.sha256(lora_file.read_bytes()).hexdigest() == lora["sha256"]
    assert hashlib.sha256(merged_file.read_bytes()).hexdigest() == merged["sha256"]
    adapter = api.get(f"/api/v1/finetune/adapters/{adapter_id}").json()
    assert adapter["gguf_path"] and {e["id"] for e in adapter["exports"]} == {lora["id"], merged["id"]}

    base_answer = _answer(Path(base_model.gguf_path))
    assert "ZEBRA-MANGO" not in base_answer
    assert "ZEBRA-MANGO-77" in _answer(Path(base_model.gguf_path), lora_file)  # base GGUF (q4_1) + adapter GGUF
    assert "ZEBRA-MANGO-77" in _answer(merged_file)  # the merged q8_0 alone

    events = api.get(f"/api/v1/finetune/exports/{merged['id']}/events").json()["results"]
    progress = [e["data"]["progress"] for e in events if "progress" in e["data"]]
    assert progress == sorted(progress) and progress[-1] > 0.9
    for url in (f"/api/v1/finetune/exports/{merged['id']}", merged["download_url"],
                f"/api/v1/finetune/exports/{merged['id']}/events", f"/api/v1/finetune/adapters/{adapter_id}/download"):
        assert outsider_api.get(url).status_code == 404, url
    assert outsider_api.post(f"/api/v1/finetune/adapters/{adapter_id}/export", {"kind": "adapter_gguf"},
                             format="json").status_code == 404


def _random_adapter(user, base_model, api) -> dict:
    """A registered adapter with random (non-zero) LoRA weights: merge must keep its effect exactly."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from adapters_app.services import adapter_create_from_job
    from tests.factories import personal_team
    from training_app.models import FineTuningJob

    dataset = upload_and_wait_ready(api, [{"instruction": "hi", "input": "", "output": "hello"}] * 2)
    job = FineTuningJob.objects.create(team=personal_team(user), created_by=user, name="random", status="completed",
                                       base_model=base_model, dataset_id=dataset["id"], lora_config={"rank": 4})
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_model.hf_path, dtype=torch.float32),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.05)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        adapter = adapter_create_from_job(job=job, adapter_dir=Path(tmp), final_loss=None)
    return api.get(f"/api/v1/finetune/adapters/{adapter.pk}").json()


def test_merge_registers_a_team_model_whose_logits_equal_base_plus_adapter(celery_worker_process, user, base_model, api,
                                                                           outsider_api):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = _random_adapter(user, base_model, api)
    zipped = zipfile.ZipFile(io.BytesIO(b"".join(api.get(adapter["download_url"]).streaming_content)))
    assert {Path(n).name for n in zipped.namelist()} >= {"adapter_config.json", "adapter_model.safetensors"}
    assert json.loads(zipped.read(f"random-v1/adapter_config.json"))["r"] == 4

    r = api.post(f"/api/v1/finetune/adapters/{adapter['id']}/merge")
    assert r.status_code == 202, r.content
    export = _wait_export(api, r.json()["id"])
    adapter = api.get(f"/api/v1/finetune/adapters/{adapter['id']}").json()
    assert adapter["is_merged"] and adapter["merged_model"] == export["verification"]["model"]
    again = api.post(f"/api/v1/finetune/adapters/{adapter['id']}/merge")
    assert again.status_code == 409 and "already merged" in again.json()["error"]["message"]

    mine = {m["name"]: m for m in api.get("/api/v1/finetune/models").json()["results"]}
    assert mine[adapter["merged_model"]]["trainable"]
    assert adapter["merged_model"] not in {m["name"] for m in outsider_api.get("/api/v1/finetune/models").json()["results"]}

    from nexus.models import BaseModel

    merged_dir = BaseModel.objects.get(name=adapter["merged_model"]).hf_path
    tokenizer = AutoTokenizer.from_pretrained(base_model.hf_path)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    from adapters_app.models import LoRAAdapter
    from adapters_app.services import adapter_local_dir

    with adapter_local_dir(LoRAAdapter.objects.get(pk=adapter["id"])) as folder:
        peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model.hf_path, dtype=torch.float32),
                                         str(folder)).eval()
    plain = AutoModelForCausalLM.from_pretrained(base_model.hf_path, dtype=torch.float32).eval()
    for prompt in ("The capital of France is", "Write a haiku about rivers.", "1, 2, 3,"):
        ids = tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            a, b, c = merged(**ids).logits, peft(**ids).logits, plain(**ids).logits
        assert torch.allclose(a, b, atol=1e-3, rtol=1e-4), float((a - b).abs().max())
        assert float((a - c).abs().max()) > 0.05  # and the adapter did change the model

    # a model trained from the merged model is a normal job (the catalog entry is trainable by the team)
    r = api.post("/api/v1/finetune/estimate", {"base_model": adapter["merged_model"]}, format="json")
    assert r.status_code == 200, r.content
    assert api.delete(f"/api/v1/finetune/adapters/{adapter['id']}").status_code == 204
    assert api.get(f"/api/v1/finetune/adapters/{adapter['id']}").status_code == 404
