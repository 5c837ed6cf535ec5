"""Training on several processes of one host: data parallel (DDP) under torchrun. Django-free.

The launcher writes a run spec (paths, the config, the records), starts `torchrun --standalone
--nproc_per_node N -m <entry> <spec>` as an argument list in a process group of its own, waits,
and reads the result that rank 0 writes; whatever way it ends, no rank outlives it. Each rank
watches the launching process and its torchrun agent, and leaves at once when either is gone.
Inside `train()`, the control commands that rank 0 reads and the token counts of every rank go
through one all-reduce per optimizer step, so every rank stops, pauses and saves at the same step.

`python -m torch.distributed.run --standalone --nproc_per_node N -m training_app.engine.distributed
SPEC` trains a spec without Django (tests, bench/ddp.py); the platform's entry is
`training_app.distributed`."""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from training_app.engine.config import JobConfig, parse_job_config

COMMANDS = ("stop", "pause", "checkpoint")  # what rank 0's poll() may say, in the all-reduced flags' order
LAUNCHER_PID = "NEXUS_LAUNCHER_PID"  # the process the ranks live for (a Celery task, a test, a benchmark)
ORPHANED_EXIT = 75  # a rank's exit status when its launcher or torchrun agent was gone


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def world() -> World:
    """This process's place among the ranks, from torchrun's environment (one process without it)."""
    env = os.environ
    return World(int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env.get("WORLD_SIZE", 1)))


def backend() -> str:
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


def share_step(commands: set[str], counts: list[int], device: Any) -> tuple[set[str], list[int]]:
    """One all-reduce (sum) a step: the commands of this step (rank 0 reads them; the other ranks'
    hooks say none) reach every rank, and `counts` are summed over the ranks. Every rank calls it at
    every step, or the others wait in it forever."""
    import torch
    import torch.distributed as dist

    values = torch.tensor([int(c in commands) for c in COMMANDS] + counts, dtype=torch.int64, device=device)
    dist.all_reduce(values)
    shared = values.tolist()
    return {c for c, flag in zip(COMMANDS, shared) if flag}, shared[len(COMMANDS):]


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


# --- the run spec and its result -------------------------------------------------------------------

@dataclass
class RunSpec:
    """What every rank needs, written once by the launcher: local paths, the parsed config, records."""
    model_dir: str
    output_dir: str
    config: dict[str, dict[str, Any]]  # JobConfig.as_dicts()
    records: str  # JSON lines, next to the spec
    eval_records: str | None
    result: str  # rank 0 writes the TrainResult here
    extra: dict[str, Any] = field(default_factory=dict)  # the entry's own (the platform: job_id; tests: commands)

    def job_config(self) -> JobConfig:
        return parse_job_config(self.config["lora_config"], self.config["training_config"], self.config["qlora_config"])

    def load_records(self) -> tuple[list[dict], list[dict] | None]:
        def read(path: str) -> list[dict]:
            with open(path, encoding="utf-8") as fh:
                return [json.loads(line) for line in fh]

        return read(self.records), (read(self.eval_records) if self.eval_records else None)


def write_spec(folder: Path, *, model_dir: str | Path, output_dir: str | Path, config: JobConfig,
               records: list[dict], eval_records: list[dict] | None = None, **extra: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)

    def write(name: str, rows: list[dict]) -> str:
        path = folder / name
        with path.open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")
        return str(path)

    spec = RunSpec(model_dir=str(model_dir), output_dir=str(output_dir), config=config.as_dicts(),
                   records=write("records.jsonl", records),
                   eval_records=write("eval_records.jsonl", eval_records) if eval_records is not None else None,
                   result=str(folder / "result.json"), extra=extra)
    path = folder / "spec.json"
    path.write_text(json.dumps(asdict(spec)))
    return path


def read_spec(path: str | Path) -> RunSpec:
    return RunSpec(**json.loads(Path(path).read_text()))


def write_result(path: str | Path, **data: Any) -> None:
    """Rank 0's outcome for the launcher (atomically: a half-written file is never read)."""
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, default=str))
    tmp.replace(path)


def result_from(data: dict[str, Any]):
    from training_app.engine.trainer import TrainResult

    names = {f.name for f in fields(TrainResult)}
    result = TrainResult(**{k: v for k, v in data.items() if k in names})
    result.adapter_dir = Path(result.adapter_dir) if result.adapter_dir else None
    return result


# --- the rank side ---------------------------------------------------------------------------------

