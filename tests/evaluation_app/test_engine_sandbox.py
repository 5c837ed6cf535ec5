"""Model-written code runs under limits: it passes or fails on its tests, and cannot run forever,
eat the machine's memory, reach the network or leave processes behind."""
from __future__ import annotations

import itertools
import math
import socket
import time
import uuid
from pathlib import Path

import pytest

from evaluation_app.engine.sandbox import namespace_prefix, humaneval_program, pass_at_k, run_untrusted
from evaluation_app.engine.suites import load_items, suite_get


@pytest.fixture(scope="module")
def has_close_elements(tmp_path_factory) -> dict:
    return load_items(suite_get("humaneval"), tmp_path_factory.mktemp("data"))[0]


def test_the_canonical_humaneval_solution_passes(has_close_elements):
    result = run_untrusted(humaneval_program(has_close_elements, has_close_elements["canonical_solution"]))
    assert (result.passed, result.status) == (True, "passed")
    assert result.seconds < 10


def test_a_wrong_completion_fails_with_the_assertion_in_the_detail(has_close_elements):
    result = run_untrusted(humaneval_program(has_close_elements, "    return False\n"))
    assert (result.passed, result.status) == (False, "failed")
    assert "AssertionError" in result.detail


def test_an_endless_loop_is_stopped_at_the_timeout():
    started = time.monotonic()
    result = run_untrusted("while True:\n    pass\n", timeout_s=2)
    assert (result.passed, result.status) == (False, "timed_out")
    assert time.monotonic() - started < 2 + 3


def test_allocating_4_gb_is_stopped():
    result = run_untrusted("block = bytearray(4 * 1024 ** 3)\nblock[-1] = 1\n", memory_mb=512)
    assert not result.passed and result.status == "killed"
    assert "memory limit of 512 MB" in result.detail


def test_a_program_cannot_connect_to_a_server_on_this_machine():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        program = (f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'hi')\n"
                   f"print('connected')\n")
        raw = (f"import _socket\ns = _socket.socket()\ns.settimeout(2)\ns.connect(('127.0.0.1', {port}))\n")
        results = [run_untrusted(program)]
        if "--net" in namespace_prefix():  # only a network namespace stops the raw socket module
            results.append(run_untrusted(raw))
        server.settimeout(1)
        with pytest.raises(socket.timeout):
            server.accept()
    assert not any(r.passed for r in results)
    assert "network disabled in the sandbox" in results[0].detail


def _processes_with(token: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if token.encode() in cmdline:
                found.append(int(entry.name))
    return found


def _forking_program(token: str, *, own_session: bool, then: str) -> str:
    """Three children that exec a 60 s sleep carrying `token` in their command line (so the test
    can look for them in /proc); with own_session they also leave the process group."""
    return "\n".join([
        "import os, sys, time", "for _ in range(3):", "    if os.fork() == 0:",
        f"        {'os.setsid()' if own_session else 'pass'}",
        f"        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', '{token}'])",
        "time.sleep(0.5)", then, ""])


@pytest.mark.parametrize("own_session", [False, True])
def test_children_a_program_forks_are_killed_with_it(own_session):
    if own_session and "--pid" not in namespace_prefix():
        pytest.skip("children that leave the process group are only caught in a PID namespace (unshare)")
    token = f"nexus-sandbox-test-{uuid.uuid4().hex}"
    result = run_untrusted(_forking_program(token, own_session=own_session, then="pass"), timeout_s=5)
    assert result.passed  # the parent itself ended normally
    time.sleep(0.5)
    assert _processes_with(token) == []
    result = run_untrusted(_forking_program(token, own_session=own_session, then="while True: pass"), timeout_s=2)
    assert result.status == "timed_out"
    time.sleep(0.5)
    assert _processes_with(token) == []


def test_the_program_gets_no_inherited_secrets(monkeypatch):
    monkeypatch.setenv("NEXUS_TEST_SECRET", "hunter2")
    result = run_untrusted("import os, sys\nassert 'NEXUS_TEST_SECRET' not in os.environ, 'leaked'\n")
    assert result.passed, result.detail


@pytest.mark.parametrize("n, c, k, expected", [(10, 1, 1, 0.1), (10, 0, 1, 0.0), (10, 10, 1, 1.0), (10, 0, 10, 0.0),
                                               (10, 3, 1, 0.3), (5, 1, 5, 1.0)])
def test_pass_at_k_known_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_matches_counting_the_combinations():
    # 5 of 20 samples pass: the share of 10-sample subsets that hold at least one passing sample
    samples = [True] * 5 + [False] * 15
    subsets = list(itertools.combinations(samples, 10))
    brute = sum(any(subset) for subset in subsets) / len(subsets)
    assert len(subsets) == math.comb(20, 10)
    assert pass_at_k(20, 5, 10) == pytest.approx(brute, rel=1e-12)


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError):
        pass_at_k(5, 6, 1)
    with pytest.raises(ValueError):
        pass_at_k(5, 1, 6)
