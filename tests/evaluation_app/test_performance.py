"""Speed tests through the API on real llama.cpp servers: the design's PerformanceTest in, the
design's PerformanceResults out, per cell and overall, with the server's peak memory."""
from __future__ import annotations

import pytest

from evaluation_app.models import PerformanceTest

pytestmark = pytest.mark.django_db
URL = "/api/v1/finetune/eval/performance"


def run_test(test_id: int) -> None:
    from evaluation_app.jobs import PERFORMANCE
    from evaluation_app.runner import performance_run
    from nexus.jobs import claim

    assert claim(PERFORMANCE, test_id, worker="test@host")
    performance_run(test_id=test_id)


def test_a_speed_test_measures_base_and_base_plus_adapter_on_real_servers(api, eval_adapter):
    r = api.post(URL, {"adapter_id": eval_adapter.pk, "test_prompts": ["Count from one to twenty.", "Name ten fruits."],
                       "output_lengths": [8, 16], "batch_sizes": [1, 2], "num_iterations": 2, "warmup_iterations": 1},
                 format="json")
    assert r.status_code == 202, r.content
    body = r.json()
    assert body["status"] == "queued" and body["output_lengths"] == [8, 16] and body["base_model"]
    run_test(body["id"])
    done = api.get(f"{URL}/{body['id']}").json()
    assert done["status"] == "completed", done["error"]
    for metrics in (done["base_model_metrics"], done["finetuned_metrics"]):
        cells = {(c["output_length"], c["batch_size"]): c for c in metrics["cells"]}
        assert set(cells) == {(8, 1), (8, 2), (16, 1), (16, 2)}
        for (length, batch), cell in cells.items():
            assert cell["n"] == 2 * batch  # iterations x concurrent requests; warm-up excluded
            assert cell["completion_tokens"]["median"] == length
            assert 0 < cell["time_to_first_token_ms"]["median"] < cell["total_time_ms"]["median"]
            assert cell["tokens_per_second"]["p25"] <= cell["tokens_per_second"]["median"] <= \
                cell["tokens_per_second"]["p75"]
        assert metrics["overall"]["tokens_per_second"]["n"] == 12
        assert metrics["peak_memory_mb"] > 50
    assert done["finetuned_metrics"]["server"]["lora_path"] == eval_adapter.gguf_path
    comparison = done["comparison"]
    base_tps = done["base_model_metrics"]["overall"]["tokens_per_second"]["median"]
    ft_tps = done["finetuned_metrics"]["overall"]["tokens_per_second"]["median"]
    assert comparison["overall"]["tokens_per_second"] == pytest.approx((ft_tps - base_tps) / base_tps * 100, rel=1e-6)
    assert len(comparison["cells"]) == 4


def test_speed_test_requests_are_checked_and_outsiders_get_404(api, eval_adapter, outsider_api):
    r = api.post(URL, {}, format="json")
    assert r.status_code == 400 and set(r.json()["error"]["details"]) == {"adapter_id"}
    r = api.post(URL, {"adapter_id": eval_adapter.pk, "batch_sizes": [1, 0]}, format="json")
    assert r.status_code == 400 and "batch_sizes[1]" in r.json()["error"]["details"]
    r = api.post(URL, {"adapter_id": eval_adapter.pk, "output_lengths": "64"}, format="json")
    assert r.status_code == 400 and "output_lengths" in r.json()["error"]["details"]
    r = api.post(URL, {"adapter_id": eval_adapter.pk, "num_iterations": 0}, format="json")
    assert r.status_code == 400 and "num_iterations" in r.json()["error"]["details"]
    assert PerformanceTest.objects.count() == 0
    body = api.post(URL, {"adapter_id": eval_adapter.pk}, format="json").json()
    assert body["output_lengths"] == [64, 256] and body["batch_sizes"] == [1, 4] and body["num_iterations"] == 10
    assert outsider_api.get(f"{URL}/{body['id']}").status_code == 404
    assert outsider_api.delete(f"{URL}/{body['id']}").status_code == 404
    r = api.delete(f"{URL}/{body['id']}")
    assert r.status_code == 202 and r.json()["status"] == "cancelled"
    eval_adapter.gguf_path = ""
    eval_adapter.save(update_fields=["gguf_path"])
    r = api.post(URL, {"adapter_id": eval_adapter.pk}, format="json")
    assert r.status_code == 409 and "no GGUF export yet" in r.json()["error"]["message"]
