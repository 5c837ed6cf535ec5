"""Inference speed of GGUF models through real llama.cpp servers (llama-cpp-python's OpenAI-compatible
server), base against fine-tuned. Django-free; runs on a worker.

For each target in turn (one server at a time: two would compete for the same CPU cores) a server
is started with verbose output, so llama.cpp's own per-request timings land in its log. Every
(output length, batch size) cell then runs `warmup_iterations` rounds that are not recorded and
`num_iterations` rounds that are; a round is `batch_size` concurrent streaming chat completions
(one thread each, prompts round-robin), greedy, fixed seed. The server holds one Llama and a lock
around it, so concurrent requests queue and run one after another: a queued request's time to
first token includes its wait, which is what a client of that server sees, and the round's
throughput is the server's, not that of parallel decoding. Our servers run with
`--interrupt_requests False`; llama-cpp-python's default (True) cuts a streaming answer off as
soon as another request arrives, so a server started with the default (a deployment) reports
such answers with finish_reason None and fewer tokens.

Per request, on the client's clock:
  ttft_ms            request sent -> first streamed content token
  total_ms           request sent -> end of the stream
  decode_ms          first content token -> last content token
  tokens_per_second  (completion_tokens - 1) / decode_ms: the tokens after the first over the time
                     they took. That is the quantity llama.cpp's "eval time ... runs" line measures
                     (the first token comes out of the prompt evaluation; each later one costs one
                     decode run), so the two compare like with like. llama.cpp's eval clock covers
                     only the forward passes; ours also sees what llama-cpp-python does per token
                     around them (sampling, detokenizing, handing the chunk to the HTTP stream).
                     Measured on the demo model (2-core VM, 1 thread, llama-cpp-python 0.3.36):
                     about 2 ms a token, 8-9% of tokens/s, and llama.cpp's own "total time" sees
                     it too: per token, eval ms/run + (total - prompt eval - eval)/tokens agrees
                     with ours within 1% (bench/evaluation.py --part speed).
  completion_tokens  the server's usage when the stream carries it (llama-cpp-python's does not),
                     else the content chunks received: one per token, except that tokens making up
                     one multi-byte character arrive as one chunk.

Forcing the output length: llama-cpp-python's server honours `logit_bias` (token id -> bias added
to the logit) and its own `min_tokens` (bans the model's EOS token until that many tokens), but
not both at once (0.3.x: `logits_processor.extend(...)` returns None, so neither is applied) and
it has no `ignore_eos`. With the model file at hand we send a -1e9 bias on every end-of-generation
token of its vocabulary (EOS, EOT, <|im_end|>, <|endoftext|> ...: llama.cpp stops on any of
them), which makes a greedy model produce exactly max_tokens tokens; for a server known only by
URL we send `min_tokens`, which bans the EOS token alone. Either way the counts are what was
generated, never assumed.

llama.cpp's own timings: with verbose on, after every completion the server prints
`llama_perf_context_print: prompt eval time = ... ms / N tokens` and `eval time = ... ms / M runs`
(a batch of one token counts as a run, a longer one as prompt eval), preceded by
`Llama.generate: X prefix-match hit, remaining Y prompt tokens to eval` when the KV cache already
held the start of the prompt. Requests of one server are serialized, so within a round the log's
order is the order in which the requests got their first token. We read the log segment each round
wrote and match it to the round's requests in that order, then verify each match: the prompt
tokens llama.cpp accounts for (X + Y, or N) must equal the prompt's token count (asked of the
server once per prompt before the warm-up), and the eval runs must fit the completion's length.
A round whose log does not match (other clients on a shared server, a non-verbose server, another
llama-cpp-python version) gets None for llama.cpp's numbers and for cache reuse; nothing is
invented.

Prompt-cache reuse = 1 - evaluated prompt tokens / prompt tokens. Found on llama-cpp-python 0.3.36:
its Llama keeps the tokens of the last request in the KV cache and re-evaluates only what differs
from them (the prefix-match line above), with or without `--cache true`. Consecutive requests
with the same chat template share the template's opening (SmolLM2's default system message: a
large share of a short prompt), and the same prompt twice in a row reuses all of it but the last
token. `--cache true` (llama-cpp-python's RAM cache of states saved after each completion, keyed
by prompt) also brings back an earlier prompt's state: alternating two prompts on the demo model,
reuse went from 0.73 / 0.55 to 0.97 / 0.98 and the server's peak memory from 269 to 411 MB. Our
servers leave it off, as deployments do; a server given by URL is measured as it runs.

Threads: `n_threads` (default: all cores) is used for prompt batches too (`--n_threads_batch`;
the server's own default is all cores for those): on a shared machine a llama.cpp thread waiting
for a busy core turned an 11-token prompt evaluation from 0.1 s into 7 s.

Peak memory is the server process's VmHWM (peak resident set, model weights mapped from the
file included), read from /proc just before the server is stopped.
"""
from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable

