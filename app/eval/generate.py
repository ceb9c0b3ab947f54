"""Batched generation and teacher-forced loss for an evaluation set.

Generation: prompts rendered through the chat template with the generation prompt, cut to their last
`cutoff_len` tokens, sorted by length (so a batch pads little), LEFT-padded, and generated together by
transformers' `generate`, which stops each row at its own end-of-turn token while the others go on.
Loss: each prompt + reference rendered and masked as in training (app.data.render: the assistant turns),
right-padded, one forward pass per batch; the negative log-likelihood of the masked tokens, summed per row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from app.data.render import render, tokenize_sft
from app.eval.loading import LoadedModel
from app.eval.rows import EvalRow

# End-of-turn tokens of common chat templates: a row stops at any of them that the vocabulary has.
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>")


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # stop | length | cancelled


def prompt_ids(loaded: LoadedModel, rows: Sequence[EvalRow], cutoff_len: int) -> tuple[list[str], list[list[int]]]:
    """The rendered prompt text of each row and its token ids (the last `cutoff_len`)."""
    tokenizer = loaded.tokenizer
    texts = [render(tokenizer, row.messages, row.tools, generation=True) for row in rows]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    return texts, [ids[-cutoff_len:] for ids in encoded]


def stop_ids(tokenizer: Any, model: Any = None) -> list[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids |= set(configured if isinstance(configured, list) else [configured])
    vocab = tokenizer.get_vocab()
    ids |= {vocab[t] for t in END_OF_TURN if t in vocab}
    return sorted(i for i in ids if i is not None)


def batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Row indices grouped into batches of similar length (longest first: memory trouble shows at once)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


class _StopWhen:
    """A StoppingCriteria that ends the whole batch when the run is asked to stop."""

    def __init__(self, should_stop: Callable[[], bool]):
        self.should_stop = should_stop

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        return torch.full((input_ids.shape[0],), bool(self.should_stop()), dtype=torch.bool,
                          device=input_ids.device)


def generate_batch(loaded: LoadedModel, ids: list[list[int]], max_new_tokens: int, temperature: float = 0.0,
                   top_p: float = 1.0, should_stop: Callable[[], bool] | None = None) -> list[Completion]:
    """Answers for a batch of prompt token ids, generated together (left-padded)."""
    if loaded.backend == "llama_cpp":
        return [_llama_cpp_one(loaded, row, max_new_tokens, temperature, top_p) for row in ids]
    import torch
    from transformers import GenerationConfig, StoppingCriteriaList

    tokenizer, model = loaded.tokenizer, loaded.model
    pad = tokenizer.pad_token_id
    width = max(len(row) for row in ids)
    input_ids = torch.tensor([[pad] * (width - len(row)) + row for row in ids], device=loaded.device)
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in ids], device=loaded.device)
    stops = stop_ids(tokenizer, model)
    sample = temperature > 0
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=sample, eos_token_id=stops, pad_token_id=pad,
                              **({"temperature": temperature, "top_p": top_p} if sample else {}))
    criteria = StoppingCriteriaList([_StopWhen(should_stop)]) if should_stop else None
    with torch.no_grad():
        out = model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config,
                             stopping_criteria=criteria)
    cancelled = bool(should_stop and should_stop())
    results = []
    for row, new in zip(ids, out[:, width:].tolist()):
        end = next((i for i, token in enumerate(new) if token in stops), None)
        kept = new if end is None else new[:end]
        reason = "stop" if end is not None else "cancelled" if cancelled else "length"
        text = tokenizer.decode(kept, skip_special_tokens=True).strip()
        results.append(Completion(text, len(row), len(kept), reason))
    return results


def _llama_cpp_one(loaded: LoadedModel, ids: list[int], max_new_tokens: int, temperature: float,
                   top_p: float) -> Completion:
    """One answer from llama.cpp (its Python binding decodes one sequence at a time)."""
    llm = loaded.model
    llm.reset()
    stops = set(stop_ids(loaded.tokenizer))
    kept: list[int] = []
    reason = "length"
    for token in llm.generate(ids, temp=temperature, top_p=top_p, top_k=0 if temperature > 0 else 1, reset=True):
        if token in stops or token == llm.token_eos():
            reason = "stop"
            break
        kept.append(token)
        if len(kept) >= max_new_tokens:
            break
    text = loaded.tokenizer.decode(kept, skip_special_tokens=True).strip()
    return Completion(text, len(ids), len(kept), reason)


def loss_rows(loaded: LoadedModel, rows: Sequence[EvalRow], cutoff_len: int) -> list[dict[str, list[int]]]:
    """Each row's conversation (prompt + reference) tokenized with its assistant-turn mask, as in training."""
    out = []
    for row in rows:
        tokenized, _ = tokenize_sft([{"messages": row.conversation, "tools": row.tools}], loaded.tokenizer,
                                    cutoff_len)
        out.append(tokenized[0] if tokenized else {"input_ids": [], "completion_mask": []})
    return out


def nll_batch(loaded: LoadedModel, tokenized: list[dict[str, list[int]]]) -> list[tuple[float, int]]:
    """(summed negative log-likelihood, token count) of the masked tokens of each row: teacher forcing."""
    import torch

    results: list[tuple[float, int]] = [(0.0, 0)] * len(tokenized)
    live = [i for i, row in enumerate(tokenized) if sum(row["completion_mask"][1:]) > 0]
    if not live:
        return results
    if loaded.backend == "llama_cpp":
        from app.export import llamacpp

        for i in live:
            ids = tokenized[i]["input_ids"]
            logits = torch.from_numpy(llamacpp.logits(loaded.model, ids)).float()
            mask = torch.tensor(tokenized[i]["completion_mask"][1:])
            results[i] = _masked_nll(logits[:-1], torch.tensor(ids[1:]), mask)
        return results
    width = max(len(tokenized[i]["input_ids"]) for i in live)
    pad = loaded.tokenizer.pad_token_id
    ids = torch.tensor([tokenized[i]["input_ids"] + [pad] * (width - len(tokenized[i]["input_ids"])) for i in live],
                       device=loaded.device)
    attention = torch.tensor([[1] * len(tokenized[i]["input_ids"]) + [0] * (width - len(tokenized[i]["input_ids"]))
                              for i in live], device=loaded.device)
    target_mask = torch.tensor([tokenized[i]["completion_mask"] + [0] * (width - len(tokenized[i]["input_ids"]))
                                for i in live], device=loaded.device)
    with torch.no_grad():
        logits = loaded.model(input_ids=ids, attention_mask=attention).logits.float()
    for k, i in enumerate(live):
        results[i] = _masked_nll(logits[k, :-1], ids[k, 1:], target_mask[k, 1:])
    return results


def _masked_nll(logits: Any, targets: Any, mask: Any) -> tuple[float, int]:
    import torch.nn.functional as F

    losses = F.cross_entropy(logits, targets, reduction="none")
    keep = mask.bool()
    return float(losses[keep].sum()), int(keep.sum())
