"""Routing one OpenAI request to a deployment's arm, the HTTP proxy with its streaming relay, and
the request records (what every client, and internal callers such as evaluation, go through)."""
from __future__ import annotations

import json
import random
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import requests
from django.urls import reverse

from deployments_app.engine import serving
from deployments_app.jobs import DEPLOYMENT
from deployments_app.models import Deployment, DeploymentArm, DeploymentRequest
from nexus.errors import NexusError
from nexus.jobs.reaper import check_host_soon

S = Deployment.Status
PROXY_TIMEOUT_S = 600.0
# OpenAI path below /v1 -> HTTP method the llama.cpp server answers it with
ENDPOINTS = {"chat/completions": "POST", "completions": "POST", "models": "GET"}


def deployment_arm_pick(*, deployment: Deployment, rng: random.Random | None = None) -> DeploymentArm:
    """An arm by weighted random choice among arms with a share of the traffic."""
    if deployment.status != S.RUNNING:
        raise NexusError(f"Deployment '{deployment.name}' is {deployment.status}; start it first.", code="not_running",
                         status_code=409)
    arms = [a for a in deployment.arms.all() if a.weight > 0 and a.port]
    if not arms:
        raise NexusError("No arm of this deployment takes traffic.", code="not_running", status_code=409)
    return (rng or random).choices(arms, weights=[a.weight for a in arms])[0]


def deployment_endpoint(*, deployment: Deployment, arm: DeploymentArm | None = None) -> tuple[str, str]:
    """An OpenAI-compatible base URL (ending in /v1) of a running deployment's arm and the API key
    its server requires, for internal code on this machine (distillation teacher, evaluation
    target). Picks an arm by weight unless one is named. Calls made with it are not recorded;
    `deployment_call` routes and records them."""
    arm = arm or deployment_arm_pick(deployment=deployment)
    return f"http://{arm.host}:{arm.port}/v1", arm.api_key


def deployment_public_path(*, deployment: Deployment) -> str:
    """The Nexus proxy's base path (ending in /v1) that clients use with a token."""
    return reverse("api-deployment-openai", kwargs={"deployment_id": deployment.pk, "endpoint": "models"}
                   ).removesuffix("/models")


def deployment_request_record(*, deployment: Deployment, arm: DeploymentArm, endpoint: str, status_code: int,
                              latency_ms: int, user=None, usage: dict | None = None) -> DeploymentRequest:
    usage = usage or {}
    return DeploymentRequest.objects.create(
        deployment=deployment, arm=arm, endpoint=endpoint, status_code=status_code, latency_ms=max(0, latency_ms),
        prompt_tokens=int(usage.get("prompt_tokens") or 0), completion_tokens=int(usage.get("completion_tokens") or 0),
        user=user if getattr(user, "is_authenticated", False) else None)


def _check_endpoint(endpoint: str, method: str) -> None:
    if ENDPOINTS.get(endpoint) != method:
        raise NexusError(f"{method} /v1/{endpoint} is not served (served: "
                         f"{', '.join(f'{m} /v1/{e}' for e, m in ENDPOINTS.items())})", code="not_found",
                         status_code=404)


@dataclass
class ProxyResult:
    """An arm's answer. For a stream, iterate `chunks` (the SSE bytes as they come), then call
    `finish()` (also when the client went away): it closes the upstream and records the request."""

    arm: DeploymentArm
    status_code: int
    content_type: str
    body: bytes = b""
    chunks: Iterator[bytes] | None = None
    finish: Callable[[], None] = lambda: None


def _unreachable(deployment: Deployment, arm: DeploymentArm, endpoint: str, user, started: float,
                 exc: Exception, *, record: bool) -> NexusError:
    if record:
        deployment_request_record(deployment=deployment, arm=arm, endpoint=endpoint, status_code=502, user=user,
                                  latency_ms=int((time.perf_counter() - started) * 1000))
    deployment_check_soon(deployment=deployment)
    return NexusError(f"Arm {arm.label}'s llama.cpp server did not answer ({type(exc).__name__}); its host "
                      f"({deployment.host}) is asked to check it.", code="upstream_error", status_code=502)


def deployment_check_soon(*, deployment: Deployment) -> None:
    """Ask the deployment's host to check its servers now rather than at the reaper's next round."""
    if deployment.host:
        try:
            check_host_soon(DEPLOYMENT, deployment.host)
        except Exception:  # noqa: BLE001 - the broker is down: the reaper's next round checks it
            pass


def deployment_call(*, deployment: Deployment, endpoint: str, method: str = "POST", payload: dict | None = None,
                    user=None, stream: bool = False) -> ProxyResult:
    """Route one OpenAI request to an arm by weight, send it to that arm's server and record it
    (generations only: a GET such as /v1/models is a read and records nothing).

    Internal code (distillation, evaluation) calls this to go through the deployment like a client
    does. With `stream`, the request is recorded when the stream ends: usage from the last chunk
    when the server sends one, else the number of content chunks as completion tokens."""
    _check_endpoint(endpoint, method)
    arm = deployment_arm_pick(deployment=deployment)
    url = f"http://{arm.host}:{arm.port}/v1/{endpoint}"
    started = time.perf_counter()
    try:
        r = requests.request(method, url, json=payload if method == "POST" else None, stream=stream,
                             headers=serving.auth_headers(arm.api_key), timeout=(5, PROXY_TIMEOUT_S))
    except requests.RequestException as exc:
        raise _unreachable(deployment, arm, endpoint, user, started, exc, record=method == "POST") from exc

    def record(status_code: int, usage: dict | None) -> None:
        if method != "POST":
            return
        deployment_request_record(deployment=deployment, arm=arm, endpoint=endpoint, status_code=status_code,
                                  latency_ms=int((time.perf_counter() - started) * 1000), user=user, usage=usage)

    content_type = r.headers.get("content-type", "application/json")
    if not stream or r.status_code != 200:
        body = r.content
        usage = None
        if r.status_code == 200 and "json" in content_type:
            try:
                usage = json.loads(body).get("usage")
            except (ValueError, AttributeError):
                usage = None
        record(r.status_code, usage)
        return ProxyResult(arm=arm, status_code=r.status_code, content_type=content_type, body=body)

    seen: dict[str, Any] = {"usage": None, "content_chunks": 0, "status_code": 200, "finished": False}

    def finish() -> None:
        if seen["finished"]:
            return
        seen["finished"] = True
        r.close()
        record(seen["status_code"], seen["usage"] or {"completion_tokens": seen["content_chunks"]})

    return ProxyResult(arm=arm, status_code=200, content_type=content_type, chunks=_relay(r, seen), finish=finish)


_DATA = re.compile(rb"^data:\s?(.*)$")


def _relay(r: requests.Response, seen: dict[str, Any]) -> Iterator[bytes]:
    """Pass SSE lines through unchanged, noting usage and content chunks in `seen`."""
    try:
        for line in r.iter_lines(chunk_size=None):
            yield line + b"\n"
            match = _DATA.match(line)
            if not match or match.group(1).strip() in (b"", b"[DONE]"):
                continue
            try:
                chunk = json.loads(match.group(1))
            except ValueError:
                continue
            seen["usage"] = chunk.get("usage") or seen["usage"]
            choice = (chunk.get("choices") or [{}])[0]
            if (choice.get("delta") or {}).get("content") or choice.get("text"):
                seen["content_chunks"] += 1
    except requests.RequestException:
        seen["status_code"] = 502