import requests

from deployments_app.engine import serving
from evaluation_app.engine.stats import pct_diff, spread

METRICS = ("tokens_per_second", "time_to_first_token_ms", "total_time_ms", "throughput_tokens_per_second")
EOG_BIAS = -1e9  # added to the logit: never the greedy choice; JSON has no -inf
REQUEST_TIMEOUT = (10, 900)  # connect, read (s): a queued request of a slow CPU may wait long

_PROMPT_EVAL = re.compile(r"llama_perf_context_print:\s+prompt eval time =\s*([\d.]+) ms /\s*(\d+) tokens")
_EVAL = re.compile(r"llama_perf_context_print:\s+eval time =\s*([\d.]+) ms /\s*(\d+) runs")
_TOTAL = re.compile(r"llama_perf_context_print:\s+total time =\s*([\d.]+) ms")
_PREFIX = re.compile(r"Llama\.generate: (\d+) prefix-match hit, remaining (\d+) prompt tokens to eval")
_FULL_CACHED = "Llama.generate: full prompt already cached"


class Stopped(Exception):
    """should_stop() said so; the server of the target under test has been stopped."""


class SpeedTestFailed(RuntimeError):
    """A request failed or the server answered something unusable; the message says which and why."""


@dataclass
class Target:
    """A model to time: a GGUF (plus an optional LoRA adapter GGUF) that gets its own server, or an
    already running OpenAI-compatible server (`base_url`, e.g. a deployment's arm). For the latter,
    `pid` gives its peak memory, `log_path` (of a verbose llama-cpp-python server that nobody else
    is using meanwhile) llama.cpp's own timings, and `model_path` the model's end-of-generation
    tokens; without them those numbers are None."""

    name: str
    model_path: str = ""
    lora_path: str = ""
    n_ctx: int = 2048
    n_threads: int | None = None
    base_url: str = ""
    api_key: str = ""
    pid: int | None = None
    log_path: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a target needs a name")
        if not self.model_path and not self.base_url:
            raise ValueError(f"target {self.name!r} needs a model_path (a GGUF to serve) or a base_url (a running server)")
        if self.base_url and self.lora_path:
            raise ValueError(f"target {self.name!r}: a running server already has its adapter; lora_path is for a GGUF we serve")


@dataclass
class SpeedConfig:
    test_prompts: list[str]
    output_lengths: list[int]
    batch_sizes: list[int]  # concurrent requests per round
    num_iterations: int = 10  # recorded rounds per (output length, batch size)
    warmup_iterations: int = 2  # rounds before them, not recorded
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.test_prompts or not all(isinstance(p, str) and p.strip() for p in self.test_prompts):
            raise ValueError("test_prompts must be a non-empty list of non-empty prompts")
        for name in ("output_lengths", "batch_sizes"):
            values = getattr(self, name)
            if not values or not all(isinstance(v, int) and v >= 1 for v in values):
                raise ValueError(f"{name} must be a non-empty list of positive integers")
        if self.num_iterations < 1 or self.warmup_iterations < 0:
            raise ValueError("num_iterations must be at least 1 and warmup_iterations at least 0")

    @property
    def cells(self) -> list[tuple[int, int]]:
        return [(length, batch) for length in self.output_lengths for batch in self.batch_sizes]


@dataclass
class _Server:
    """What a target's runs talk to, however it was started."""

    url: str
    api_key: str
    pid: int | None
    log_path: str
    forcing: dict
    info: dict
    prompt_tokens: list[int | None] = field(default_factory=list)


