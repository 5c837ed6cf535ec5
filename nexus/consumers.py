"""Websocket for a job's live events: access check, then backlog from the database, then live pushes."""
from __future__ import annotations

from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.http import Http404

from nexus.events import job_events_after, job_group
from nexus.models import JobEvent


class JobEventsConsumer(AsyncJsonWebsocketConsumer):
    """ws/finetune/<kind>/<id>/?after=<seq>: replays events after `seq`, then streams new ones in order."""

    loaders = {
        JobEvent.Kind.TRAINING: ("training_app.selectors", "training_job_get"),
        JobEvent.Kind.DATASET: ("datasets_app.selectors", "dataset_get"),
        JobEvent.Kind.EXPORT: ("adapters_app.selectors", "export_get"),
        JobEvent.Kind.DEPLOYMENT: ("adapters_app.selectors", "deployment_get"),
    }

    async def connect(self):
        kwargs = self.scope["url_route"]["kwargs"]
        self.kind = kwargs["kind"]
        self.job_id = int(kwargs["job_id"])
        self.last_seq = 0
        self.group = None
        if self.kind not in self.loaders or not await self._allowed():
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
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        for event in await self._backlog():
            await self._send_event(event)

    async def disconnect(self, code):
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)

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
        import importlib

        module, func = self.loaders[self.kind]
        try:
            getattr(importlib.import_module(module), func)(user=self.scope["user"], pk=self.job_id)
        except Http404:
            return False
        return True

    @database_sync_to_async
    def _backlog(self, until: int | None = None) -> list[dict]:
        events = job_events_after(kind=self.kind, job_id=self.job_id, after=self.last_seq)
        return [e.as_message() for e in events if until is None or e.seq < until]
