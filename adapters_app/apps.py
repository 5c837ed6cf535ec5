from __future__ import annotations

from django.apps import AppConfig


class AdaptersAppConfig(AppConfig):
    name = "adapters_app"
    verbose_name = "Adapters"
