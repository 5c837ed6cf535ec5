"""Run the demo through the real REST API: upload the bundled Alpaca data, fine-tune a LoRA
adapter on the demo model, and follow the job until it ends."""
from __future__ import annotations

import time
from pathlib import Path

import requests
from django.core.management.base import BaseCommand, CommandError
from rest_framework.authtoken.models import Token

from nexus.demo_model import DEMO_MODEL_NAME

DEMO_USER = "demo"
DEMO_PASSWORD = "nexus-demo"
DEMO_DATA = Path(__file__).resolve().parents[3] / "datasets_app" / "demo_data" / "pirate_alpaca.jsonl"


class Command(BaseCommand):
    help = "Create the demo user, then upload the demo dataset and fine-tune the demo model through the API."

    def add_arguments(self, parser):
        parser.add_argument("--base-url", default="http://127.0.0.1:8000")
        parser.add_argument("--steps", type=int, default=30)
        parser.add_argument("--no-follow", action="store_true", help="do not wait for the job to finish")

    def handle(self, *args, base_url: str, steps: int, no_follow: bool, **options):
        from django.contrib.auth import get_user_model

        from nexus.teams import team_ensure_personal, user_create

        User = get_user_model()
        user = User.objects.filter(username=DEMO_USER).first() or user_create(username=DEMO_USER, password=DEMO_PASSWORD)
        team_ensure_personal(user=user)
        token, _ = Token.objects.get_or_create(user=user)
        api = requests.Session()
        api.headers["Authorization"] = f"Token {token.key}"
        url = base_url.rstrip("/") + "/api/v1/finetune"

        with DEMO_DATA.open("rb") as fh:
            r = api.post(f"{url}/datasets", files={"file": (DEMO_DATA.name, fh)}, data={"name": "Pirate answers (demo)"})
        if r.status_code != 201:
            raise CommandError(f"upload failed: {r.status_code} {r.text}")
        dataset = r.json()
        self.stdout.write(f"Uploaded dataset #{dataset['id']} ({DEMO_DATA.name}); waiting for processing...")
        for _ in range(300):
            dataset = api.get(f"{url}/datasets/{dataset['id']}").json()
            if dataset["status"] in ("ready", "error"):
                break
            time.sleep(1)
        if dataset["status"] != "ready":
            raise CommandError(f"dataset did not become ready: {dataset['status']} {dataset.get('error_message')}")
        self.stdout.write(f"Dataset ready: {dataset['num_examples']} examples, {dataset['total_tokens']} tokens")

        body = {
            "name": "pirate-smollm2",
            "description": "Demo: teach SmolLM2 to answer like a pirate",
            "base_model": DEMO_MODEL_NAME,
            "dataset_id": dataset["id"],
            "lora_config": {"rank": 16, "alpha": 32, "dropout": 0.05},
            "training_config": {"max_steps": steps, "batch_size": 4, "gradient_accumulation_steps": 1,
                                "learning_rate": 1e-3, "max_seq_length": 128, "warmup_steps": max(1, steps // 20)},
        }
        r = api.post(f"{url}/jobs", json=body)
        if r.status_code != 201:
            raise CommandError(f"job creation failed: {r.status_code} {r.text}")
        job = r.json()
        page = f"{base_url.rstrip('/')}/finetune/training/{job['id']}/"
        self.stdout.write(self.style.SUCCESS(
            f"\n  Live job page: {page}\n  Log in as:     {DEMO_USER} / {DEMO_PASSWORD}\n  API token:     {token.key}\n"
        ))
        if no_follow:
            return
        seen = 0
        while True:
            events = api.get(f"{url}/jobs/{job['id']}/events", params={"after": seen}).json()["results"]
            for e in events:
                seen = e["seq"]
                if e["type"] in ("metric", "status") or e["level"] in ("warning", "error"):
                    self.stdout.write(f"  [{e['type']}] {e['message'].splitlines()[-1] if e['message'] else ''}")
            job = api.get(f"{url}/jobs/{job['id']}").json()
            if job["status"] in ("completed", "failed", "cancelled") and not events:
                break
            time.sleep(1)
        style = self.style.SUCCESS if job["status"] == "completed" else self.style.ERROR
        self.stdout.write(style(f"Job {job['status']}: best loss {job['best_loss']}, adapter #{job['adapter_id']} ({page})"))
        if job["status"] == "completed":
            self._export_and_compare(api, url, base_url, job["adapter_id"])

    def _export_and_compare(self, api, url: str, base_url: str, adapter_id: int) -> None:
        """Export the adapter to llama.cpp's GGUF (verified there), then ask base and adapter the same question."""
        r = api.post(f"{url}/adapters/{adapter_id}/export", json={"kind": "adapter_gguf"})
        if r.status_code != 202:
            raise CommandError(f"export failed to start: {r.status_code} {r.text}")
        export = r.json()
        self.stdout.write("Exporting the adapter to GGUF for llama.cpp...")
        for _ in range(600):
            export = api.get(f"{url}/exports/{export['id']}").json()
            if export["status"] in ("completed", "failed"):
                break
            time.sleep(1)
        if export["status"] != "completed":
            raise CommandError(f"export {export['status']}: {export.get('error')}")
        self.stdout.write(f"  {export['filename']}: {export['size_bytes'] / 1e6:.1f} MB, verified in llama.cpp")
        prompt = "What is the capital of France?"
        cmp = api.get(f"{url}/adapters/{adapter_id}/compare", params={"prompt": prompt, "max_tokens": 40}).json()
        self.stdout.write(f"\n  {prompt}")
        for side in ("base", "adapter"):
            if side in cmp:
                self.stdout.write(f"  {side:8s} ({cmp[side]['tokens_per_s']:.0f} tokens/s): {cmp[side]['text'].strip()}")
        self.stdout.write(self.style.SUCCESS(
            f"\n  Adapter page (exports, merge, deploy): {base_url.rstrip('/')}/finetune/adapters/{adapter_id}/"))
