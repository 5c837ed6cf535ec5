"""Schemathesis fuzzes every API operation from the OpenAPI schema, in process, against real
objects of the caller's team: no input may make a server error. Bounded to a few minutes."""
from __future__ import annotations

import pytest
import schemathesis
from django.core.wsgi import get_wsgi_application
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error

schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", get_wsgi_application())


@pytest.fixture
def fuzz_target(db, user, base_model):
    from rest_framework.authtoken.models import Token

    from tests.factories import make_adapter, make_deployment, make_job

    job = make_job(user, base_model)
    adapter = make_adapter(job)
    deployment = make_deployment(user, base_model)
    from adapters_app.models import AdapterExport

    export = AdapterExport.objects.create(team=adapter.team, adapter=adapter, kind="adapter_gguf")
    ids = {"dataset_id": job.dataset_id, "job_id": job.pk, "adapter_id": adapter.pk, "deployment_id": deployment.pk,
           "export_id": export.pk, "preset_id": "balanced", "step": 1}
    # requests run inside this test's transaction, as with Django's test client: the handler must not
    # close the connection at the end of each request
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections

    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield {"ids": ids, "headers": {"Authorization": f"Token {Token.objects.get_or_create(user=user)[0].key}"}}
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@schema.parametrize()
@settings(max_examples=20, deadline=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=list(HealthCheck))
@pytest.mark.django_db
def test_no_input_makes_a_server_error(case, fuzz_target):
    ids = fuzz_target["ids"]
    if case.path_parameters:
        case.path_parameters = {k: ids.get(k, v) for k, v in case.path_parameters.items()}
    case.call_and_validate(headers=fuzz_target["headers"], checks=[not_a_server_error])
