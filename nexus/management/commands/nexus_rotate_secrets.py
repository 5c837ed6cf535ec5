"""Re-encrypt every stored secret under the first key of NEXUS_SECRET_KEYS (see nexus/secrets.py)."""
from __future__ import annotations

from django.core.management.base import BaseCommand

from nexus.secrets import secrets_rotate_all


class Command(BaseCommand):
    help = "Re-encrypt every stored secret under the first key of NEXUS_SECRET_KEYS; then the old keys can go."

    def handle(self, *args, **options):
        count = secrets_rotate_all()
        self.stdout.write(self.style.SUCCESS(f"Re-encrypted {count} secret(s) under the first key."))
