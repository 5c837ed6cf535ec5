"""What a LoRA step keeps for backward, made smaller without changing what it computes. Django-free.

Without gradient checkpointing a step's activation memory is what autograd keeps between the
forward and the backward pass, and the plain modules keep more than their gradients need:

- PEFT's LoRA dropout makes a dropped copy of each adapted module's input for lora_A's backward
  (four copies of the hidden state per layer with q, k, v and o adapted, on top of the boolean
  mask). `LoraDelta` keeps the input the layer already holds and the mask, and forms the dropped
  input again in backward (one elementwise product).
- A gated MLP, act(gate) * up, keeps gate for the activation and act(gate) and up for the
  product. `GatedProduct` keeps gate and up and recomputes act(gate) in backward.
- Packed rows attend per example (`varlen_attention`): each example of a row is its own causal
  attention call, so nothing of the row's T x T score matrix is computed, and key and value
  heads are not repeated for grouped-query attention (SDPA's enable_gqa).

`make_lean(model)` installs the first two on a PEFT model of a known architecture; the attention
is chosen at load time (`ATTENTION`, registered with transformers) and used only when the
batch carries `cu_seq_lens_q` (the packing collator's one-row batches); any other batch goes to
transformers' SDPA path unchanged. The results match the plain modules to float tolerance
(tests/training_app/test_engine_lean.py); only the dropout's random draws differ from PEFT's.
"""
from __future__ import annotations

import functools
import types
from typing import Any

ATTENTION = "nexus_varlen"
# architectures whose attention goes through transformers' attention interface as plain causal
# attention (no logit softcapping, no attention sinks): they can attend per example
VARLEN_TYPES = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "phi"}
# architectures whose MLP is down(act(gate(x)) * up(x)) with these modules, and their activation
GATED_MLP_TYPES = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text"}


@functools.cache
def _functions():  # noqa: ANN202 - torch is imported lazily
    import torch
    import torch.nn.functional as F

    def compute_dtype(device_type: str, dtype: Any) -> Any:
        """The dtype the matmuls of lora_A and lora_B would run in: autocast's when it is on."""
        if torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
        return dtype

    class LoraDelta(torch.autograd.Function):
        """scale * dropout(x) @ A.T @ B.T, keeping x (which the layer already holds) and the
        dropout's boolean mask instead of the dropped copy of x."""

        @staticmethod
        def forward(ctx, x, a, b, keep, keep_prob, scale):  # noqa: ANN001, ANN205
            dtype = compute_dtype(x.device.type, a.dtype)
            xd = x.to(dtype) if keep is None else x.to(dtype) * keep * (1.0 / keep_prob)
            h = xd @ a.to(dtype).T
            del xd
            ctx.save_for_backward(x, a, b, keep, h)
            ctx.keep_prob, ctx.scale, ctx.dtype = keep_prob, scale, dtype
            return (h @ b.to(dtype).T) * scale

        @staticmethod
        def backward(ctx, grad):  # noqa: ANN001, ANN205
            x, a, b, keep, h = ctx.saved_tensors
            dtype = ctx.dtype
            g = grad.to(dtype) * ctx.scale
            g2, h2 = g.reshape(-1, g.shape[-1]), h.reshape(-1, h.shape[-1])
            grad_b = (g2.T @ h2).to(b.dtype) if ctx.needs_input_grad[2] else None
            gh = g @ b.to(dtype)
            grad_a = grad_x = None
            if ctx.needs_input_grad[1]:
                xd = x.to(dtype) if keep is None else x.to(dtype) * keep * (1.0 / ctx.keep_prob)
                grad_a = (gh.reshape(-1, gh.shape[-1]).T @ xd.reshape(-1, xd.shape[-1])).to(a.dtype)
                del xd
            if ctx.needs_input_grad[0]:
                grad_x = gh @ a.to(dtype)
                if keep is not None:
                    grad_x = grad_x.mul_(keep).mul_(1.0 / ctx.keep_prob)
                grad_x = grad_x.to(x.dtype)
            return grad_x, grad_a, grad_b, None, None, None

    class GatedProduct(torch.autograd.Function):
        """act(gate) * up for SiLU and tanh-approximated GELU, keeping gate and up only."""

        @staticmethod
        def forward(ctx, gate, up, kind):  # noqa: ANN001, ANN205
            ctx.save_for_backward(gate, up)
            ctx.kind = kind
            return (F.silu(gate) if kind == "silu" else F.gelu(gate, approximate="tanh")) * up

        @staticmethod
        def backward(ctx, grad):  # noqa: ANN001, ANN205
            gate, up = ctx.saved_tensors
            with torch.enable_grad():  # the activation's own derivative, from autograd, on a detached leaf
                g = gate.detach().requires_grad_(True)
                act = F.silu(g) if ctx.kind == "silu" else F.gelu(g, approximate="tanh")
                (d_act,) = torch.autograd.grad(act, g, grad * up)
            return d_act, grad * act.detach(), None

    return LoraDelta, GatedProduct


def keep_mask(x: Any, p: float) -> Any:
    """Dropout's mask: True where an element is kept (probability 1 - p)."""
    import torch

    return torch.rand(x.shape, device=x.device) >= p


def lora_delta(x: Any, a: Any, b: Any, *, p: float, scale: float, training: bool, keep: Any = None) -> Any:
    """scale * dropout_p(x) @ a.T @ b.T (dropout only when training); `keep` fixes the mask (tests)."""
    if not training or p == 0:
        keep = None
    elif keep is None:
        keep = keep_mask(x, p)
    return _functions()[0].apply(x, a, b, keep, 1.0 - p, scale)


