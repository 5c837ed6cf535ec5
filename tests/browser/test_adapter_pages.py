"""The adapter detail page in a real browser against the real server and worker: the export
dialog (a service error shown inside it), a LoRA adapter GGUF export whose progress bar follows
the export's websocket, ending completed and verified in llama.cpp with a working download."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser.test_job_page import browser_page, log_in  # noqa: F401 - the fixture
from tests.conftest import api_client_for
from tests.e2e.test_export_e2e import _random_adapter
from tests.factories import make_user

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def dora_adapters(celery_worker_process, base_model) -> dict:
    # made before Playwright starts (its greenlets must not open database connections)
    from adapters_app.models import LoRAAdapter

    user = make_user("dora", password="dora-password-1")
    adapter = LoRAAdapter.objects.get(pk=_random_adapter(user, base_model, api_client_for(user))["id"])
    merged = LoRAAdapter.objects.create(team=adapter.team, name=adapter.name, version=2, base_model=base_model,
                                        job=adapter.job, dataset=adapter.dataset, path=adapter.path,
                                        lora_config=adapter.lora_config, is_merged=True, merged_model=base_model)
    return {"adapter": adapter.pk, "merged": merged.pk}


def test_export_dialog_and_live_export_progress(celery_worker_process, asgi_server, dora_adapters,
                                                browser_page):  # noqa: F811
    page = browser_page
    page.set_default_timeout(30_000)
    page.goto(f"{asgi_server}/finetune/adapters/")
    log_in(page, "dora", "dora-password-1")
    page.wait_for_selector(".adapter-card")
    assert page.locator(".adapter-group").count() == 1 and page.locator(".adapter-card").count() == 2
    Path("var/test-logs").mkdir(parents=True, exist_ok=True)
    page.screenshot(path="var/test-logs/adapter-list.png", full_page=True)

    # an error from the service lands in the dialog, which stays open
    page.goto(f"{asgi_server}/finetune/adapters/{dora_adapters['merged']}/")
    page.click("#export-open")
    page.wait_for_selector("#export-dialog[open]")
    page.check("input[name=kind][value=merge]")
    page.click("#export-submit")
    page.wait_for_selector("#export-error")
    assert "is already merged into" in page.inner_text("#export-error")
    assert page.is_visible("#export-dialog") and page.is_checked("input[name=kind][value=merge]")
    assert "No exports yet" in page.inner_text("#exports")
    page.screenshot(path="var/test-logs/adapter-export-dialog.png")

    page.goto(f"{asgi_server}/finetune/adapters/{dora_adapters['adapter']}/")
    page.click("#export-open")
    page.wait_for_selector("#export-dialog[open]")
    assert page.is_disabled("select[name=quantization]")  # only the merged model GGUF is quantized
    page.check("input[name=kind][value=model_gguf]")
    assert page.is_enabled("select[name=quantization]")
    page.check("input[name=kind][value=adapter_gguf]")
    page.click("#export-submit")
    row = "#exports tr[data-export-id]"
    page.wait_for_selector(row)  # the new row, swapped in by htmx, with its bar
    assert page.locator(row).count() == 1 and page.locator(f"{row} progress").count() == 1
    page.wait_for_selector("#export-dialog", state="hidden")
    try:
        page.wait_for_selector(f"{row}[data-status=completed] .verified", timeout=300_000)
    except Exception as exc:  # say where the export was instead of only "timeout"
        raise AssertionError(f"export not completed: {page.inner_text('#exports')!r}") from exc

    seen = page.evaluate("() => window.nexusExportProgress")
    assert seen == sorted(seen) and len({p for p in seen if 0 < p < 1}) >= 2, seen  # the bar moved
    text = page.inner_text(row)
    assert "LoRA adapter GGUF" in text and "✓ verified" in text and "tokens/s" in text
    assert "What is the capital of France?" in text
    assert page.locator(f"{row} progress").count() == 0  # the reloaded row has no bar

    with page.expect_download() as download:
        page.click(f"{row} .export-download")
    assert download.value.suggested_filename.endswith(".lora.gguf")
    assert Path(download.value.path()).read_bytes()[:4] == b"GGUF"
    page.screenshot(path="var/test-logs/adapter-detail.png", full_page=True)
