"""Deployments move out of adapters_app with their rows: the state gains the three models here, the
database only renames their tables (adapters_app 0005 drops them from adapters_app's state).

Postgres keeps each id column's identity sequence, its indexes and the foreign keys into and out of
a renamed table, so nothing is copied and new rows keep drawing fresh ids. Content types (and with
them admin permissions and log entries) move to the new app label."""
from __future__ import annotations

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

TABLES = ["deployment", "deploymentarm", "deploymentrequest"]


def _rename(old: str, new: str) -> list[migrations.RunSQL]:
    """Each table, and its id sequence so that it keeps the name Postgres gives a new table's (the
    sequence stays attached to the column either way)."""
    return [migrations.RunSQL([f'ALTER TABLE "{old}_{t}" RENAME TO "{new}_{t}"',
                               f'ALTER SEQUENCE IF EXISTS "{old}_{t}_id_seq" RENAME TO "{new}_{t}_id_seq"'],
                              reverse_sql=[f'ALTER TABLE "{new}_{t}" RENAME TO "{old}_{t}"',
                                           f'ALTER SEQUENCE IF EXISTS "{new}_{t}_id_seq" RENAME TO "{old}_{t}_id_seq"'])
            for t in TABLES]


def _move_content_types(old: str, new: str):  # noqa: ANN202
    def move(apps, schema_editor) -> None:  # noqa: ANN001
        ContentType = apps.get_model("contenttypes", "ContentType")
        types = ContentType.objects.using(schema_editor.connection.alias)
        for model in TABLES:
            # a row under the new label exists only if something created it since; then leave both
            if not types.filter(app_label=new, model=model).exists():
                types.filter(app_label=old, model=model).update(app_label=new)

    return move


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ("adapters_app", "0004_arm_api_key"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("nexus", "0003_team_viewers_use_deployments"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=_rename("adapters_app", "deployments_app"),
            state_operations=[
                migrations.CreateModel(
                    name="Deployment",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                        ("name", models.CharField(max_length=200)),
                        ("status", models.CharField(choices=[("starting", "Starting"), ("running", "Running"), ("stopping", "Stopping"), ("stopped", "Stopped"), ("failed", "Failed")], default="starting", max_length=16)),
                        ("settings", models.JSONField(blank=True, default=dict, help_text="llama.cpp server options: n_ctx, threads, ...")),
                        ("error", models.TextField(blank=True)),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        ("started_at", models.DateTimeField(blank=True, null=True)),
                        ("stopped_at", models.DateTimeField(blank=True, null=True)),
                        ("base_model", models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name="deployments", to="nexus.basemodel")),
                        ("created_by", models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name="+", to=settings.AUTH_USER_MODEL)),
                        ("team", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="deployments", to="nexus.team")),
                    ],
                    options={
                        "ordering": ["-created_at"],
                    },
                ),
                migrations.CreateModel(
                    name="DeploymentArm",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                        ("label", models.CharField(help_text="A or B", max_length=16)),
                        ("weight", models.PositiveSmallIntegerField(default=100, help_text="Percent of requests")),
                        ("model_path", models.CharField(blank=True, max_length=1000)),
                        ("lora_path", models.CharField(blank=True, max_length=1000)),
                        ("host", models.CharField(blank=True, max_length=200)),
                        ("port", models.PositiveIntegerField(blank=True, null=True)),
                        ("pid", models.PositiveIntegerField(blank=True, null=True)),
                        ("log_path", models.CharField(blank=True, max_length=1000)),
                        ("api_key_encrypted", models.TextField(blank=True, editable=False)),
                        ("healthy_at", models.DateTimeField(blank=True, null=True)),
                        ("adapter", models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.PROTECT, related_name="arms", to="adapters_app.loraadapter")),
                        ("deployment", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="arms", to="deployments_app.deployment")),
                        ("export", models.ForeignKey(blank=True, help_text="A merged GGUF export served alone", null=True, on_delete=django.db.models.deletion.PROTECT, related_name="arms", to="adapters_app.adapterexport")),
                    ],
                    options={
                        "ordering": ["deployment", "label"],
                        "constraints": [models.UniqueConstraint(fields=("deployment", "label"), name="arm_unique_label")],
                    },
                ),
                migrations.CreateModel(
                    name="DeploymentRequest",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                        ("endpoint", models.CharField(max_length=64)),
                        ("status_code", models.PositiveSmallIntegerField(default=200)),
                        ("prompt_tokens", models.PositiveIntegerField(default=0)),
                        ("completion_tokens", models.PositiveIntegerField(default=0)),
                        ("latency_ms", models.PositiveIntegerField(default=0)),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        ("arm", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="requests", to="deployments_app.deploymentarm")),
                        ("deployment", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="requests", to="deployments_app.deployment")),
                        ("user", models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name="+", to=settings.AUTH_USER_MODEL)),
                    ],
                    options={
                        "ordering": ["-created_at"],
                    },
                ),
            ],
        ),
        migrations.RunPython(_move_content_types("adapters_app", "deployments_app"),
                             _move_content_types("deployments_app", "adapters_app")),
    ]