def run_speed_test(targets: list[Target], config: SpeedConfig, *, workdir: Path,
                   should_stop: Callable[[], bool] = lambda: False,
                   on_progress: Callable[[int, int, str], None] = lambda done, total, message: None,
                   ) -> dict[str, dict]:
    """Time every target on every (output length, batch size) cell; {target name: result}.

    A result is {"cells": [{"output_length", "batch_size", "n", "tokens_per_second",
    "time_to_first_token_ms", "total_time_ms", "throughput_tokens_per_second", "completion_tokens",
    "prompt_cache_reuse"}], "overall": {the same pooled over cells}, "peak_memory_mb",
    "peak_memory_note", "requests": [per recorded request], "server": {...}}. Each metric is a
    spread ({"median", "p25", "p75", "min", "max", "mean", "n"}); throughput is per round (all
    completion tokens of the round / its wall time), prompt_cache_reuse a mean or None. Servers we
    start are stopped after their target, also when should_stop() (checked between rounds) raises
    Stopped or anything fails."""
    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        raise ValueError(f"target names must differ: {names}")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    rounds_per_target = len(config.cells) * (config.warmup_iterations + config.num_iterations)
    progress = _Progress(rounds_per_target * len(targets), on_progress)
    results = {}
    for index, target in enumerate(targets):
        if should_stop():
            raise Stopped("stopped before " + target.name)
        results[target.name] = _run_target(index, target, config, workdir, should_stop, progress)
    return results


def compare(base: dict, finetuned: dict) -> dict:
    """% difference (finetuned - base) / base * 100 of each metric's median, overall and per cell
    (cells matched by output length and batch size), and of peak memory; None where either side
    has no number. Positive tokens/s is faster, positive times are slower."""
    def metrics(a: dict, b: dict) -> dict:
        return {m: pct_diff((b.get(m) or {}).get("median"), (a.get(m) or {}).get("median")) for m in METRICS}

    theirs = {(c["output_length"], c["batch_size"]): c for c in finetuned["cells"]}
    cells = [{"output_length": c["output_length"], "batch_size": c["batch_size"],
              **metrics(c, theirs[(c["output_length"], c["batch_size"])])}
             for c in base["cells"] if (c["output_length"], c["batch_size"]) in theirs]
    return {"overall": metrics(base["overall"], finetuned["overall"]), "cells": cells,
            "peak_memory_mb": pct_diff(finetuned.get("peak_memory_mb"), base.get("peak_memory_mb"))}


class _Progress:
    def __init__(self, total: int, callback: Callable[[int, int, str], None]):
        self.done, self.total, self.callback = 0, total, callback

    def step(self, message: str) -> None:
        self.done += 1
        self.callback(self.done, self.total, message)


def _run_target(index: int, target: Target, config: SpeedConfig, workdir: Path, should_stop, progress) -> dict:
    spawned: tuple[int, int] | None = None
    try:
        if target.base_url:
            server = _attach(target)
        else:
            server, spawned = _start(index, target, workdir, should_stop)
        sessions = [requests.Session() for _ in range(max(config.batch_sizes))]
        try:
            server.prompt_tokens = [_prompt_tokens(sessions[0], server, p) for p in config.test_prompts]
            records, rounds = [], []
            warmups = 0
            for length, batch in config.cells:
                for iteration in range(config.warmup_iterations + config.num_iterations):
                    if should_stop():
                        raise Stopped(f"stopped while timing {target.name}")
                    warm = iteration < config.warmup_iterations
                    done, wall = _round(server, sessions, config, length, batch, iteration)
                    if warm:
                        warmups += len(done)
                    else:
                        records += done
                        rounds.append({"output_length": length, "batch_size": batch, "wall_s": wall,
                                       "tokens": sum(r["completion_tokens"] for r in done)})
                    progress.step(f"{target.name}: {length} tokens x {batch} concurrent, " + (
                        f"warm-up {iteration + 1}/{config.warmup_iterations}" if warm else
                        f"round {iteration - config.warmup_iterations + 1}/{config.num_iterations}"))
        finally:
            for s in sessions:
                s.close()
        peak, note = _peak_memory_mb(server.pid)
    finally:
        if spawned:
            _stop_spawned(*spawned)
    matched = sum(r["llama"] is not None for r in records)
    return {"cells": [_cell_summary(records, rounds, length, batch) for length, batch in config.cells],
            "overall": _summary(records, rounds), "peak_memory_mb": peak, "peak_memory_note": note,
            "requests": records,
            "server": {**server.info, "forcing": server.forcing, "log_path": server.log_path, "pid": server.pid,
                       "prompt_tokens": server.prompt_tokens, "warmup_requests": warmups,
                       "probe_requests": len(config.test_prompts), "llama_timings_matched": matched,
                       "llama_timings_unmatched": len(records) - matched,
                       # cut off (no finish reason: e.g. a server that interrupts a stream for the next
                       # request) or shorter than asked (the forcing did not hold)
                       "interrupted_requests": sum(r["finish_reason"] is None for r in records),
                       "short_requests": sum(r["completion_tokens"] < r["output_length"] for r in records)}}


