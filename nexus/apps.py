from __future__ import annotations

from django.apps import AppConfig


class NexusConfig(AppConfig):
    name = "nexus"
    verbose_name = "Nexus core (teams, base models, job events)"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.contrib.auth import get_user_model
        from django.db.models.signals import post_save

        post_save.connect(_personal_team_for_new_user, sender=get_user_model(), dispatch_uid="nexus-personal-team")


def _personal_team_for_new_user(sender, instance, created: bool, raw: bool = False, **kwargs) -> None:  # noqa: ANN001
    """Every user has a personal team from the start, however they were made (sign-up, the admin,
    createsuperuser), so that no page has to create one while it is being read."""
    if created and not raw:
        from nexus.teams import team_ensure_personal

        team_ensure_personal(user=instance)
