"""The job websocket through the real ASGI stack (auth, origin check, Redis channel layer)."""
from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from nexus.models import JobEvent
from tests.factories import make_job, make_user, record_event

pytestmark = pytest.mark.django_db(transaction=True)


def _headers(user) -> list[tuple[bytes, bytes]]:
    client = Client()
    client.force_login(user)
    cookie = f"sessionid={client.cookies['sessionid'].value}"
    return [(b"cookie", cookie.encode()), (b"origin", b"http://localhost")]


def _app():
    from nexus.asgi import application

    return application


async def _receive_all(comm: WebsocketCommunicator, n: int, timeout: float = 5) -> list[dict]:
    return [await comm.receive_json_from(timeout=timeout) for _ in range(n)]


def test_connect_replays_the_backlog_then_streams_live_events(user, base_model):
    job = make_job(user, base_model)
    for i in range(3):
        record_event(job, f"old {i}")

    headers = _headers(user)

    async def scenario():
        comm = WebsocketCommunicator(_app(), f"/ws/finetune/training/{job.pk}/", headers=headers)
        connected, _ = await comm.connect()
        assert connected
        backlog = await _receive_all(comm, 3)
        assert [e["seq"] for e in backlog] == [1, 2, 3]
        await sync_to_async(record_event)(job, "step 1/10 loss 2.0", type="metric", data={"step": 1, "loss": 2.0})
        live = await comm.receive_json_from(timeout=5)
        assert live["seq"] == 4 and live["type"] == "metric" and live["data"]["loss"] == 2.0
        assert await comm.receive_nothing(timeout=0.3)
        await comm.disconnect()

    async_to_sync(scenario)()


def test_reconnect_with_after_resumes_without_gaps_or_duplicates(user, base_model):
    job = make_job(user, base_model)
    for i in range(5):
        record_event(job, f"line {i}")

    headers = _headers(user)

    async def scenario():
        comm = WebsocketCommunicator(_app(), f"/ws/finetune/training/{job.pk}/?after=3", headers=headers)
        connected, _ = await comm.connect()
        assert connected
        got = await _receive_all(comm, 2)
        assert [e["seq"] for e in got] == [4, 5]
        assert [e["message"] for e in got] == ["line 3", "line 4"]
        # events written while "offline" arrive in order after reconnecting
        await comm.disconnect()
        for i in range(5, 8):
            await sync_to_async(record_event)(job, f"line {i}")
        comm = WebsocketCommunicator(_app(), f"/ws/finetune/training/{job.pk}/?after=5", headers=headers)
        await comm.connect()
        got = await _receive_all(comm, 3)
        assert [e["seq"] for e in got] == [6, 7, 8]
        assert await comm.receive_nothing(timeout=0.3)
        await comm.disconnect()

    async_to_sync(scenario)()


def test_outsider_and_anonymous_are_refused_and_get_nothing(user, base_model):
    job = make_job(user, base_model)
    record_event(job, "secret training log")
    outsider_headers = _headers(make_user("mallory"))
    headers_user = _headers(user)

    async def scenario():
        for headers in (outsider_headers, [(b"origin", b"http://localhost")]):
            comm = WebsocketCommunicator(_app(), f"/ws/finetune/training/{job.pk}/", headers=headers)
            connected, _ = await comm.connect()
            assert not connected
            await comm.disconnect()
        # an unknown job looks the same as another team's job
        comm = WebsocketCommunicator(_app(), "/ws/finetune/training/999999/", headers=headers_user)
        connected, _ = await comm.connect()
        assert not connected
        await comm.disconnect()  # as the server does after a refusal: the consumer ends while the loop runs

    async_to_sync(scenario)()


def test_dataset_processing_events_have_their_own_stream(user, base_model):
    from nexus.events import job_event_record

    job = make_job(user, base_model)
    dataset = job.dataset
    headers = _headers(user)
    backlog_size = JobEvent.objects.filter(job_kind="dataset", job_id=dataset.pk).count()
    assert backlog_size >= 3  # uploaded, processing started, ready

    async def scenario():
        comm = WebsocketCommunicator(_app(), f"/ws/finetune/dataset/{dataset.pk}/", headers=headers)
        connected, _ = await comm.connect()
        assert connected
        events = await _receive_all(comm, backlog_size)
        assert await comm.receive_nothing(timeout=0.3)
        assert any("Ready" in e["message"] for e in events)
        await sync_to_async(job_event_record)(kind="dataset", job_id=dataset.pk, message="revalidated")
        live = await comm.receive_json_from(timeout=5)
        assert live["message"] == "revalidated" and live["seq"] == events[-1]["seq"] + 1
        await comm.disconnect()

    async_to_sync(scenario)()


def test_a_dropped_push_is_filled_from_the_database_and_duplicates_are_skipped(user, base_model):
    from channels.layers import get_channel_layer

    from nexus.events import job_group
    from nexus.models import JobEvent

    job = make_job(user, base_model)
    record_event(job, "one")
    headers = _headers(user)

    def write_without_push(message: str) -> dict:
        last = JobEvent.objects.filter(job_kind="training", job_id=job.pk).count()
        return JobEvent.objects.create(job_kind="training", job_id=job.pk, seq=last + 1, message=message).as_message()

    async def scenario():
        comm = WebsocketCommunicator(_app(), f"/ws/finetune/training/{job.pk}/", headers=headers)
        assert (await comm.connect())[0]
        assert (await comm.receive_json_from(timeout=5))["seq"] == 1
        layer = get_channel_layer()
        lost = await sync_to_async(write_without_push)("two (its push was lost)")
        third = await sync_to_async(write_without_push)("three")
        await layer.group_send(job_group("training", job.pk), {"type": "job.event", "event": third})
        got = await _receive_all(comm, 2)
        assert [e["seq"] for e in got] == [2, 3] and got[0]["message"] == lost["message"]
        await layer.group_send(job_group("training", job.pk), {"type": "job.event", "event": third})  # again
        assert await comm.receive_nothing(timeout=0.5)
        await comm.disconnect()

    async_to_sync(scenario)()


def test_outsider_cannot_follow_anothers_dataset_processing(user, base_model):
    job = make_job(user, base_model)
    headers = _headers(make_user("mallory"))

    async def scenario():
        comm = WebsocketCommunicator(_app(), f"/ws/finetune/dataset/{job.dataset_id}/", headers=headers)
        connected, _ = await comm.connect()
        assert not connected
        await comm.disconnect()  # as the server does after a refusal: the consumer ends while the loop runs

    async_to_sync(scenario)()


def test_an_idle_websocket_stays_open_longer_than_the_redis_read_timeout(user, base_model):
    job = make_job(user, base_model)
    headers = _headers(user)

    async def scenario():
        comm = WebsocketCommunicator(_app(), f"/ws/finetune/training/{job.pk}/", headers=headers)
        assert (await comm.connect())[0]
        assert await comm.receive_nothing(timeout=12, interval=0.5)  # a slow training step
        await sync_to_async(record_event)(job, "after a quiet while")
        event = await comm.receive_json_from(timeout=10)
        assert event["message"] == "after a quiet while"
        await comm.disconnect()

    async_to_sync(scenario)()
