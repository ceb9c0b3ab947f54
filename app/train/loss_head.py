"""The language-model head and loss, computed only where there is a label to predict.

A causal LM's head projects every position onto the whole vocabulary (49k-150k logits per token), yet
SFT scores only the completion tokens: the prompt, the system text and the padding carry no label. So:

- CPU (and any device without Triton), frozen head (LoRA, QLoRA, freeze), one process, a model whose
  head is a plain projection (FAMILIES): the decoder's hidden states at the label positions go through
  the head in chunks of CHUNK_LOGIT_BYTES of logits, and each chunk's gradient with respect to the
  hidden states (softmax minus one-hot, times the head's weight) is computed right there, in the
  forward pass; the backward only scales it. The logits of the label tokens are never whole: the step
  does the same products as below (one head projection forward, one back), in less memory. The same
  scheme as Liger's fused linear cross-entropy, whose kernels are Triton-only (no CPU), written here
  in torch.
- Otherwise on CPU: the model is asked for logits at the label positions only, through transformers'
  own `logits_to_keep` (an index tensor): the hidden states of those positions are selected before the
  head, then cross-entropy runs over them.
- CUDA / XPU: TRL's fused LM head (`trl.trainer.utils.add_fused_lm_head`, Triton) projects, in tiles,
  only the positions whose label is not -100, without ever holding the [tokens, vocab] logits. The
  head is installed with the log-probabilities alone: no entropy / top-1 side outputs.

Either way the loss is the one the model's own `labels=` path computes: the sum of the token
cross-entropies divided by `num_items_in_batch` (the label tokens of the whole accumulated batch), or
by this batch's label tokens when the Trainer does not pass it. tests/test_train_speed.py holds both
against the full-logit loss.

Measured on CPU (SmolLM2-135M, LoRA r8 q/v, one flattened batch of 1,000 tokens, 60% of them
completion, one thread, CPU seconds per step): full logits 10.7; TRL's fused head with entropy and
accuracy (its SFT default, which on CPU scores every position) 13.3; label positions only 9.96.
Chunked (one 512-token row, 410 labels, packed frozen linears): the same loss and gradient norm to 7
digits, the same CPU time, 150 MB lower peak RSS (2,723 -> 2,573 MB).
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F


def fused_head_available(device: torch.device | str) -> bool:
    """True where TRL's fused head compacts to the label positions (its Triton kernels)."""
    from trl.kernels.chunked_logprob import _use_triton

    return _use_triton(torch.device(device))


def accepts_logits_to_keep(base_model: torch.nn.Module) -> bool:
    """The causal LM (not its PEFT wrapper) takes `logits_to_keep`, as every transformers LM does."""
    return "logits_to_keep" in inspect.signature(base_model.forward).parameters


def label_columns(labels: torch.Tensor) -> torch.Tensor:
    """Positions (of the inputs) whose next token has a label in any row: what the head must score."""
    return (labels[:, 1:] != -100).any(dim=0).nonzero().squeeze(1)


