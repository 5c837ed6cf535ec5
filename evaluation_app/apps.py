from __future__ import annotations

from django.apps import AppConfig


class EvaluationAppConfig(AppConfig):
    name = "evaluation_app"
    verbose_name = "Evaluation"