def _start(index: int, target: Target, workdir: Path, should_stop) -> tuple[_Server, tuple[int, int]]:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", target.name).strip("-")[:40] or "target"
    log_path = str(workdir / f"speed-{index:02d}-{slug}.log")
    for n in range(2, 1000):  # a fresh log: the request counts in it are this run's
        if not Path(log_path).exists():
            break
        log_path = str(workdir / f"speed-{index:02d}-{slug}-{n}.log")
    threads = target.n_threads or max(1, os.cpu_count() or 1)
    port = serving.free_port()
    spec = serving.ServerSpec(model_path=target.model_path, lora_path=target.lora_path, log_path=log_path, port=port,
                              n_ctx=target.n_ctx, n_threads=threads, verbose=True,
                              extra={"interrupt_requests": "False", "n_threads_batch": str(threads)})
    pid = serving.spawn(spec)
    try:
        _wait_exec(pid, port)
        try:
            serving.wait_healthy(pid=pid, host=spec.host, port=port, log_path=log_path, should_stop=should_stop)
        except serving.ServerFailed as exc:
            if should_stop():
                raise Stopped(f"stopped while starting {target.name}'s server") from exc
            raise
        server = _Server(url=f"http://{spec.host}:{port}", api_key="", pid=pid, log_path=log_path,
                         forcing=_forcing(target.model_path),
                         info={"model_path": target.model_path, "lora_path": target.lora_path, "n_threads": threads,
                               "n_ctx": target.n_ctx, "llama_cpp_version": _llama_cpp_version(), "base_url": ""})
    except BaseException:
        _stop_spawned(pid, port)
        raise
    return server, (pid, port)


def _wait_exec(pid: int, port: int, timeout: float = 10.0) -> None:
    # Just after spawn() /proc/<pid>/cmdline can still be empty (exec not finished), and
    # serving.is_alive() then calls our own server dead: wait_healthy would fail at once and stop()
    # would leave the server running. Wait until it is recognizable or has exited.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not serving.is_alive(pid, port) and _child_running(pid):
        time.sleep(0.02)


def _child_running(pid: int) -> bool:
    try:
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return False  # reaped already, or not ours: serving.stop() decided for it


def _stop_spawned(pid: int, port: int) -> None:
    """serving.stop(), and SIGKILL for a server of ours that it did not recognize as its own."""
    serving.stop(pid, port)
    if _child_running(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def _attach(target: Target) -> _Server:
    url = target.base_url.rstrip("/")
    url = url[:-3] if url.endswith("/v1") else url
    return _Server(url=url, api_key=target.api_key, pid=target.pid, log_path=target.log_path,
                   forcing=_forcing(target.model_path),
                   info={"model_path": target.model_path, "lora_path": "", "n_threads": target.n_threads,
                         "n_ctx": target.n_ctx, "llama_cpp_version": None, "base_url": url})


def _forcing(model_path: str) -> dict:
    """How the request makes a greedy model run to max_tokens (see the module docstring)."""
    if model_path and Path(model_path).is_file():
        ids = _end_of_generation_ids(model_path)
        return {"method": "logit_bias", "token_ids": ids}
    return {"method": "min_tokens", "token_ids": None}


def _end_of_generation_ids(model_path: str) -> list[int]:
    from llama_cpp import Llama, llama_cpp

    llm = Llama(model_path=str(model_path), vocab_only=True, verbose=False)
    try:
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        return [i for i in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, i)]
    finally:
        llm.close()


def _llama_cpp_version() -> str | None:
    try:
        return metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        return None


def _headers(server: _Server) -> dict[str, str]:
    return {"Content-Type": "application/json", **serving.auth_headers(server.api_key)}


def _prompt_tokens(session: requests.Session, server: _Server, prompt: str) -> int | None:
    """The prompt's token count after the chat template, as the server counts it (one token asked for)."""
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": 1, "temperature": 0.0}
    try:
        r = session.post(f"{server.url}/v1/chat/completions", json=body, headers=_headers(server), timeout=REQUEST_TIMEOUT)
    except requests.RequestException as exc:
        raise SpeedTestFailed(f"the server at {server.url} did not answer: {exc}") from exc
    if r.status_code != 200:
        raise SpeedTestFailed(f"the server at {server.url} answered {r.status_code}: {r.text[:500]}")
    usage = (r.json() or {}).get("usage") or {}
    return usage.get("prompt_tokens")