def completion_loss(model, inputs: dict, num_items_in_batch=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, label tokens of this batch) with logits only at the label positions (any device).

    `inputs` holds input_ids, labels and either position_ids (padding-free) or attention_mask."""
    labels = inputs["labels"]
    columns = label_columns(labels)
    model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
    logits = model(**model_inputs, use_cache=False, logits_to_keep=columns).logits  # [batch, kept, vocab]
    targets = labels[:, columns + 1]
    n_labels = (targets != -100).sum()
    total = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum")
    divisor = num_items_in_batch if num_items_in_batch is not None else n_labels.clamp(min=1)
    return total / torch.as_tensor(divisor, device=total.device), n_labels


CHUNK_LOGIT_BYTES = 32 << 20  # fp32 logits of one chunk: 170 label tokens of a 49k vocabulary
# Plain decoders, each tested (tests/test_shared_prompt.py): logits = lm_head(hidden), no softcap or scale
FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "phi3")


def chunk_rows(vocab_size: int) -> int:
    """Label tokens per chunk of the chunked head: CHUNK_LOGIT_BYTES of fp32 logits (at least one)."""
    return max(1, CHUNK_LOGIT_BYTES // (4 * vocab_size))


def planned_head_reason(model_type: str | None, head_trains: bool, processes: int = 1) -> str | None:
    """What `chunked_head_reason` will say, from what is known before the model loads (the memory
    estimate asks this): None when the chunked head will compute the loss, else why not."""
    reasons = [
        (processes > 1, "several processes (the decoder is called outside DDP's forward)"),
        (head_trains, "the output head trains"),
        (model_type not in FAMILIES, f"model type {model_type!r} may scale or cap its logits"),
    ]
    return next((why for hit, why in reasons if hit), None)


def chunked_head_reason(base_model: torch.nn.Module, processes: int = 1) -> str | None:
    """None when the chunked head (`chunked_completion_loss`) computes this model's loss, else why not."""
    head = base_model.get_output_embeddings() if hasattr(base_model, "get_output_embeddings") else None
    linear = isinstance(head, torch.nn.Linear)
    if processes == 1 and not linear:
        return "the output head is not a linear layer"
    trains = linear and any(p.requires_grad for p in head.parameters())
    why = planned_head_reason(getattr(getattr(base_model, "config", None), "model_type", None), trains, processes)
    return why if why or hasattr(base_model, "get_decoder") else "no decoder to call apart from the head"


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Sum of the token cross-entropies of `head(hidden)` against `targets` (-100: no label), chunk by
    chunk; the gradient of `hidden` is made in the forward pass (the head is frozen: nothing else needs
    one), so no chunk's logits outlive it."""

    @staticmethod
    def forward(ctx, hidden, targets, head, chunk_rows):
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device) if ctx.needs_input_grad[0] else None
        weight = head.weight.float()
        for start in range(0, hidden.shape[0], chunk_rows):
            stop = start + chunk_rows
            logits = head(hidden[start:stop]).float()  # [chunk, vocab]
            part = targets[start:stop]
            valid = (part != -100).unsqueeze(1)
            index = part.clamp(min=0).unsqueeze(1)
            lse = torch.logsumexp(logits, dim=1, keepdim=True)
            total += ((lse - logits.gather(1, index)) * valid).sum()
            if grad is not None:
                probs = logits.sub_(lse).exp_()  # softmax, in place
                probs.scatter_add_(1, index, torch.full(index.shape, -1.0, device=probs.device))  # minus one-hot
                probs.mul_(valid)
                with torch.autocast(hidden.device.type, enabled=False):  # fp32 into fp32, under bf16 too
                    torch.mm(probs, weight, out=grad[start:stop])
        ctx.save_for_backward(grad)
        ctx.dtype = hidden.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total):
        (grad,) = ctx.saved_tensors
        return (grad * grad_total).to(ctx.dtype), None, None, None


def chunked_completion_loss(model, inputs: dict, num_items_in_batch=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, label tokens of this batch) as `completion_loss`, through a frozen head in chunks (CPU)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    labels = inputs["labels"]
    columns = label_columns(labels)
    model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
    hidden = base.get_decoder()(**model_inputs, use_cache=False).last_hidden_state[:, columns]
    targets = labels[:, columns + 1]
    n_labels = (targets != -100).sum()
    head = base.get_output_embeddings()
    total = _ChunkedCrossEntropy.apply(hidden.flatten(0, 1), targets.flatten(), head, chunk_rows(head.weight.shape[0]))
    divisor = num_items_in_batch if num_items_in_batch is not None else n_labels.clamp(min=1)
    return total / torch.as_tensor(divisor, device=total.device), n_labels


def fused_completion_loss(model, inputs: dict, num_items_in_batch=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, label tokens) through TRL's fused head (installed on the model beforehand)."""
    outputs = model(**inputs, use_cache=False, fused_lm_head=True, num_items_in_batch=num_items_in_batch)
    return outputs.loss, outputs.label_mask.sum()


def install_log_prob_head(base_model: torch.nn.Module) -> None:
    """TRL's fused head on the base model, computing log-probabilities only (no entropy, no top-1)."""
    from trl.trainer.utils import add_fused_lm_head

    add_fused_lm_head(base_model, outputs=("log_probs",))


def kept_log_probs(forward, labels: torch.Tensor, **inputs) -> torch.Tensor:
    """Per-token log-probabilities of the labels ([batch, seq - 1], zero where the label is -100), as TRL's
    fused head returns them, from logits at the label positions only (`logits_to_keep`).

    On CPU this beats the chunked fused head: that one recomputes every logit tile in its backward (one
    more vocabulary projection per token) and folds each tile in several elementwise passes; here the
    kept logits ([label tokens, vocab], float32) are held until the backward instead."""
    columns = label_columns(labels)
    logits = forward(**inputs, use_cache=False, logits_to_keep=columns).logits  # [batch, kept, vocab]
    targets = labels[:, columns + 1]
    kept = -F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="none")
    out = logits.new_zeros(labels.shape[0], labels.shape[1] - 1, dtype=torch.float32)
    return out.index_copy(1, columns, kept.view_as(targets))
