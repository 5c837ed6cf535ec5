"""llama.cpp's own converters (`convert_hf_to_gguf.py`, `convert_lora_to_gguf.py`) of the exact
llama.cpp that the installed llama-cpp-python was built from. Django-free.

They ship in llama-cpp-python's source distribution (`vendor/llama.cpp/`, with the `gguf-py` and
`conversion/` package of that commit). `fetch()` downloads that sdist for the installed version
from the configured package index (`pip download`, no other network access), keeps only the two
scripts, `conversion/`, `gguf-py/` and the licence, and writes `SOURCE.json`; setup runs it
(`python -m adapters_app.engine.converters fetch`). The folder lies beside the venv:
`<venv>/../.llama-converters/llama-cpp-python-<version>/`, or `NEXUS_LLAMA_CONVERTERS_DIR`.

The converters run as subprocesses with argument lists and an offline environment; their log
lines and tqdm bars become progress."""
from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Callable

Progress = Callable[[float, str], None]
SCRIPTS = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py")
_KEEP = re.compile(r"^(convert_hf_to_gguf\.py|convert_lora_to_gguf\.py|LICENSE|conversion/[\w/]+\.py|"
                   r"gguf-py/(pyproject\.toml|gguf/[\w/]+\.(py|typed)))$")
_TENSOR_LINE = re.compile(r"^INFO:\S+:(\S+),\s+torch\.\w+ --> (\w+), shape = ")
_TQDM = re.compile(r"(\d{1,3})%\|")
_RAISED = re.compile(r"^[A-Za-z_.]*(Error|Exception|Exit)\b.*")
log = logging.getLogger(__name__)


class ConverterMissing(RuntimeError):
    """The converters for the installed llama-cpp-python are not on this host."""


class ConversionFailed(RuntimeError):
    """A converter exited with an error; the message carries its last log lines."""


def llama_cpp_version() -> str:
    return metadata.version("llama-cpp-python")


def converters_dir(version: str | None = None) -> Path:
    version = version or llama_cpp_version()
    root = os.environ.get("NEXUS_LLAMA_CONVERTERS_DIR")
    base = Path(root) if root else Path(sys.prefix).resolve().parent / ".llama-converters"
    return base / f"llama-cpp-python-{version}"


def source(version: str | None = None) -> dict:
    """SOURCE.json of the installed converters; ConverterMissing (with the command) without them."""
    folder = converters_dir(version)
    try:
        return json.loads((folder / "SOURCE.json").read_text())
    except FileNotFoundError:
        raise ConverterMissing(
            f"llama.cpp's GGUF converters for llama-cpp-python {version or llama_cpp_version()} are not installed "
            f"in {folder}; run: {Path(sys.executable).name} -m adapters_app.engine.converters fetch") from None


def supported_architectures(version: str | None = None) -> dict[str, str]:
    """HF architecture name -> converter module, read from the converters' own table (no import)."""
    init = converters_dir(version) / "conversion" / "__init__.py"
    source(version)
    tree = ast.parse(init.read_text())
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else (node.targets[0] if isinstance(node, ast.Assign)
                                                                      else None)
        if isinstance(target, ast.Name) and target.id == "TEXT_MODEL_MAP":
            return ast.literal_eval(node.value)
    raise ConverterMissing(f"{init} has no TEXT_MODEL_MAP: not a converter this version of Nexus understands")


# --- fetch ---------------------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _extract(sdist: Path, into: Path) -> int:
    """The kept members of the sdist's vendor/llama.cpp into `into`; plain files only, no links,
    no absolute or parent paths."""
    count = 0
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if len(parts) < 4 or parts[1:3] != ["vendor", "llama.cpp"] or not member.isfile():
                continue
            rel = "/".join(parts[3:])
            if ".." in parts or not _KEEP.match(rel):
                continue
            dest = into / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as src, dest.open("wb") as out:
                shutil.copyfileobj(src, out)
            count += 1
    return count


def fetch(version: str | None = None, *, sdist: Path | None = None, quiet: bool = False) -> Path:
    """Install the converters for `version` (the installed llama-cpp-python's by default) from its
    sdist: downloaded with pip from the configured index, or the given file. Idempotent; a failed
    fetch leaves nothing half-written (extracted into a partial folder, renamed when complete)."""
    version = version or llama_cpp_version()
    target = converters_dir(version)
    if (target / "SOURCE.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llama-sdist-", dir=target.parent) as tmp:
        if sdist is None:
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                       f"llama-cpp-python=={version}", "-d", tmp]
            if quiet:
                command.insert(4, "-q")
            subprocess.run(command, check=True)
            found = sorted(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
            if not found:
                raise ConverterMissing(f"pip download left no llama-cpp-python {version} sdist in {tmp}")
            sdist = found[0]
        partial = Path(tempfile.mkdtemp(prefix=f"{target.name}.partial-", dir=target.parent))
        try:
            count = _extract(Path(sdist), partial)
            missing = [s for s in (*SCRIPTS, "conversion/__init__.py", "gguf-py/gguf/__init__.py")
                       if not (partial / s).is_file()]
            if missing:
                raise ConverterMissing(f"{Path(sdist).name} lacks {', '.join(missing)} under vendor/llama.cpp")
            gguf_version = re.search(r'^version\s*=\s*"([^"]+)"', (partial / "gguf-py/pyproject.toml").read_text(),
                                     re.M)
            (partial / "SOURCE.json").write_text(json.dumps({
                "llama_cpp_python": version, "sdist": Path(sdist).name, "sdist_sha256": _sha256(Path(sdist)),
                "gguf_py": gguf_version.group(1) if gguf_version else None, "files": count,
                "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=2))
            if target.exists():  # another process won the race: keep its complete copy
                shutil.rmtree(partial)
            else:
                partial.rename(target)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    return target


# --- running ---------------------------------------------------------------------------------

def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "NEXUS_SECRET", "SECRET_KEY"))}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1",
               PYTHONIOENCODING="utf-8")
    env.pop("NO_LOCAL_GGUF", None)  # the converters must use their own gguf-py, not whatever is installed
    return env


