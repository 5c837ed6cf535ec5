"""The job websocket when Redis (the channel layer) restarts or is down: no server error; the
socket replays the backlog from the database and closes with a reason the page shows and
retries on. The test runs its own Redis server on a free port and stops only that one."""
from __future__ import annotations

import socket
import subprocess
import time

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.testing import WebsocketCommunicator

from nexus.consumers import LAYER_DOWN_CODE
from tests.factories import make_job, record_event
from tests.nexus.test_websocket import _app, _headers

pytestmark = pytest.mark.django_db(transaction=True)


class OwnRedis:
    def __init__(self, tmp_path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.dir = tmp_path
        self.proc = None

    def start(self) -> None:
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.dir)], stdout=subprocess.DEVNULL)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def own_redis(tmp_path, settings):
    from nexus.settings.base import channel_layer

    server = OwnRedis(tmp_path)
    server.start()
    settings.CHANNEL_LAYERS = {"default": channel_layer(f"redis://127.0.0.1:{server.port}/0")}
    yield server
    server.stop()


def test_a_redis_restart_or_outage_never_fails_the_socket(user, base_model, own_redis):
    job = make_job(user, base_model)
    for i in range(3):
        record_event(job, f"line {i}")
    headers = _headers(user)
    url = f"/ws/finetune/training/{job.pk}/"

    async def connect_and_read(n: int) -> tuple[WebsocketCommunicator, list[dict]]:
        comm = WebsocketCommunicator(_app(), url, headers=headers)
        connected, _ = await comm.connect(timeout=5)
        assert connected
        return comm, [await comm.receive_json_from(timeout=5) for _ in range(n)]

    async def scenario():
        comm, events = await connect_and_read(3)
        assert [e["seq"] for e in events] == [1, 2, 3]
        await comm.disconnect()

        # Redis restarts: the first socket after it used to be a server error (a stale pooled connection)
        own_redis.stop()
        own_redis.start()
        comm, events = await connect_and_read(3)
        await sync_to_async(record_event)(job, "after the restart")
        assert (await comm.receive_json_from(timeout=5))["seq"] == 4  # live again
        await comm.disconnect()

        # Redis is down: the backlog still comes from the database, then a close with a reason
        own_redis.stop()
        comm, events = await connect_and_read(4)
        assert [e["seq"] for e in events] == [1, 2, 3, 4]
        closed = await comm.receive_output(timeout=5)
        assert closed["type"] == "websocket.close" and closed["code"] == LAYER_DOWN_CODE
        assert "Live updates are unavailable" in closed["reason"]

    async_to_sync(scenario)()
