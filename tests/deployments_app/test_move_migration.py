"""Deployments moved from adapters_app to deployments_app by renaming their tables: rows written
before the move, migrated forward with Django's executor, are all there with their relations; ids
keep coming from the same sequences; content types (admin permissions, log entries) follow."""
from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = [("adapters_app", "0004_arm_api_key"), ("deployments_app", None)]
MODELS = ["deployment", "deploymentarm", "deploymentrequest"]


def _tables() -> set[str]:
    with connection.cursor() as cursor:
        return {t for t in connection.introspection.table_names(cursor) if "deployment" in t}


@pytest.mark.django_db(transaction=True)
def test_deployments_rows_survive_the_move_to_their_own_app():
    from django.contrib.auth.models import Permission
    from django.contrib.contenttypes.models import ContentType

    executor = MigrationExecutor(connection)
    latest = executor.loader.graph.leaf_nodes()
    executor.migrate(BEFORE)
    try:
        executor.loader.build_graph()  # the historical models of exactly what is applied now
        old = executor.loader.project_state(list(executor.loader.applied_migrations)).apps
        assert "deployments_app" not in {label for label, _ in executor.loader.applied_migrations}
        assert _tables() == {"adapters_app_deployment", "adapters_app_deploymentarm", "adapters_app_deploymentrequest"}
        types = old.get_model("contenttypes", "ContentType").objects
        assert set(types.filter(model__in=MODELS).values_list("app_label", flat=True)) == {"adapters_app"}
        type_ids = dict(types.filter(model__in=MODELS).values_list("model", "pk"))

        user = old.get_model("auth", "User").objects.create(username="before-the-move", password="x")
        team = old.get_model("nexus", "Team").objects.create(name="Movers", slug="movers", personal_owner=user)
        base = old.get_model("nexus", "BaseModel").objects.create(name="tiny", gguf_path="/models/tiny.gguf")
        adapter = old.get_model("adapters_app", "LoRAAdapter").objects.create(
            team=team, name="pirate", base_model=base, path="adapters/pirate")
        export = old.get_model("adapters_app", "AdapterExport").objects.create(
            team=team, adapter=adapter, kind="model_gguf", quantization="q8_0", status="completed", path="e.gguf")
        Deployment = old.get_model("adapters_app", "Deployment")
        DeploymentArm = old.get_model("adapters_app", "DeploymentArm")
        DeploymentRequest = old.get_model("adapters_app", "DeploymentRequest")
        deployment = Deployment.objects.create(team=team, name="prod-chat", base_model=base, status="stopped",
                                               created_by=user, settings={"n_ctx": 512}, error="earlier failure")
        arm_a = DeploymentArm.objects.create(deployment=deployment, label="A", adapter=adapter, weight=70,
                                             port=8123, pid=4242, log_path="/var/a.log", api_key_encrypted="sealed")
        arm_b = DeploymentArm.objects.create(deployment=deployment, label="B", export=export, weight=30)
        request = DeploymentRequest.objects.create(deployment=deployment, arm=arm_b, endpoint="chat/completions",
                                                   status_code=200, prompt_tokens=11, completion_tokens=7,
                                                   latency_ms=250, user=user)
        permission = old.get_model("auth", "Permission").objects.get(content_type_id=type_ids["deployment"],
                                                                     codename="change_deployment")
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(latest)

    from deployments_app.models import Deployment as DeploymentNow
    from deployments_app.models import DeploymentArm as ArmNow
    from deployments_app.models import DeploymentRequest as RequestNow

    assert _tables() == {"deployments_app_deployment", "deployments_app_deploymentarm",
                         "deployments_app_deploymentrequest"}
    moved = DeploymentNow.objects.get(pk=deployment.pk)
    assert (moved.name, moved.status, moved.settings, moved.error) == ("prod-chat", "stopped", {"n_ctx": 512},
                                                                     "earlier failure")
    assert (moved.team_id, moved.base_model_id, moved.created_by_id) == (team.pk, base.pk, user.pk)
    arms = {a.label: a for a in moved.arms.all()}
    assert set(arms) == {"A", "B"}
    assert (arms["A"].pk, arms["A"].adapter.name, arms["A"].export, arms["A"].weight) == (arm_a.pk, "pirate", None, 70)
    assert (arms["A"].port, arms["A"].pid, arms["A"].log_path, arms["A"].api_key_encrypted) == (
        8123, 4242, "/var/a.log", "sealed")
    assert (arms["B"].pk, arms["B"].adapter, arms["B"].export.quantization, arms["B"].weight) == (arm_b.pk, None,
                                                                                               "q8_0", 30)
    assert arms["B"].serves == "merged q8_0 GGUF of pirate v1"
    served = moved.requests.get()
    assert (served.pk, served.arm_id, served.arm.label, served.deployment_id) == (request.pk, arm_b.pk, "B", moved.pk)
    assert (served.endpoint, served.prompt_tokens, served.completion_tokens, served.latency_ms, served.user_id) == (
        "chat/completions", 11, 7, 250, user.pk)
    assert list(moved.team.deployments.all()) == [moved]

    # the id sequences moved with their tables: new rows get fresh ids, not a clash with the old ones
    again = DeploymentNow.objects.create(team_id=team.pk, name="after the move", base_model_id=base.pk)
    arm = ArmNow.objects.create(deployment=again, label="A", adapter_id=adapter.pk)
    after = RequestNow.objects.create(deployment=again, arm=arm, endpoint="models")
    assert again.pk > deployment.pk and arm.pk > arm_b.pk and after.pk > request.pk

    ContentType.objects.clear_cache()
    for model in MODELS:
        content_type = ContentType.objects.get(pk=type_ids[model])
        assert (content_type.app_label, content_type.model) == ("deployments_app", model)
    assert not ContentType.objects.filter(app_label="adapters_app", model__in=MODELS).exists()
    assert ContentType.objects.get_for_model(DeploymentNow).pk == type_ids["deployment"]
    assert Permission.objects.get(pk=permission.pk).content_type.app_label == "deployments_app"
