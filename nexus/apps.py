from __future__ import annotations

from django.apps import AppConfig


class NexusConfig(AppConfig):
    name = "nexus"
    verbose_name = "Nexus core (teams, base models, job events)"
    default_auto_field = "django.db.models.BigAutoField"
