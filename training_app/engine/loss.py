"""The training loss computed at supervised positions only, in chunks of the vocabulary-wide
logits. Django-free.

A causal LM's loss is usually taken from logits for every position: for a 49k-token vocabulary
the fp32 logits, their log-softmax and their gradient are the largest tensors of a LoRA step, and
most positions (the prompt, the padding) have label -100 anyway. `LinearCrossEntropy` takes the
final hidden states at the supervised positions only, the head's weight and the targets; it forms
the logits `CHUNK_ELEMENTS // vocab` rows at a time and turns each chunk into its loss and, when
training, its gradient at once (the chunk's logits are then dropped). Peak memory grows with one
chunk times the vocabulary, not with the batch's tokens times the vocabulary.

`SupervisedLoss` plugs it into a transformers model: the model runs with `logits_to_keep=1` (its
head computes one position per row), a forward hook on its decoder takes the final hidden states
(after the last norm: the head's input), and the loss is the plain path's: the same shifted labels,
the sum over supervised tokens divided by `num_items_in_batch` when the Trainer gives it
(gradient accumulation), else their mean.
"""
from __future__ import annotations

import functools
from typing import Any

from training_app.engine.data import IGNORE_INDEX

# elements of one chunk's fp32 logits (64 MiB): 341 rows for a 49k vocabulary, 130 for 128k
CHUNK_ELEMENTS = 1 << 24
MIN_CHUNK_ROWS = 64
# model types whose causal-LM head is exactly lm_head(decoder output), with optional final softcapping
# (Gemma 2 and 3); another model (a logit scale, a MoE's auxiliary loss, remote code) keeps the plain loss
CHUNKED_MODEL_TYPES = {"llama", "mistral", "qwen2", "qwen3", "phi3", "phi", "gemma", "gemma2", "gemma3_text"}


def chunk_rows(vocab_size: int) -> int:
    return max(MIN_CHUNK_ROWS, CHUNK_ELEMENTS // max(vocab_size, 1))


@functools.cache
def _function():  # noqa: ANN202 - the class needs torch, which this module imports lazily
    import torch

    class LinearCrossEntropy(torch.autograd.Function):
        """sum_i -log softmax(softcap(hidden_i @ weight.T + bias))[target_i], chunk by chunk.

        The loss is a scalar at the end of the graph, so its gradient is known up to the factor
        the backward pass brings: each chunk's gradient is formed in the forward pass from the
        logits already there (a second pass over the head would cost one more matmul of the
        head's size), and backward only scales what was kept (n x hidden, and the head's weight
        and bias when they train)."""

        @staticmethod
        def forward(ctx, hidden, weight, bias, targets, rows, softcap, with_grad):  # noqa: ANN001, ANN205
            need_hidden, need_weight, need_bias = (with_grad and bool(x) for x in ctx.needs_input_grad[:3])
            grad_hidden = torch.empty_like(hidden) if need_hidden else None
            grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
            grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_bias else None
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            for start in range(0, hidden.shape[0], rows):
                part = slice(start, start + rows)
                logits, tanh = _logits(hidden[part], weight, bias, softcap)
                lse = torch.logsumexp(logits, dim=-1)
                total += (lse - logits.gather(1, targets[part, None]).squeeze(1)).sum()
                if not (need_hidden or need_weight or need_bias):
                    continue
                # d loss / d logits = softmax - one-hot, formed in place of the logits
                grad = logits.sub_(lse[:, None]).exp_()
                del logits
                grad[torch.arange(grad.shape[0], device=grad.device), targets[part]] -= 1
                if tanh is not None:  # d (cap * tanh(z / cap)) / dz = 1 - tanh^2
                    grad.mul_(1 - tanh.square_())
                if need_hidden:
                    grad_hidden[part] = grad.to(weight.dtype) @ weight
                if need_weight:
                    grad_weight += grad.T.to(hidden.dtype) @ hidden[part]
                if need_bias:
                    grad_bias += grad.sum(0)
            ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
            ctx.dtypes = weight.dtype, None if bias is None else bias.dtype
            return total

        @staticmethod
        def backward(ctx, grad_total):  # noqa: ANN001, ANN205
            grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
            weight_dtype, bias_dtype = ctx.dtypes
            return (None if grad_hidden is None else grad_hidden * grad_total.to(grad_hidden.dtype),
                    None if grad_weight is None else (grad_weight * grad_total).to(weight_dtype),
                    None if grad_bias is None else (grad_bias * grad_total).to(bias_dtype), None, None, None, None)

    return LinearCrossEntropy


def _logits(hidden: Any, weight: Any, bias: Any, softcap: float | None) -> tuple[Any, Any]:
    """One chunk's fp32 logits (softcapped when the model caps them), and the tanh the cap used."""
    import torch

    logits = torch.nn.functional.linear(hidden, weight, bias).float()
    if not softcap:
        return logits, None
    tanh = logits.div_(softcap).tanh_()
    return tanh * softcap, tanh


def linear_cross_entropy(hidden: Any, weight: Any, bias: Any, targets: Any, *, rows: int | None = None,
                         softcap: float | None = None) -> Any:
    """The summed cross-entropy of `hidden @ weight.T + bias` (n x vocab) against `targets` (n),
    never holding more than `rows` rows of logits."""
    import torch

    with_grad = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (hidden, weight, bias))
    return _function().apply(hidden, weight, bias, targets, rows or chunk_rows(weight.shape[0]), softcap, with_grad)


