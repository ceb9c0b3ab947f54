"""DPO with the prompt computed once per pair: one row [prompt, chosen, rejected] instead of two rows.

TRL's DPOTrainer runs every pair as two padded rows, prompt + chosen and prompt + rejected, through the
policy (forward and backward) and through the reference. With a chat template the prompt (system text,
user turn, the assistant header) is often most of each row, so it is computed four times per step and
the shorter answer is padded to the longer. Here the fused-LM-head forward that TRL calls with such a
batch is wrapped: each pair becomes one row

    prompt[:-1] | prompt[-1], chosen | prompt[-1]', rejected          positions 0..P-1, P.., P-1, P..

in which the chosen tokens see the prompt and themselves, and the rejected tokens see the prompt, a copy
of the prompt's last token (at its position, P-1) and themselves, never the chosen tokens: a custom 4D
attention mask, which transformers passes to the attention as it is, with explicit position ids. The
copy lets the hidden state that predicts the first rejected token be a position of its own, so the
fused head scores every label with the ordinary one-position shift. The per-token outputs are then put
back where TRL's two-row layout has them, so every DPO loss, the reference log-probs (live or
precomputed), WPO weights and the logged rewards are computed by TRL's own code, unchanged.
Mathematically each chosen/rejected token sees exactly the context it sees in its own row, so the
log-probabilities, the loss and the gradients are the same up to float rounding
(tests/test_shared_prompt.py); padding and the duplicated prompt go away.

Where the row layout is not TRL's (prompt lengths differ, the prompt tokens differ, e.g. after
`keep_end` truncation; padding not only at the end; extra model inputs), the call goes to the original
forward unchanged. Models: plain-text decoders whose attention honours a custom 4D mask and whose
positions come from `position_ids` (rotary) only; not recurrent / linear-attention hybrids (their
mixers ignore the mask and would carry the chosen tokens into the rejected ones), not ALiBi models,
not prompt-learning PEFT (virtual tokens). On CPU only for now: on a GPU a custom mask rules out the
FlashAttention kernels, and the trade has not been measured there.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass

import torch

from app.train import loss_head

log = logging.getLogger(__name__)

# Decoder families whose attention takes a custom 4D mask and rotary positions from `position_ids`;
# each is held against the two-row forward in tests/test_shared_prompt.py. The same plain decoders as
# the chunked CPU loss head's.
FAMILIES = loss_head.FAMILIES
ATTENTION = ("sdpa", "eager")  # FlashAttention / flex build their own masks from 2D inputs
PER_TOKEN = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")
# inputs the wrapped call may carry (None-valued ones are dropped first); anything else: original path
ACCEPTED = {"input_ids", "attention_mask", "labels", "use_cache", "fused_lm_head"}
PACKED_ROW_TOKENS = 1024  # pairs x cutoff_len kept in one micro-batch on CPU (see micro_batch_arguments)
KEPT_LOGITS_MAX = 64 * 2**20  # kept logits (float32, 256 MB) beyond which the chunked fused head runs instead


def unsupported_reason(model: torch.nn.Module, device: torch.device | str) -> str | None:
    """Why the shared-prompt forward is not used for this model, or None when it is."""
    config = model.config
    if torch.device(device).type != "cpu":
        return "not on CPU (unmeasured on GPU, and a custom mask rules out FlashAttention kernels)"
    if config.get_text_config() is not config or getattr(config, "is_encoder_decoder", False):
        return f"{type(model).__name__} is not a plain text decoder"
    if config.model_type not in FAMILIES:
        return f"model type {config.model_type!r} is not one the packed mask is tested on"
    if getattr(config, "_attn_implementation", None) not in ATTENTION:
        return f"attention {config._attn_implementation!r} builds its own mask"
    if "position_ids" not in inspect.signature(type(model).forward).parameters:
        return "the model takes no position_ids"
    return None


@dataclass
class Packed:
    """The pairs in one row, and where each per-token output of TRL's two-row layout comes from."""

    input_ids: torch.Tensor  # [1, T]
    position_ids: torch.Tensor  # [1, T]
    allowed: torch.Tensor  # [1, 1, T, T] bool: query i may attend key j
    labels: torch.Tensor  # [1, T]
    source: torch.Tensor  # [2 * pairs, L - 1] index into the packed row's outputs ([T - 1])
    valid: torch.Tensor  # [2 * pairs, L - 1] bool: the output position has a label


