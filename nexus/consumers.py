"""Websocket for a job's live events: access check, then backlog from the database, then live pushes."""
from __future__ import annotations

import asyncio
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.layers import get_channel_layer
from channels.utils import await_many_dispatch
from django.http import Http404
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from nexus.events import job_events_after, job_group

# what the channel layer raises when Redis restarts under it or is down
LAYER_ERRORS = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError, asyncio.TimeoutError)
LAYER_DOWN_CODE = 4503  # the page shows the reason and connects again, resuming after its last event
LAYER_DOWN_REASON = "Live updates are unavailable (the message broker cannot be reached); retrying"


class JobEventsConsumer(AsyncJsonWebsocketConsumer):
    """ws/finetune/<kind>/<id>/?after=<seq>: replays events after `seq`, then streams new ones in order."""

    async def __call__(self, scope, receive, send):
        """As channels' consumer, but the channel layer's receive loop survives Redis going away:
        a failure becomes a `layer.down` message (handled below) instead of a server error."""
        self.scope = scope
        self.layer_down = False
        self.accepted = False
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        self.channel_name = await self.channel_layer.new_channel()
        self.channel_receive = self._layer_receive
        self.base_send = send
        try:
            await await_many_dispatch([receive, self.channel_receive], self.dispatch)
        except StopConsumer:
            pass

    async def _layer_receive(self) -> dict:
        if self.layer_down:
            await asyncio.Event().wait()  # reported once; the socket closes, the page reconnects
        try:
            return await self.channel_layer.receive(self.channel_name)
        except LAYER_ERRORS:
            self.layer_down = True
            return {"type": "layer.down"}

    async def layer_down(self, message):
        if self.accepted:
            await self._close_layer_down()
        # before the handshake: connect() replays the backlog first, then closes with the reason

    async def _close_layer_down(self) -> None:
        self.group = None  # nothing to leave: the broker is gone
        await self.close(code=LAYER_DOWN_CODE, reason=LAYER_DOWN_REASON)

    async def _join(self) -> bool:
        """Join the job's group; a connection that died with a Redis restart is retried once."""
        for _ in range(2):
            try:
                await self.channel_layer.group_add(self.group, self.channel_name)
                return True
            except LAYER_ERRORS:
                pass
        return False

    async def connect(self):
        kwargs = self.scope["url_route"]["kwargs"]
        self.kind = kwargs["kind"]
        self.job_id = int(kwargs["job_id"])
        self.last_seq = 0
        self.group = None
        if not await self._allowed():
            # Outsiders and unknown jobs look the same: the handshake is refused (HTTP 403 at the
            # websocket layer) and nothing reveals whether the job exists.
            await self.close()
            return
        query = parse_qs(self.scope.get("query_string", b"").decode())
        try:
            self.last_seq = max(0, int(query.get("after", ["0"])[0]))
        except ValueError:
            self.last_seq = 0
        self.group = job_group(self.kind, self.job_id)
        # Join first, then replay: anything pushed meanwhile is queued and de-duplicated by seq.
        joined = not self.layer_down and await self._join()
        await self.accept()
        self.accepted = True
        for event in await self._backlog():
            await self._send_event(event)
        if not joined or self.layer_down:
            self.layer_down = True
            await self._close_layer_down()

    async def disconnect(self, code):
        if self.group:
            try:
                await self.channel_layer.group_discard(self.group, self.channel_name)
            except LAYER_ERRORS:
                pass  # Redis is gone: the group's membership expires there by itself

    async def job_event(self, message):
        await self._send_event(message["event"])

    async def _send_event(self, event: dict) -> None:
        if event["seq"] <= self.last_seq:
            return
        if event["seq"] > self.last_seq + 1:
            # A push was missed (e.g. the layer dropped it): fill the gap from the database.
            for missed in await self._backlog(until=event["seq"]):
                await self.send_json(missed)
                self.last_seq = missed["seq"]
            if event["seq"] <= self.last_seq:
                return
        self.last_seq = event["seq"]
        await self.send_json(event)

    @database_sync_to_async
    def _allowed(self) -> bool:
        """The kind's own loader decides (404 for outsiders); unknown kinds are refused alike."""
        from nexus.jobs import kind_get

        try:
            kind_get(self.kind).call("loader", user=self.scope["user"], pk=self.job_id)
        except (LookupError, Http404):
            return False
        return True

    @database_sync_to_async
    def _backlog(self, until: int | None = None) -> list[dict]:
        events = job_events_after(kind=self.kind, job_id=self.job_id, after=self.last_seq)
        return [e.as_message() for e in events if until is None or e.seq < until]