def _run(script: str, args: list[str], *, expected_tensors: int, progress: Progress | None, what: str) -> list[str]:
    """Run one converter; progress from its per-tensor log lines and tqdm bars; the log lines back."""
    folder = converters_dir()
    source()
    progress = progress or (lambda _f, _m: None)
    command = [sys.executable, str(folder / script), *args]
    proc = subprocess.Popen(command, cwd=folder, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    lines: list[str] = []
    planned, last = 0, 0.0
    buffer = b""
    assert proc.stdout is not None
    try:
        while True:
            chunk = proc.stdout.read1(65536)
            if not chunk:
                break
            buffer += chunk
            *done, buffer = re.split(rb"[\r\n]", buffer)
            for raw in done:
                line = raw.decode("utf-8", "replace").strip()
                if not line:
                    continue
                bar = _TQDM.search(line)
                if bar:  # the writer's bar: the second half
                    fraction = 0.5 + int(bar.group(1)) / 200
                elif _TENSOR_LINE.match(line):  # one line per planned tensor: the first half
                    planned += 1
                    fraction = min(planned / max(expected_tensors, 1), 1.0) / 2
                else:
                    lines.append(line)
                    continue
                if fraction - last >= 0.02 or fraction >= 1.0:
                    last = fraction
                    progress(fraction, f"{what}: {'writing' if bar else 'planning'} tensors ({int(fraction * 100)}%)")
        code = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if code != 0:
        log.warning("%s exited %s; its last lines:\n%s", script, code, "\n".join(lines[-30:]))
        raise ConversionFailed(f"llama.cpp's {script} failed (exit {code}): {_reason(lines)}")
    return lines


def _reason(lines: list[str]) -> str:
    """The converter's own words for a failure: its error log lines, else the exception's last line."""
    errors = [l.split(":", 2)[-1] for l in lines if l.startswith("ERROR:")]
    if errors:
        return " ".join(errors)[-1000:]
    raised = [l for l in lines if _RAISED.match(l)]
    return (raised[-1] if raised else " | ".join(lines[-3:]))[-1000:]


def convert_model(model_dir: Path, out_path: Path, *, outtype: str = "f16", name: str | None = None,
                  expected_tensors: int = 0, progress: Progress | None = None) -> Path:
    """A Hugging Face model folder to one GGUF file (outtype f32, f16, bf16 or q8_0)."""
    out_path = Path(out_path)
    args = [str(model_dir), "--outfile", str(out_path), "--outtype", outtype]
    if name:
        args += ["--model-name", name]
    _run("convert_hf_to_gguf.py", args, expected_tensors=expected_tensors, progress=progress,
         what="converting the model")
    if not out_path.is_file():
        raise ConversionFailed(f"convert_hf_to_gguf.py exited cleanly but wrote no {out_path.name}")
    return out_path


def convert_lora(adapter_dir: Path, base_dir: Path, out_path: Path, *, outtype: str = "f32",
                 expected_tensors: int = 0, progress: Progress | None = None) -> Path:
    """A PEFT LoRA adapter folder to llama.cpp's adapter GGUF (`--lora`), against the base model's
    folder (config and tokenizer only; the weights are not read)."""
    out_path = Path(out_path)
    args = ["--base", str(base_dir), "--outfile", str(out_path), "--outtype", outtype, str(adapter_dir)]
    _run("convert_lora_to_gguf.py", args, expected_tensors=expected_tensors, progress=progress,
         what="converting the adapter")
    if not out_path.is_file():
        raise ConversionFailed(f"convert_lora_to_gguf.py exited cleanly but wrote no {out_path.name}")
    return out_path


def main(argv: list[str]) -> int:
    if argv[:1] == ["fetch"]:
        sdist = Path(argv[argv.index("--sdist") + 1]) if "--sdist" in argv else None
        folder = fetch(sdist=sdist, quiet="-q" in argv)
        info = source()
        print(f"llama.cpp converters of llama-cpp-python {info['llama_cpp_python']} (gguf-py {info['gguf_py']}) "
              f"in {folder}")
        return 0
    if argv[:1] == ["where"]:
        print(converters_dir())
        return 0
    print("usage: python -m adapters_app.engine.converters fetch [-q] [--sdist FILE] | where", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