def _span(labels: torch.Tensor, attention: torch.Tensor) -> tuple[int, int] | None:
    """(prompt length, completion length) of one of TRL's rows: labels on one run of positions that ends
    where the row's real tokens end (right padding only), or None."""
    positions = (labels != -100).nonzero().flatten().tolist()
    length = int(attention.sum())
    if not positions or not bool(attention[:length].all()):
        return None
    start, end = positions[0], positions[-1] + 1
    if end - start != len(positions) or end != length or start < 1:
        return None
    return start, end - start


def pack(input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> Packed | None:
    """TRL's [chosen rows; rejected rows] batch as one row holding every pair (prompt, chosen, rejected,
    pair after pair, no padding; each pair sees only itself), or None when its layout differs."""
    rows, width = input_ids.shape
    if rows % 2 or attention_mask.shape != input_ids.shape or labels.shape != input_ids.shape:
        return None
    pairs = rows // 2
    spans = []
    for b in range(pairs):
        chosen, rejected = _span(labels[b], attention_mask[b]), _span(labels[b + pairs], attention_mask[b + pairs])
        if chosen is None or rejected is None or chosen[0] != rejected[0]:
            return None
        prompt = chosen[0]
        if not torch.equal(input_ids[b, :prompt], input_ids[b + pairs, :prompt]):
            return None
        spans.append((prompt, chosen[1], rejected[1]))
    length = sum(p + c + 1 + r for p, c, r in spans)
    device = input_ids.device
    ids = input_ids.new_zeros(1, length)
    positions = torch.zeros(1, length, dtype=torch.long, device=device)
    pair = torch.zeros(length, dtype=torch.long, device=device)
    branch = torch.zeros(length, dtype=torch.long, device=device)  # 0 shared prompt, 1 chosen, 2 rejected
    packed_labels = torch.full((1, length), -100, dtype=labels.dtype, device=device)
    source = torch.zeros(rows, width - 1, dtype=torch.long, device=device)
    valid = torch.zeros(rows, width - 1, dtype=torch.bool, device=device)
    at = 0  # where the pair starts in the packed row
    for b, (p, c, r) in enumerate(spans):
        cut = at + p + c  # the chosen row's real tokens end; the rejected part starts here
        ids[0, at:cut] = input_ids[b, :p + c]
        ids[0, cut] = input_ids[b, p - 1]  # the prompt's last token again, for the rejected branch
        ids[0, cut + 1:cut + 1 + r] = input_ids[b + pairs, p:p + r]
        positions[0, at:cut] = torch.arange(p + c, device=device)
        positions[0, cut:cut + 1 + r] = torch.arange(p - 1, p + r, device=device)
        pair[at:cut + 1 + r] = b
        branch[at + p - 1:cut] = 1  # the chosen branch, with the prompt's last token
        branch[cut:cut + 1 + r] = 2  # the rejected branch, with its copy of it
        packed_labels[0, at + p:cut] = labels[b, p:p + c]
        packed_labels[0, cut + 1:cut + 1 + r] = labels[b + pairs, p:p + r]
        # output k of the packed row predicts its token k + 1
        source[b, p - 1:p + c - 1] = torch.arange(at + p - 1, cut - 1, device=device)
        valid[b, p - 1:p + c - 1] = True
        source[b + pairs, p - 1:p - 1 + r] = torch.arange(cut, cut + r, device=device)
        valid[b + pairs, p - 1:p - 1 + r] = True
        at = cut + 1 + r
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    same_pair = pair[:, None] == pair[None, :]
    allowed = causal & same_pair & ((branch[None, :] == 0) | (branch[None, :] == branch[:, None]))
    return Packed(ids, positions, allowed[None, None], packed_labels, source, valid)


def unpack(packed: Packed, value: torch.Tensor) -> torch.Tensor:
    """A per-token output of the packed row ([1, T - 1]) in TRL's two-row layout (zero off-label)."""
    gathered = value.reshape(-1)[packed.source]
    return torch.where(packed.valid, gathered, torch.zeros((), dtype=value.dtype, device=value.device))


def _mask(packed: Packed, model: torch.nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """The mask in the form the attention takes it as is: boolean for SDPA, additive for eager."""
    if model.config._attn_implementation == "sdpa":
        return packed.allowed
    blocked = torch.zeros(packed.allowed.shape, dtype=dtype, device=packed.allowed.device)
    return blocked.masked_fill(~packed.allowed, torch.finfo(dtype).min)


def _logits_fit(packed: Packed, model: torch.nn.Module) -> bool:
    kept = int((packed.labels[:, 1:] != -100).any(dim=0).sum()) * packed.labels.size(0)
    return kept * model.get_output_embeddings().weight.size(0) <= KEPT_LOGITS_MAX


def wrap_forward(model: torch.nn.Module, logits_head: bool = True) -> None:
    """Route the model's fused-head calls with TRL's pair layout through one packed row per pair.

    The packed row's labels are scored from logits at the label positions (`logits_head`, where they fit
    in KEPT_LOGITS_MAX), else by TRL's chunked fused head, which also gives WPO's log_sum_sq_probs."""
    from trl.trainer.utils import FusedCausalLMOutput

    forward = model.forward
    window = getattr(model.config, "sliding_window", None)

    def shared_prompt_forward(*args, **kwargs):
        given = {k: v for k, v in kwargs.items() if v is not None}
        packed = None
        if not args and kwargs.get("fused_lm_head") and set(given) <= ACCEPTED and "attention_mask" in given:
            packed = pack(given["input_ids"], given["attention_mask"], given["labels"])
        if packed is None or (window and packed.input_ids.size(1) > window):
            return forward(*args, **kwargs)
        dtype = model.get_input_embeddings().weight.dtype
        inputs = dict(input_ids=packed.input_ids, attention_mask=_mask(packed, model, dtype),
                      position_ids=packed.position_ids)
        label_mask = given["labels"][:, 1:] != -100
        if logits_head and _logits_fit(packed, model):
            log_probs = unpack(packed, loss_head.kept_log_probs(forward, packed.labels, **inputs))
            zeros = torch.zeros_like(log_probs)  # the extras DPO's metrics read (dropped by FastDPOMixin)
            return FusedCausalLMOutput(loss=-log_probs.sum() / label_mask.sum().clamp(min=1), log_probs=log_probs,
                                       entropy=zeros, mean_logits=zeros, is_top1=zeros.bool(), label_mask=label_mask)
        out = forward(**inputs, labels=packed.labels, fused_lm_head=True, use_cache=False)
        fields = {name: unpack(packed, getattr(out, name)) for name in PER_TOKEN if getattr(out, name) is not None}
        # The same label tokens as the two rows, so the fused head's loss (their mean) is unchanged
        return FusedCausalLMOutput(loss=out.loss, label_mask=label_mask, **fields)

    shared_prompt_forward.two_rows = forward
    model.forward = shared_prompt_forward


def uninstall(model: torch.nn.Module) -> None:
    """Put back the two-row forward (tests and benchmarks compare both paths on one model)."""
    two_rows = getattr(model.forward, "two_rows", None)
    if two_rows is not None:
        model.forward = two_rows


def micro_batch_arguments(job, model: torch.nn.Module, arguments: dict) -> dict:
    """Trainer arguments for DPO on CPU with packed pairs: several pairs per micro-batch, in one row.

    app.train.batching runs one pair per micro-batch on CPU (two padded rows per pair would waste
    compute on padding, and attention is quadratic in a flattened batch's length). Packed pairs have no
    padding, and bigger matrix products run faster per token on CPU: the pairs of a batch stay together
    while `pairs x cutoff_len` stays within PACKED_ROW_TOKENS (the packed row's length is at most about
    that for answers shorter than their prompt). Same update: DPO averages over the pairs of the batch.
    Measured (SmolLM2-135M, LoRA r8 q/v, bench pairs of about 60 packed tokens, CPU s per pair): 1 pair
    per micro-batch 0.95, 2 pairs 0.83, 4 pairs 0.71."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # under PEFT's wrapper
    if unsupported_reason(base, "cuda" if torch.cuda.is_available() else "cpu"):
        return arguments
    keep = pairs_per_micro_batch(job)
    total = arguments["per_device_train_batch_size"] * arguments["gradient_accumulation_steps"]
    return arguments | dict(per_device_train_batch_size=keep, per_device_eval_batch_size=keep,
                            gradient_accumulation_steps=total // keep)


def pairs_per_micro_batch(job) -> int:
    """Pairs of a batch kept in one packed row on CPU (what the memory estimate sizes too)."""
    pairs = job.per_device_train_batch_size
    return max(k for k in range(1, pairs + 1) if pairs % k == 0 and (k == 1 or k * job.cutoff_len <= PACKED_ROW_TOKENS))


def install(models: list[torch.nn.Module | None], device: torch.device | str, logits_head: bool = True) -> bool:
    """Wrap each model (policy base, reference) where supported; True when the shared-prompt path is on."""
    present = [m for m in models if m is not None]
    reasons = [reason for m in present if (reason := unsupported_reason(m, device))]
    if reasons:
        log.info("DPO: chosen and rejected as two rows each (%s)", reasons[0])
        return False
    for model in present:
        wrap_forward(model, logits_head)
    log.info("DPO: one row per pair, the prompt computed once (shared-prompt attention mask)")
    return True