def _round(server: _Server, sessions: list[requests.Session], config: SpeedConfig, length: int, batch: int,
           iteration: int) -> tuple[list[dict], float]:
    """`batch` concurrent requests; their records (with llama.cpp's timings when the log matches) and wall time."""
    offset = _log_size(server.log_path)
    prompts = [(iteration * batch + slot) % len(config.test_prompts) for slot in range(batch)]
    records: list[dict | None] = [None] * batch
    errors: list[BaseException] = []
    gate = threading.Barrier(batch + 1)

    def work(slot: int) -> None:
        try:
            gate.wait()
            records[slot] = _stream(sessions[slot], server, config, prompts[slot], length)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(slot,), daemon=True) for slot in range(batch)]
    for t in threads:
        t.start()
    gate.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    if errors:
        raise SpeedTestFailed(f"a request to {server.url} failed: {errors[0]}\n{serving.log_tail(server.log_path)}"
                              if server.log_path else f"a request to {server.url} failed: {errors[0]}") from errors[0]
    done = [r for r in records if r is not None]
    wall = max(r.pop("_ended") for r in done) - started
    for slot, r in enumerate(done):
        r.update(output_length=length, batch_size=batch, iteration=iteration - config.warmup_iterations, slot=slot,
                 prompt_index=prompts[slot], prompt_tokens=server.prompt_tokens[prompts[slot]])
    _attach_llama_timings(done, _log_since(server.log_path, offset))
    for r in done:
        r.pop("_first")
    return done, wall


def _stream(session: requests.Session, server: _Server, config: SpeedConfig, prompt_index: int, length: int) -> dict:
    body = {"messages": [{"role": "user", "content": config.test_prompts[prompt_index]}], "max_tokens": length,
            "temperature": 0.0, "seed": config.seed, "stream": True}
    if server.forcing["method"] == "logit_bias":
        body["logit_bias"] = {str(i): EOG_BIAS for i in server.forcing["token_ids"]}
    else:
        body["min_tokens"] = length
    chunks, usage, finish = 0, None, None
    first = last = None
    sent = time.perf_counter()
    with session.post(f"{server.url}/v1/chat/completions", json=body, headers=_headers(server), stream=True,
                      timeout=REQUEST_TIMEOUT) as r:
        if r.status_code != 200:
            raise SpeedTestFailed(f"HTTP {r.status_code}: {r.text[:500]}")
        for line in r.iter_lines():
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            event = json.loads(data)
            usage = event.get("usage") or usage
            for choice in event.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    last = time.perf_counter()
                    first = first or last
                    chunks += 1
                finish = choice.get("finish_reason") or finish
    ended = time.perf_counter()
    tokens = int(usage["completion_tokens"]) if usage and usage.get("completion_tokens") is not None else chunks
    decode_ms = (last - first) * 1000 if first is not None else None
    return {"ttft_ms": (first - sent) * 1000 if first is not None else None, "total_ms": (ended - sent) * 1000,
            "decode_ms": decode_ms, "completion_tokens": tokens, "streamed_chunks": chunks, "finish_reason": finish,
            "tokens_per_second": (tokens - 1) / decode_ms * 1000 if decode_ms and tokens > 1 else None,
            "_first": first if first is not None else ended, "_ended": ended}


def _log_size(path: str) -> int:
    try:
        return os.path.getsize(path) if path else 0
    except OSError:
        return 0


def _log_since(path: str, offset: int) -> str | None:
    if not path:
        return None
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read().decode(errors="replace")
    except OSError:
        return None


