"""The Django admin shows adapters with their exports, and deployments with their arms."""
from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from adapters_app.models import AdapterExport
from deployments_app.models import Deployment, DeploymentArm
from tests.factories import make_adapter, make_job

pytestmark = pytest.mark.django_db


def test_admin_lists_and_opens_adapters_exports_and_deployments(client, user, base_model):
    adapter = make_adapter(make_job(user, base_model))
    export = AdapterExport.objects.create(team=adapter.team, adapter=adapter, kind="model_gguf", quantization="q8_0")
    deployment = Deployment.objects.create(team=adapter.team, name="prod-chat", base_model=base_model)
    DeploymentArm.objects.create(deployment=deployment, label="A", adapter=adapter, weight=100)
    client.force_login(get_user_model().objects.create_superuser("root", password="pw-123456"))
    for url, text in [("/admin/adapters_app/loraadapter/", adapter.name),
                      (f"/admin/adapters_app/loraadapter/{adapter.pk}/change/", "q8_0"),
                      ("/admin/adapters_app/adapterexport/", "q8_0"),
                      (f"/admin/adapters_app/adapterexport/{export.pk}/change/", "q8_0"),
                      ("/admin/deployments_app/deployment/", "prod-chat"),
                      (f"/admin/deployments_app/deployment/{deployment.pk}/change/", "prod-chat"),
                      ("/admin/deployments_app/deploymentrequest/", "0 deployment requests")]:
        r = client.get(url)
        assert r.status_code == 200 and text in r.content.decode(), url