def exit_when_gone(pids: list[int]) -> None:
    """Leave at once (os._exit) when any of `pids` ends: a rank must not train on for a launcher that
    was killed (SIGKILL leaves it no time to stop anyone) or a torchrun agent that is gone."""
    fds = []
    for pid in pids:
        try:
            fds.append(os.pidfd_open(pid))
        except ProcessLookupError:
            os._exit(ORPHANED_EXIT)

    def watch() -> None:
        select.select(fds, [], [])  # a pidfd is readable once its process has ended
        os._exit(ORPHANED_EXIT)

    threading.Thread(target=watch, name="nexus-rank-watch", daemon=True).start()


def rank_start() -> World:
    """A rank's first act: watch the launcher (given in the environment) and the torchrun agent."""
    launcher = os.environ.get(LAUNCHER_PID)
    exit_when_gone([os.getppid(), *([int(launcher)] if launcher else [])])
    here = world()
    if here.size > 1:
        import torch

        if torch.cuda.is_available():
            torch.cuda.set_device(here.local_rank)
    return here


def train_rank(spec: RunSpec, hooks: Any, *, model_callback: Callable[[Any], None] | None = None,
               **result_extra: Any):
    """Train this rank's share of the spec; rank 0 writes the result file."""
    from training_app.engine.trainer import train

    records, eval_records = spec.load_records()
    result = train(model_dir=spec.model_dir, records=records, eval_records=eval_records, config=spec.job_config(),
                   output_dir=spec.output_dir, hooks=hooks, model_callback=model_callback)
    if world().main:
        write_result(spec.result, **asdict(result), **result_extra)
    return result


# --- the launcher side -----------------------------------------------------------------------------

def torchrun_command(module: str, nproc: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            "-m", module, *args]


def launch(module: str, spec_path: Path, nproc: int, *, cwd: str | Path | None = None,
           env: dict[str, str] | None = None) -> subprocess.Popen:
    """torchrun in a new session (its own process group). No shell. The ranks share this host's CPU
    threads, and know the launching process (this one) to watch it."""
    environ = {**os.environ, **(env or {})}
    environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    environ[LAUNCHER_PID] = str(os.getpid())
    if cwd is not None:
        environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(cwd), environ.get("PYTHONPATH")]))
    return subprocess.Popen(torchrun_command(module, nproc, str(spec_path)), cwd=cwd, env=environ,
                            start_new_session=True)


def descendants(pid: int) -> list[Any]:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def stop_group(proc: subprocess.Popen, *, grace_s: float = 15.0) -> None:
    """End a launched run and every rank: SIGTERM to torchrun's group (the agent passes it to each rank,
    which torchrun starts in a session of its own), then SIGKILL to whatever is left after `grace_s`."""
    import psutil

    ranks = descendants(proc.pid)
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    _, left = psutil.wait_procs(ranks, timeout=max(1.0, grace_s / 3))
    for rank in left:
        try:
            rank.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(left, timeout=5)


def run(module: str, nproc: int, *, model_dir: str | Path, output_dir: str | Path, config: JobConfig,
        records: list[dict], eval_records: list[dict] | None = None, cwd: str | Path | None = None,
        env: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    """Launch `module` on `nproc` ranks, wait, and return what rank 0 wrote (no rank is left running,
    whatever happens here: an exception, a time limit, a cancelled wait)."""
    with tempfile.TemporaryDirectory(prefix="nexus-ddp-") as folder:
        spec = write_spec(Path(folder), model_dir=model_dir, output_dir=output_dir, config=config, records=records,
                          eval_records=eval_records, **extra)
        proc = launch(module, spec, nproc, cwd=cwd, env=env)
        try:
            code = proc.wait()
        finally:
            stop_group(proc)
        result = Path(folder) / "result.json"
        if not result.exists():
            raise RuntimeError(f"the {nproc} training processes exited with status {code} before a result")
        return json.loads(result.read_text())


def main(argv: list[str]) -> None:
    """The Django-free entry: train a spec. `extra` may give `commands` ({step: [command]}: rank 0's
    poll() says them at that step, as if a user had sent them) and `state_dict` (a path with {rank}:
    each rank saves its trained adapter weights there)."""
    from training_app.engine.trainer import NullHooks

    here = rank_start()
    spec = read_spec(argv[0])
    hooks = NullHooks()
    scripted = spec.extra.get("commands", {}) if here.main else {}
    hooks.commands = [set(scripted.get(str(step), ())) for step in range(1, max(map(int, scripted), default=0) + 1)]

    def save_weights(model: Any) -> None:
        import torch
        from peft import get_peft_model_state_dict

        torch.save({k: v.detach().cpu() for k, v in get_peft_model_state_dict(model).items()},
                   spec.extra["state_dict"].format(rank=here.rank))

    # the lists fill while it trains; rank 0 writes them with its result
    train_rank(spec, hooks, model_callback=save_weights if spec.extra.get("state_dict") else None,
               metrics=hooks.metrics, world_size=here.size)


if __name__ == "__main__":
    main(sys.argv[1:])
