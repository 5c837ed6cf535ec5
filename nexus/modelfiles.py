"""What model files say about themselves, read without loading weights: a Hugging Face folder's
config.json, tokenizer files and safetensors headers, and a GGUF file's metadata. Django-free:
the catalog, the training engine's ModelInfo and the GGUF exporter all read models through it."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def hf_config(folder: str | Path) -> dict[str, Any]:
    """The folder's config.json (FileNotFoundError when it has none)."""
    return json.loads((Path(folder) / "config.json").read_text())


def context_length(config: dict[str, Any]) -> int:
    """Positions the model was trained for (0 when its config does not say)."""
    return int(config.get("max_position_embeddings") or 0)


def has_chat_template(folder: str | Path) -> bool:
    folder = Path(folder)
    if (folder / "chat_template.jinja").is_file():
        return True
    tokenizer_config = folder / "tokenizer_config.json"
    return tokenizer_config.is_file() and bool(json.loads(tokenizer_config.read_text()).get("chat_template"))


# a model folder staged without its weights holds their shapes here ({file: {tensor: shape}})
TENSOR_SHAPES_FILE = ".nexus-tensors.json"


def safetensors_tensors(folder: str | Path) -> list[tuple[Path, str, tuple[int, ...]]]:
    """(file, name, shape) of every tensor in the folder's safetensors files (files in name order),
    from their headers."""
    from safetensors import safe_open

    found = []
    shapes = Path(folder) / TENSOR_SHAPES_FILE
    if shapes.is_file() and not any(Path(folder).glob("*.safetensors")):  # a folder staged without its weights
        return [(Path(folder) / rel, key, tuple(shape)) for rel, tensors in sorted(json.loads(shapes.read_text()).items())
                for key, shape in tensors.items()]
    for file in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            found.extend((file, key, tuple(f.get_slice(key).get_shape())) for key in f.keys())
    return found


def parameter_count(folder: str | Path) -> int:
    """The total a sharded checkpoint's index states, else the sum over the tensors' shapes."""
    index = Path(folder) / "model.safetensors.index.json"
    if index.is_file():
        stated = int(json.loads(index.read_text()).get("metadata", {}).get("total_parameters", 0))
        if stated:
            return stated
    return sum(math.prod(shape) for _file, _name, shape in safetensors_tensors(folder))


def first_layer_linears(folder: str | Path) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each linear module of the first decoder layer, by module name
    (q_proj, gate_proj, ...): every layer has the same ones."""
    shapes = {}
    for _file, name, shape in safetensors_tensors(folder):
        parts = name.split(".")
        if parts[-1] == "weight" and ".layers.0." in f".{name}" and len(shape) == 2:
            shapes[parts[-2]] = (int(shape[1]), int(shape[0]))
    return shapes


def gguf_value(field: Any, index: int, vtype: Any) -> Any:
    """One value of a GGUF field: text (bytes that are not UTF-8 kept as surrogates, so a copy
    writes them back unchanged) or a number."""
    import gguf

    part = field.parts[index]
    if vtype == gguf.GGUFValueType.STRING:
        return bytes(part).decode("utf-8", errors="surrogateescape")
    value = part.tolist()
    return value[0] if isinstance(value, list) else value


@dataclass(frozen=True)
class GGUFInfo:
    fields: dict[str, Any]  # every single-valued field (arrays such as the vocabulary are left out)
    parameter_count: int
    tensor_count: int
    tensor_types: list[str]

    @property
    def architecture(self) -> str:
        return self.fields.get("general.architecture") or ""

    @property
    def context_length(self) -> int:
        return int(self.fields.get(f"{self.architecture}.context_length") or 0)


def read_gguf(path: str | Path) -> GGUFInfo:
    import gguf

    reader = gguf.GGUFReader(str(path))
    fields = {key: gguf_value(field, field.data[0], field.types[0]) for key, field in reader.fields.items()
              if field.types and field.types[0] != gguf.GGUFValueType.ARRAY and field.data}
    return GGUFInfo(fields=fields, parameter_count=sum(int(t.n_elements) for t in reader.tensors),
                    tensor_count=len(reader.tensors), tensor_types=sorted({t.tensor_type.name for t in reader.tensors}))