def causal_lm_loss(hidden_states: Any, labels: Any, head: Any, *, num_items_in_batch: Any = None,
                   softcap: float | None = None, rows: int | None = None) -> Any:
    """transformers' ForCausalLMLoss over `head(hidden_states)`, computed at supervised positions
    only: position i predicts labels[i + 1]; -100 is not learned (the prompt, padding, the first
    token of each packed example); the sum over learned tokens over `num_items_in_batch`, or
    their mean without it."""
    shifted = labels[:, 1:]
    keep = shifted != IGNORE_INDEX
    total = linear_cross_entropy(hidden_states[:, :-1][keep], head.weight, head.bias, shifted[keep], rows=rows,
                                 softcap=softcap)
    if num_items_in_batch is None:
        return total / keep.sum()
    if hasattr(num_items_in_batch, "to"):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


def plain_loss_reason(model: Any) -> str | None:
    """Why the chunked loss does not apply to this (PEFT) model, or None when it does."""
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config
    if config.model_type not in CHUNKED_MODEL_TYPES:
        return f"the {config.model_type} architecture is not one whose head the chunked loss reproduces"
    for name in ("logit_scale", "logits_scaling"):
        if getattr(config, name, None) not in (None, 1, 1.0):
            return f"the model scales its logits ({name})"
    if type(base.get_output_embeddings()) is not torch.nn.Linear:
        return "its output layer is adapted or wrapped (not a plain linear layer)"
    return None


class SupervisedLoss:
    """A Trainer's `compute_loss_func` that computes the loss from the decoder's output at
    supervised positions. The model must be called with `extra_inputs` (its head then computes
    the last position only)."""

    extra_inputs = {"logits_to_keep": 1}

    def __init__(self, model: Any, rows: int | None = None):
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.head = base.get_output_embeddings()
        self.softcap = getattr(base.config, "final_logit_softcapping", None)
        self.rows = rows
        self._hidden: Any = None
        self._hook = base.get_decoder().register_forward_hook(self._keep)

    def _keep(self, module: Any, args: Any, output: Any) -> None:
        self._hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]

    def __call__(self, outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
        hidden, self._hidden = self._hidden, None
        if hidden is None:
            raise RuntimeError("the model ran without its decoder's output reaching the loss")
        return causal_lm_loss(hidden, labels, self.head, num_items_in_batch=num_items_in_batch, softcap=self.softcap,
                              rows=self.rows)

    def remove(self) -> None:
        self._hook.remove()
