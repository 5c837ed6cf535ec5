"""API throughput under 50 concurrent clients, in one run: the web server as it was (one daphne
process) against the one `make serve` and the Docker image run now (uvicorn with a worker
process per core), on the same database and data:

    .venv/bin/python bench/api.py [--seconds 10 --connections 50 --items 20]

For each server, wrk (Debian's `wrk`) puts --connections clients for --seconds on GET /healthz
(no login; the database and Redis), GET /api/v1/finetune/datasets and GET /api/v1/finetune/jobs
(token auth; --items datasets and jobs in the team, the first page of each), after a short
untimed warm-up, and prints requests/s, p50, p99 and errors. Targets on a 2-core machine: no
errors; each list at least 0.5x /healthz's requests/s; each list at least 10x the single daphne
process's requests/s (the probe measured 15.8) with p99 at most 500 ms.

The bench owns its database (nexus_bench_api), Redis database (11) and data folder (a temporary
one), and stops only the servers it started. Nothing else should run meanwhile.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# bench/ holds a datasets.py: keep it from shadowing the `datasets` package
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from bench.benchlib import BenchSystem, free_port  # noqa: E402
BENCH_DB = "nexus_bench_api"
BENCH_REDIS_DB = 11
PROBE_RPS = 15.8  # what the probe measured on the list endpoints with one daphne process


class Instance(BenchSystem):
    def __init__(self, workdir: Path):
        super().__init__(workdir, database=BENCH_DB, redis_db=BENCH_REDIS_DB)
        self.proc: subprocess.Popen | None = None

    def prepare(self, items: int) -> str:
        """A fresh database with a user whose team has `items` datasets and jobs; returns a token."""
        self.fresh()
        out = self.manage("shell", "-c", (
            "from rest_framework.authtoken.models import Token\n"
            "from datasets_app.models import Dataset\n"
            "from training_app.models import FineTuningJob\n"
            "from training_app.engine.config import parse_job_config\n"
            "from nexus.models import BaseModel\n"
            "from nexus.teams import team_ensure_personal, user_create\n"
            "u = user_create(username='bench', password='" + secrets.token_urlsafe(12) + "')\n"
            "team = team_ensure_personal(user=u)\n"
            "model = BaseModel.objects.first()\n"
            "config = parse_job_config().as_dicts()\n"
            "stats = {'token_histogram': list(range(40)), 'total_tokens': 12000}\n"
            "problems = [{'line': i, 'category': 'length', 'message': 'too long'} for i in range(100)]\n"
            f"for i in range({items}):\n"
            "    d = Dataset.objects.create(team=team, created_by=u, name=f'dataset {i}', status='ready', format='alpaca',\n"
            "        num_examples=500, total_tokens=12000, statistics=stats, validation_errors=problems,\n"
            "        original_file=f'datasets/bench/{i}.jsonl')\n"
            "    FineTuningJob.objects.create(team=team, created_by=u, name=f'job {i}', base_model=model, dataset=d,\n"
            "        status='completed', total_steps=100, current_step=100, progress=100.0,\n"
            "        metrics={'last': {'step': 100, 'loss': 0.5}}, **config)\n"
            "print('TOKEN ' + Token.objects.create(user=u).key)\n"
        ))
        return next(line for line in out.splitlines() if line.startswith("TOKEN "))[6:]

    def start(self, name: str, cmd: list[str], port: int) -> None:
        log = self.workdir / f"{name}.log"
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited:\n{log.read_text()[-3000:]}")
            try:
                import urllib.request

                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"{name} did not answer /healthz in 120 s:\n{log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None


def _cpu(pid: int) -> float:
    """CPU seconds used so far by a server process and its worker processes."""
    import psutil

    total = 0.0
    root = psutil.Process(pid)
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def _postgres_cpu() -> float:
    import psutil

    total = 0.0
    for proc in psutil.process_iter(["name"]):
        try:
            if (proc.info["name"] or "").startswith("postgres"):
                times = proc.cpu_times()
                total += times.user + times.system
        except psutil.Error:
            pass
    return total


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text).groups()
    return float(value) * _UNITS[unit]


def wrk(url: str, *, token: str | None, seconds: int, connections: int) -> dict:
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "10s", url]
    if token:
        cmd[1:1] = ["-H", f"Authorization: Token {token}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    found = {p: _ms(m.group(1)) for p in ("50", "99") if (m := re.search(rf"^\s+{p}%\s+(\S+)", out, re.M))}
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    errors += int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))
    return {"rps": rps, "p50": found.get("50"), "p99": found.get("99"), "errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--items", type=int, default=20)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    if not Path("/usr/bin/wrk").exists():
        sys.exit("wrk is missing: apt-get install -y wrk")
    paths = {"healthz": "/healthz", "datasets": "/api/v1/finetune/datasets", "jobs": "/api/v1/finetune/jobs"}
    with tempfile.TemporaryDirectory(prefix="nexus-bench-api-") as tmp:
        instance = Instance(Path(tmp))
        results: dict[str, dict[str, dict]] = {}
        try:
            token = instance.prepare(args.items)
            servers = {
                "daphne, 1 process (same code)": lambda port: [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p",
                                                            str(port), "nexus.asgi:application"],
                f"uvicorn, {args.workers} workers (now)": lambda port: [
                    sys.executable, "-m", "uvicorn", "nexus.asgi:application", "--host", "127.0.0.1", "--port",
                    str(port), "--workers", str(args.workers), "--no-access-log", "--log-level", "warning"],
            }
            for name, command in servers.items():
                port = free_port()
                instance.start(name.split(",")[0], command(port), port)
                try:
                    for key, path in paths.items():
                        url = f"http://127.0.0.1:{port}{path}"
                        wrk(url, token=token, seconds=2, connections=args.connections)  # warm-up, untimed
                        web0, db0 = _cpu(instance.proc.pid), _postgres_cpu()
                        r = wrk(url, token=token, seconds=args.seconds, connections=args.connections)
                        served = max(r["rps"] * args.seconds, 1)
                        r["web_cpu_ms"] = round((_cpu(instance.proc.pid) - web0) * 1000 / served, 2)
                        r["db_cpu_ms"] = round((_postgres_cpu() - db0) * 1000 / served, 2)
                        results.setdefault(name, {})[key] = r
                finally:
                    instance.stop()
        finally:
            instance.drop()

    before, now = list(results)
    print(f"\nGET with {args.connections} connections for {args.seconds} s each (wrk), {args.items} datasets and jobs, "
          f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}")
    print(f"{'':34s}{'requests/s':>12s}{'p50 ms':>10s}{'p99 ms':>10s}{'errors':>8s}{'web CPU':>10s}{'db CPU':>9s}")
    for name, rows in results.items():
        print(name)
        for key, r in rows.items():
            print(f"  {paths[key]:32s}{r['rps']:12.1f}{r['p50'] or 0:10.1f}{r['p99'] or 0:10.1f}{r['errors']:8d}"
                  f"{r['web_cpu_ms']:10.2f}{r['db_cpu_ms']:9.2f}")
    print("(web CPU and db CPU: milliseconds of CPU per request in the server's processes and in Postgres)")
    print("\nratios (now):")
    health = results[now]["healthz"]["rps"]
    for key in ("datasets", "jobs"):
        r = results[now][key]
        print(f"  {paths[key]}: {r['rps'] / health:.2f}x /healthz (target >= 0.5), "
              f"{r['rps'] / results[before][key]['rps']:.1f}x one daphne process here, "
              f"{r['rps'] / PROBE_RPS:.1f}x the probe's {PROBE_RPS} (target >= 10), p99 {r['p99']:.0f} ms "
              f"(target <= 500), errors {r['errors']} (target 0)")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
