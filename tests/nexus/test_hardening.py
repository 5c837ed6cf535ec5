"""What a security, fault and load probe of the running system found (issue 10), each pinned."""
from __future__ import annotations

import pytest

from tests.factories import make_ready_dataset

pytestmark = pytest.mark.django_db


def test_a_split_against_zero_is_a_400_naming_the_field(api, user, base_model):
    dataset = make_ready_dataset(user)
    r = api.post(f"/api/v1/finetune/datasets/{dataset.pk}/split", {"against": 0}, format="json")
    assert r.status_code == 400, r.content
    assert r.json()["error"]["message"].startswith("against:")


@pytest.mark.parametrize("url", ["/api/v1/finetune/datasets", "/api/v1/finetune/jobs", "/api/v1/finetune/adapters",
                                 "/api/v1/finetune/deployments"])
def test_a_nul_in_the_team_query_is_a_400_naming_it(api, url):
    r = api.get(url, {"team": "\x00"})
    assert r.status_code == 400, r.content
    assert r.json()["error"]["message"].startswith("team:")


def test_a_nul_or_a_bad_slug_in_a_body_is_a_400_naming_the_field(api, user, base_model):
    dataset = make_ready_dataset(user)
    body = {"name": "x", "base_model": base_model.name, "dataset_id": dataset.pk}
    for team in ("t\x00", "no such/slug", ["list"]):
        r = api.post("/api/v1/finetune/jobs", {**body, "team": team}, format="json")
        assert r.status_code == 400, (team, r.content)
        assert r.json()["error"]["message"].startswith("team"), r.json()
    r = api.post("/api/v1/finetune/jobs", {**body, "lora_config": {"target_modules": ["q_proj\x00"]}}, format="json")
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("lora_config.target_modules[0]:")
    # a page's query string too
    from django.test import Client

    client = Client()
    client.force_login(user)
    assert client.get("/finetune/training/new/", {"dataset": "1\x00"}).status_code == 400
