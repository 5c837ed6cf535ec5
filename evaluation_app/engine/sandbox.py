"""Running model-written code (HumanEval completions) with limits, and scoring it.

How `run_untrusted` contains a program:
- It runs in a fresh temporary folder (its working directory and HOME, removed afterwards) as
  `python -I -B`, started from an argument list (no shell), with an environment of PATH and HOME
  only (no inherited secrets), stdin closed, stdout discarded and stderr kept to a capped tail.
- Resource limits set in the child before it starts: address space `memory_mb`, CPU time
  ceil(timeout)+1 s, files it writes 10 MB, no core dumps. RLIMIT_NPROC is not used: it counts
  every process of the user and root ignores it; runaway children are handled below instead.
- Wall clock: after `timeout_s` the whole process group is killed (SIGKILL), and it is killed
  again when the program ends, so children it left behind die with it. Where util-linux
  `unshare` can make namespaces (checked once per process; as root it can), the program also
  runs in its own network namespace (only a loopback that is down: no network at all) and its
  own PID namespace with --kill-child, so even children that started their own session die when
  the program's namespace ends.
- Defence in depth: a prelude replaces socket connect/connect_ex/sendto, create_connection and
  getaddrinfo with functions that raise OSError("network disabled in the sandbox").

Limits: this is not a security boundary against a determined attacker the way a container or VM
is. The program runs as the worker's user, can read whatever that user can read and write
outside its folder, and without namespaces (no `unshare`) it could open sockets through
lower-level calls and keep children alive by leaving the process group. It is meant for
benchmark completions from models, which are careless rather than hostile. Run workers that
execute code in a container when the models or prompts are not trusted.
"""
from __future__ import annotations

import functools
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PASSED, FAILED, TIMED_OUT, KILLED = "passed", "failed", "timed_out", "killed"
FILE_LIMIT = 10 * 1024 * 1024
DETAIL_LINES, DETAIL_CHARS = 20, 4000

_RUNNER = '''\
import runpy, socket

def _no_network(*args, **kwargs):
    raise OSError("network disabled in the sandbox")

for _name in ("connect", "connect_ex", "sendto"):
    setattr(socket.socket, _name, _no_network)
socket.create_connection = socket.getaddrinfo = _no_network
del _name
runpy.run_path("program.py", run_name="__main__")
'''


@dataclass
class SandboxResult:
    passed: bool
    status: str  # PASSED | FAILED | TIMED_OUT | KILLED
    detail: str  # the last lines of stderr, or what stopped the program
    seconds: float


@functools.cache
def namespace_prefix() -> tuple[str, ...]:
    """The `unshare` prefix that gives the program no network and its own PID namespace, or ()
    when this machine does not allow it (tried once per process)."""
    for prefix in (("unshare", "--net", "--pid", "--fork", "--kill-child", "--"), ("unshare", "--net", "--")):
        if shutil.which("unshare") is None:
            return ()
        try:
            probe = subprocess.run([*prefix, "true"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return prefix
    return ()


def _limits(timeout_s: float, memory_mb: int):
    def apply() -> None:  # runs in the child between fork and exec
        memory = memory_mb * 1024 * 1024
        cpu = math.ceil(timeout_s) + 1
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return apply


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, path.stat().st_size - DETAIL_CHARS))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-DETAIL_LINES:])


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_untrusted(program: str, *, timeout_s: float = 10, memory_mb: int = 512) -> SandboxResult:
    """Run `program` as a Python script under the limits above; passed means exit status 0."""
    folder = Path(tempfile.mkdtemp(prefix="nexus-sandbox-"))
    started = time.monotonic()
    try:
        (folder / "program.py").write_text(program, encoding="utf-8")
        (folder / "run.py").write_text(_RUNNER, encoding="utf-8")
        stderr_path = folder / "stderr.txt"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(folder)}
        with open(stderr_path, "wb") as stderr:
            process = subprocess.Popen(
                [*namespace_prefix(), sys.executable, "-I", "-B", "run.py"], cwd=folder, env=env,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True,
                preexec_fn=_limits(timeout_s, memory_mb), close_fds=True)
            timed_out = False
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            _kill_group(process.pid)  # also the children a finished program left behind
            process.wait()
        seconds = time.monotonic() - started
        detail = _tail(stderr_path)
        if timed_out:
            return SandboxResult(False, TIMED_OUT, f"stopped after {timeout_s:g} s\n{detail}".strip(), seconds)
        code = process.returncode
        if code == 0:
            return SandboxResult(True, PASSED, detail, seconds)
        if (detail.splitlines() or [""])[-1].startswith("MemoryError"):
            return SandboxResult(False, KILLED, f"memory limit of {memory_mb} MB reached\n{detail}", seconds)
        if code < 0 or code > 128:  # a signal: directly (negative) or through unshare --fork (128 + n)
            number = -code if code < 0 else code - 128
            try:
                name = signal.Signals(number).name
            except ValueError:
                name = f"signal {number}"
            return SandboxResult(False, KILLED, f"killed by {name}\n{detail}".strip(), seconds)
        return SandboxResult(False, FAILED, detail or f"exit status {code}", seconds)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def humaneval_program(item: dict, completion: str) -> str:
    """The program HumanEval runs for a completion: the prompt, the completion, the tests, the check."""
    return f"{item['prompt']}{completion}\n{item['test']}\ncheck({item['entry_point']})\n"


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c passed: 1 - C(n-c, k) / C(n, k), computed as a
    product (Chen et al. 2021) so large n does not overflow."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))
