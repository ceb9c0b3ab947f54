"""The language-model head and loss, computed only where there is a label to predict.

A causal LM's head projects every position onto the whole vocabulary (49k-150k logits per token), yet
SFT scores only the completion tokens: the prompt, the system text and the padding carry no label. So:

- CPU (and any device without Triton): the model is asked for logits at the label positions only,
  through transformers' own `logits_to_keep` (an index tensor): the hidden states of those positions
  are selected before the head, then cross-entropy runs over them. Plain indexing, no hand-written math.
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