def parse_llama_timings(text: str) -> list[dict]:
    """llama.cpp's per-completion timing blocks in a verbose llama-cpp-python server's log, in order.

    Each: {"prompt_eval_ms", "prompt_eval_tokens", "eval_ms", "eval_runs", "total_ms",
    "reused_prompt_tokens" (the KV prefix kept from the previous request; 0 when none was reported),
    "evaluated_prompt_tokens", "full_prompt_cached"}."""
    blocks: list[dict] = []
    pending: dict = {}
    for line in text.splitlines():
        if m := _PREFIX.search(line):
            pending = {"reused_prompt_tokens": int(m[1]), "evaluated_prompt_tokens": int(m[2])}
        elif _FULL_CACHED in line:
            pending = {"full_prompt_cached": True, "evaluated_prompt_tokens": 0}
        elif m := _PROMPT_EVAL.search(line):
            block = {"prompt_eval_ms": float(m[1]), "prompt_eval_tokens": int(m[2]), "eval_ms": None, "eval_runs": None,
                     "total_ms": None, "reused_prompt_tokens": 0, "full_prompt_cached": False, **pending}
            block.setdefault("evaluated_prompt_tokens", block["prompt_eval_tokens"])
            blocks.append(block)
            pending = {}
        elif blocks and (m := _EVAL.search(line)) and blocks[-1]["eval_ms"] is None:
            blocks[-1].update(eval_ms=float(m[1]), eval_runs=int(m[2]))
        elif blocks and (m := _TOTAL.search(line)) and blocks[-1]["total_ms"] is None:
            blocks[-1]["total_ms"] = float(m[1])
    return blocks


def _attach_llama_timings(done: list[dict], log_text: str | None) -> None:
    """Match the round's log blocks to its requests in the order they got their first token, and
    keep the match only when every block fits its request (see the module docstring)."""
    blocks = parse_llama_timings(log_text) if log_text else []
    ordered = sorted(done, key=lambda r: r["_first"])
    fits = len(blocks) == len(ordered) and all(_fits(b, r) for b, r in zip(blocks, ordered))
    for r, b in zip(ordered, blocks if fits else [None] * len(ordered)):
        r["llama"] = None
        r["prompt_cache_reuse"] = None
        if b is None:
            continue
        runs, ms = b["eval_runs"], b["eval_ms"]
        outside = b["total_ms"] - b["prompt_eval_ms"] - (ms or 0) if b["total_ms"] is not None else None
        r["llama"] = {**b, "eval_tokens_per_second": runs / ms * 1000 if runs and ms else None,
                      "overhead_ms_per_token": outside / r["completion_tokens"]
                      if outside is not None and r["completion_tokens"] else None}
        if r["prompt_tokens"]:
            r["prompt_cache_reuse"] = 1 - b["evaluated_prompt_tokens"] / r["prompt_tokens"]


def _fits(block: dict, record: dict) -> bool:
    prompt_tokens = record["prompt_tokens"]
    if block["eval_runs"] is None:
        return False
    if prompt_tokens is not None and not block["full_prompt_cached"]:
        if block["reused_prompt_tokens"] + block["evaluated_prompt_tokens"] != prompt_tokens:
            return False
    # a one-token prompt remainder is decoded as a run; of the tokens generated, the last is decoded
    # only when an end-of-generation token followed it
    runs = block["eval_runs"] - (1 if block["evaluated_prompt_tokens"] == 1 else 0)
    return record["completion_tokens"] - 1 <= runs <= record["output_length"]


def _peak_memory_mb(pid: int | None) -> tuple[float | None, str]:
    if not pid:
        return None, "no server process id: the server runs elsewhere or was given by URL alone"
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError as exc:
        return None, f"cannot read /proc/{pid}/status: {exc.strerror or exc}"
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024, f"VmHWM of process {pid}"
    return None, f"/proc/{pid}/status has no VmHWM"


def _round_throughputs(rounds: list[dict]) -> list[float]:
    return [r["tokens"] / r["wall_s"] for r in rounds if r["wall_s"] > 0]


def _summary(records: list[dict], rounds: list[dict]) -> dict:
    def values(key: str) -> list[float]:
        return [r[key] for r in records if r.get(key) is not None]

    reuse = values("prompt_cache_reuse")
    return {"n": len(records), "tokens_per_second": spread(values("tokens_per_second")),
            "time_to_first_token_ms": spread(values("ttft_ms")), "total_time_ms": spread(values("total_ms")),
            "throughput_tokens_per_second": spread(_round_throughputs(rounds)),
            "completion_tokens": spread(values("completion_tokens")),
            "prompt_cache_reuse": sum(reuse) / len(reuse) if reuse else None}


def _cell_summary(records: list[dict], rounds: list[dict], length: int, batch: int) -> dict:
    def mine(rows: list[dict]) -> list[dict]:
        return [r for r in rows if r["output_length"] == length and r["batch_size"] == batch]

    return {"output_length": length, "batch_size": batch, **_summary(mine(records), mine(rounds))}
