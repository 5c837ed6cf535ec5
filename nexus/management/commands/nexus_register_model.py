from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from nexus.catalog import base_model_register
from nexus.errors import NexusError


class Command(BaseCommand):
    help = "Register a base model from a local HF folder (for training) and/or a GGUF file (for llama.cpp)."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--hf-path", help="local Hugging Face model folder")
        parser.add_argument("--gguf", help="GGUF model file")

    def handle(self, *args, name: str, hf_path: str | None, gguf: str | None, **options):
        try:
            model = base_model_register(name=name, hf_path=hf_path, gguf_path=gguf, source="local", upload=True)
        except NexusError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(self.style.SUCCESS(f"Registered {model.name} ({model.architecture}, {model.parameter_count:,} parameters)"))