def gated_product(gate: Any, up: Any, kind: str = "silu") -> Any:
    return _functions()[1].apply(gate, up, kind)


def _lora_forward(self: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
    """peft.tuners.lora.Linear.forward for one active, unmerged, plain adapter, through LoraDelta."""
    if self.disable_adapters or self.merged or len(self.active_adapters) != 1 or args or kwargs:
        return self._nexus_plain_forward(x, *args, **kwargs)
    name = self.active_adapters[0]
    if name not in self.lora_A:
        return self._nexus_plain_forward(x, *args, **kwargs)
    result = self.base_layer(x)
    dropout = self.lora_dropout[name]
    p = float(getattr(dropout, "p", 0.0))
    delta = lora_delta(x, self.lora_A[name].weight, self.lora_B[name].weight, p=p, scale=float(self.scaling[name]),
                       training=self.training)
    return result + delta.to(result.dtype)


def _lean_lora_reason(layer: Any) -> str | None:
    import torch

    for name in layer.lora_A:
        if layer.use_dora.get(name):
            return "DoRA"
        if type(layer.lora_A[name]) is not torch.nn.Linear or type(layer.lora_B[name]) is not torch.nn.Linear:
            return "a LoRA module that is not a plain linear layer"
        if layer.lora_A[name].bias is not None or layer.lora_B[name].bias is not None:
            return "LoRA biases"
        if type(layer.lora_dropout[name]) not in (torch.nn.Dropout, torch.nn.Identity):
            return "a dropout of its own kind"
    return None


def _lora_layer_types() -> tuple[type, ...]:
    """PEFT's LoRA linear layers whose forward is base(x) + lora_B(lora_A(dropout(x))) * scaling:
    the plain one and, where bitsandbytes is there, the 4-bit one (QLoRA)."""
    from peft.tuners.lora import Linear

    kinds: list[type] = [Linear]
    try:
        from peft.tuners.lora.bnb import Linear4bit
        kinds.append(Linear4bit)
    except ImportError:  # peft defines it only when bitsandbytes imports
        pass
    return tuple(kinds)


def _activation_kind(act: Any) -> str | None:
    import torch
    from transformers.activations import GELUTanh, PytorchGELUTanh, SiLUActivation

    if type(act) in (torch.nn.SiLU, SiLUActivation):
        return "silu"
    if type(act) in (GELUTanh, PytorchGELUTanh):
        return "gelu_tanh"
    return None


def _mlp_forward(self: Any, x: Any) -> Any:
    return self.down_proj(gated_product(self.gate_proj(x), self.up_proj(x), self._nexus_act))


def make_lean(model: Any) -> dict[str, int]:
    """Installs LoraDelta on every plain LoRA linear layer and GatedProduct on every gated MLP
    of a known architecture; returns how many of each (the rest keep their own forward)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    counts = {"lora": 0, "mlp": 0}
    gated = getattr(base.config, "model_type", "") in GATED_MLP_TYPES
    kinds = _lora_layer_types()
    for module in base.modules():
        if type(module) in kinds and _lean_lora_reason(module) is None:
            module._nexus_plain_forward = module.forward
            module.forward = types.MethodType(_lora_forward, module)
            counts["lora"] += 1
        elif gated and type(module).__name__.endswith("MLP") and all(
                hasattr(module, m) for m in ("gate_proj", "up_proj", "down_proj", "act_fn")):
            kind = _activation_kind(module.act_fn)
            if kind is not None:
                module._nexus_act = kind
                module.forward = types.MethodType(_mlp_forward, module)
                counts["mlp"] += 1
    return counts


def varlen_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, dropout: float = 0.0,
                     scaling: float | None = None, is_causal: bool | None = None, **kwargs: Any) -> tuple[Any, None]:
    """transformers' attention interface: (batch, heads, tokens, head_dim) in, (batch, tokens,
    heads, head_dim) out. With `cu_seq_lens_q` (one packed row: example i is tokens cu[i]:cu[i+1])
    each example is its own causal SDPA call; otherwise transformers' SDPA path."""
    import torch
    import torch.nn.functional as F
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cu = kwargs.get("cu_seq_lens_q")
    if cu is None or query.shape[0] != 1 or kwargs.get("cu_seq_lens_k") is not None and kwargs["cu_seq_lens_k"] is not cu:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    bounds = cu.tolist() if hasattr(cu, "tolist") else list(cu)
    gqa = key.shape[1] != query.shape[1]
    p = dropout if module.training else 0.0
    parts = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end <= start:
            continue
        parts.append(F.scaled_dot_product_attention(
            query[:, :, start:end], key[:, :, start:end], value[:, :, start:end], dropout_p=p, is_causal=True,
            scale=scaling, enable_gqa=gqa).transpose(1, 2))
    return (parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)), None


def varlen_reason(model_dir: Any, config: Any) -> str | None:
    """Why packed rows of this model and job cannot attend per example (None: they can)."""
    from nexus.modelfiles import hf_config

    if config.training.packing != "padding_free":
        return "the batches are padded, not packed"
    hf = hf_config(str(model_dir))
    kind = hf.get("model_type")
    if kind not in VARLEN_TYPES:
        return f"{kind!r} is not an architecture known to attend as plain causal attention"
    if hf.get("attn_logit_softcapping"):
        return "its attention logits are soft-capped"
    window = hf.get("sliding_window")
    if window and hf.get("use_sliding_window", True) and int(window) < config.training.max_seq_length:
        return f"its sliding window ({window}) is shorter than max_seq_length"
    return None


@functools.cache
def register_attention() -> str:
    """Registers `varlen_attention` (and transformers' SDPA mask for it) under ATTENTION."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ATTENTION, varlen_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, sdpa_mask)
    return ATTENTION
