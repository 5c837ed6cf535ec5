"""A real browser against daphne and the Celery worker: deploy the base model from the list page,
watch it come up, chat with it with streamed output, see the arm and tokens/s, stop it."""
from __future__ import annotations

import pytest

from tests.browser.test_job_page import browser_page, log_in  # noqa: F401 - fixture
from tests.factories import make_user

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def dana(db):
    return make_user("dana", password="dana-password-1")


def test_chat_page_streams_the_answer_and_shows_the_arm_and_speed(celery_worker_process, asgi_server, base_model, dana,
                                                                  browser_page):  # noqa: F811
    from deployments_app.engine import serving
    from deployments_app.models import Deployment, DeploymentRequest

    page = browser_page
    page.set_default_timeout(30_000)
    page.goto(f"{asgi_server}/finetune/deployments/")
    log_in(page, "dana", "dana-password-1")
    page.wait_for_url("**/finetune/deployments/")
    page.fill("#deploy-form input[name=name]", "browser chat")
    page.click("#deploy-button")
    page.wait_for_url("**/finetune/deployments/*/")
    page.wait_for_selector("#deployment-badge.running", timeout=180_000)  # htmx polls the status partial
    page.wait_for_selector("#deployment-arms tr[data-arm=A] .health .badge.ready")
    deployment = Deployment.objects.get(name="browser chat")
    arm = deployment.arms.get()
    try:
        page.click("#chat-link")
        page.wait_for_url("**/chat/")
        # count how often the answer's text changes: streamed output changes it chunk by chunk
        page.evaluate("""() => { window.textUpdates = 0;
            new MutationObserver(() => { window.textUpdates += 1; })
              .observe(document.getElementById('chat-log'), {subtree: true, childList: true, characterData: true}); }""")
        page.fill("#chat-input", "Write one sentence about the sea.")
        page.fill("#chat-max-tokens", "24")
        page.click("#chat-send")
        meta = page.wait_for_selector(".chat-msg.assistant .chat-meta:has-text('tokens/s')", timeout=60_000)
        assert meta.inner_text().startswith("arm A · ")
        answer = page.inner_text(".chat-msg.assistant .chat-text")
        assert answer.strip()
        assert page.evaluate("window.textUpdates") > 5  # many partial updates, not one at the end
        row = DeploymentRequest.objects.get(deployment=deployment)
        assert (row.arm.label, row.endpoint, row.status_code) == ("A", "chat/completions", 200)
        assert row.completion_tokens > 1 and row.user == dana

        page.click("#deployment-link")
        page.wait_for_selector("#deployment-arms tr[data-arm=A] td.requests:has-text('1')")
        page.click("#stop-button")
        page.wait_for_selector("#deployment-badge.stopped")
        assert not serving.is_alive(arm.pid, arm.port)
    finally:
        serving.stop(arm.pid, arm.port)
        # ORM calls made while Playwright runs use a connection of their own; close it before the
        # test database is dropped
        from django.db import connections

        connections.close_all()
