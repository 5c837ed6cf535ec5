"""Managed llama.cpp servers (llama-cpp-python's OpenAI-compatible server), Django-free.

A server is launched detached (its own session, output to a log file) so it outlives the process
that started it; it is then known only by pid and port. Liveness checks both: the pid must be
alive *and* its /proc cmdline must still carry our --port, so a reused pid is not taken for it."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


LOG_ENV = "NEXUS_SERVER_LOG"  # set in each server's environment: its log file, which tells whose server it is


class ServerFailed(RuntimeError):
    """The server exited or never became healthy; the message carries its log tail."""


@dataclass
class ServerSpec:
    model_path: str
    log_path: str
    port: int
    host: str = "127.0.0.1"
    lora_path: str = ""
    n_ctx: int = 2048
    n_threads: int | None = None
    n_gpu_layers: int = 0
    verbose: bool = False  # llama.cpp's own load and per-request timing output; the HTTP access log stays
    # every request must carry it (Bearer); passed in the environment, which other users cannot read,
    # never on the command line, which they can (/proc/<pid>/cmdline)
    api_key: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def command(self, python: str = sys.executable) -> list[str]:
        # interrupt_requests False: a second request waits for the first instead of cutting its
        # stream off (llama-cpp-python's default interrupts it: two users of one deployment lost answers)
        cmd = [python, "-m", "llama_cpp.server", "--model", self.model_path, "--host", self.host,
               "--port", str(self.port), "--n_ctx", str(self.n_ctx), "--verbose", str(self.verbose),
               "--interrupt_requests", "False"]
        if self.lora_path:
            cmd += ["--lora_path", self.lora_path]
        if self.n_threads:  # prompt processing too (its default is every core, whatever generation uses)
            cmd += ["--n_threads", str(self.n_threads), "--n_threads_batch", str(self.n_threads)]
        if self.n_gpu_layers:
            cmd += ["--n_gpu_layers", str(self.n_gpu_layers)]
        for key, value in self.extra.items():
            cmd += [f"--{key}", str(value)]
        return cmd


def free_port(host: str = "127.0.0.1", exclude: set[int] | frozenset[int] = frozenset()) -> int:
    """A port nothing listens on now (the server binds it a moment later; collisions fail its start)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in exclude:
            return port
    raise OSError("no free local port found")


def spawn(spec: ServerSpec) -> int:
    """Start the server detached from this process (survives it) and return its pid."""
    for path, what in ((spec.model_path, "GGUF model file"), (spec.lora_path, "LoRA adapter GGUF")):
        if path and not Path(path).is_file():
            raise ServerFailed(f"{what} {path} does not exist")
    log = Path(spec.log_path)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as fh:
        fh.write(f"$ {' '.join(spec.command())}\n".encode())
        fh.flush()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", LOG_ENV: str(log)}
        if spec.api_key:
            env["API_KEY"] = spec.api_key  # llama-cpp-python's server settings read it from the environment
        proc = subprocess.Popen(spec.command(), stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True, env=env)
    return proc.pid


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def is_alive(pid: int | None, port: int | None) -> bool:
    """The process is running (not a zombie) and is the server we started on `port`."""
    if not pid or not port:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else: the cmdline check decides
    args = _cmdline(pid)  # empty for a zombie
    return any(a == "--port" and b == str(port) for a, b in zip(args, args[1:])) and "llama_cpp.server" in args


def auth_headers(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def health(host: str, port: int, timeout: float = 2.0, api_key: str = "") -> dict | None:
    """GET /v1/models; the parsed answer when the server answers 200, else None."""
    request = urllib.request.Request(f"http://{host}:{port}/v1/models", headers=auth_headers(api_key))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return json.loads(r.read() or b"{}") if r.status == 200 else None
    except (OSError, urllib.error.URLError, ValueError):
        return None


def wait_healthy(*, pid: int, host: str, port: int, log_path: str, timeout: float = 120.0,
                 should_stop=lambda: False, api_key: str = "") -> float:  # noqa: ANN001
    """Wait until the server answers; seconds taken. ServerFailed (with the log tail) when it exits or times out."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if not is_alive(pid, port) and not _starting(pid, since=start):
            raise ServerFailed(f"llama.cpp server (pid {pid}, port {port}) exited while starting:\n{log_tail(log_path)}")
        if health(host, port, timeout=1.0, api_key=api_key) is not None:
            return time.monotonic() - start
        if should_stop():
            raise ServerFailed("start cancelled")
        time.sleep(0.25)
    raise ServerFailed(f"llama.cpp server on port {port} did not answer within {timeout:.0f} s:\n{log_tail(log_path)}")


def _starting(pid: int, *, since: float, grace_s: float = 10.0) -> bool:
    """Just spawned and not exited: for a moment after the fork /proc/<pid>/cmdline does not show the
    server's arguments yet (seen under load), and is_alive() would take our own server for dead."""
    if time.monotonic() - since > grace_s:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def stop(pid: int | None, port: int | None, timeout: float = 10.0) -> bool:
    """SIGTERM the server's process group, SIGKILL after `timeout`; False when it was not running."""
    if not is_alive(pid, port):
        return False
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)  # the server leads its own session: pgid == pid
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            _reap_child(pid)
            if not is_alive(pid, port):
                return True
            time.sleep(0.1)
    return not is_alive(pid, port)


def _reap_child(pid: int) -> None:
    # When this process launched the server, collect its exit status so it does not linger as a zombie.
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def log_tail(path: str | Path, lines: int = 40, max_bytes: int = 64_000) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            text = fh.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
