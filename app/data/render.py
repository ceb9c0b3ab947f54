"""Rendering examples through the model's chat template, and the token masks SFT trains on.

The loss covers assistant turns only. Which tokens those are is found from the template itself, not from
a table of templates: render the conversation up to turn i with the generation prompt (everything before
the assistant speaks) and up to turn i inclusive; the difference is the assistant's span. It is trained
from its first character through its end-of-turn token(s) (e.g. `<|im_end|>`), without the whitespace a
template puts between turns. Templates that rewrite earlier turns (so a prefix is not a prefix of the
whole) fall back to finding the assistant's content in the full render.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.data.errors import DataError, Problem, cap_problems
from app.data.templates import choose_template, with_thinking
from app.data.templates import names as template_names

Messages = list[dict[str, Any]]

# The generic and family templates by LLaMA-Factory name (texts in app/data/templates/).
BUILTIN_TEMPLATES: dict[str, str] = {name: choose_template(None, name) for name in template_names()}


@dataclass
class RenderStats:
    n_rows: int = 0  # examples given
    n_truncated: int = 0  # examples cut at cutoff_len
    n_dropped: int = 0  # examples left out: no assistant token (after truncation), or too short to train on
    n_tokens: int = 0  # tokens kept


def _model_name(tokenizer: Any) -> str:
    return str(getattr(tokenizer, "name_or_path", "") or "this model")


def resolve_template(tokenizer: Any, template: str | None, enable_thinking: bool = True) -> str:
    """Set and return the chat template: the tokenizer's own (None); a LLaMA-Factory name (the tokenizer's
    own when it is of that family, else the bundled one: app.data.templates); or a .jinja file.
    `enable_thinking=False` writes thinking off into templates that have the switch (qwen3)."""
    where = _model_name(tokenizer)
    names = ", ".join(BUILTIN_TEMPLATES)
    own = tokenizer.chat_template
    if isinstance(own, dict):  # named templates: the default one renders conversations
        own = own.get("default")
    if template is None:
        if not own:
            msg = f"the tokenizer has no chat template: set `template: chatml` (built-ins: {names}) or a .jinja file"
            raise DataError([Problem(where, None, "template", msg)])
        tokenizer.chat_template = with_thinking(own, enable_thinking)
        return tokenizer.chat_template
    if template in BUILTIN_TEMPLATES:
        tokenizer.chat_template = choose_template(own, template, enable_thinking)
        return tokenizer.chat_template
    path = Path(os.path.expanduser(template))
    if path.suffix == ".jinja" or path.is_file():
        if not path.is_file():
            raise DataError([Problem(template, None, "template", "template file not found")])
        tokenizer.chat_template = with_thinking(path.read_text(encoding="utf-8"), enable_thinking)
        return tokenizer.chat_template
    msg = f"unknown template {template!r} (built-ins: {names}; or a path to a .jinja file)"
    raise DataError([Problem(where, None, "template", msg)])


def render(tokenizer: Any, messages: Messages, tools: list[Any] | None = None, generation: bool = False) -> str:
    """The conversation as the template writes it (text, not tokens)."""
    return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=generation)


def assistant_spans(
    tokenizer: Any, messages: Messages, tools: list[Any] | None = None
) -> tuple[str, list[tuple[int, int]]]:
    """The full render and the (start, end) character span of each assistant turn in it."""
    full = render(tokenizer, messages, tools)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], tools, generation=True)
        upto = full if i == len(messages) - 1 else render(tokenizer, messages[: i + 1], tools)
        if full.startswith(upto) and upto.startswith(before) and len(before) >= cursor:
            start, segment = len(before), upto[len(before) :]
            at = segment.find(message["content"]) if message["content"] else -1
            if at >= 0:  # content, then the end-of-turn text without the whitespace that separates turns
                tail = segment[at + len(message["content"]) :]
                end = start + at + len(message["content"]) + len(tail.rstrip())
            else:
                end = start + len(segment.rstrip())
        else:  # the template rewrites history: find the content itself after the previous turn
            start = full.find(message["content"], cursor) if message["content"] else -1
            if start < 0:
                continue
            end = start + len(message["content"])
            end += len(_special_prefix(tokenizer, full[end:]))
        if end > start:
            spans.append((start, end))
            cursor = end
    return full, spans


def _special_prefix(tokenizer: Any, text: str) -> str:
    """The longest special token (e.g. an end-of-turn token) that `text` starts with, or ""."""
    specials = [t for t in getattr(tokenizer, "all_special_tokens", []) if t and text.startswith(t)]
    return max(specials, key=len, default="")


def _encode_with_mask(tokenizer: Any, text: str, spans: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """Token ids of `text` and a 0/1 mask that is 1 on the tokens of each span.

    Text is cut at the span edges and each piece tokenized on its own (as LLaMA-Factory encodes prompt and
    response apart): no token straddles a boundary, and the answer starts with the same tokens the model
    produces at inference after the generation prompt.
    """
    pieces: list[tuple[str, int]] = []
    pos = 0
    for s, e in spans:
        pieces += [(text[pos:s], 0), (text[s:e], 1)]
        pos = e
    pieces.append((text[pos:], 0))
    pieces = [(piece, flag) for piece, flag in pieces if piece]
    encoded = tokenizer([piece for piece, _ in pieces], add_special_tokens=False)["input_ids"] if pieces else []
    ids: list[int] = []
    mask: list[int] = []
    for piece_ids, (_, flag) in zip(encoded, pieces):
        ids += piece_ids
        mask += [flag] * len(piece_ids)
    return ids, mask


def tokenize_sft(
    examples: list[dict[str, Any]], tokenizer: Any, cutoff_len: int
) -> tuple[list[dict[str, list[int]]], RenderStats]:
    """SFT examples -> {"input_ids", "completion_mask"} with the mask on assistant turns only.

    Sequences longer than `cutoff_len` keep their first `cutoff_len` tokens; an example left with no
    assistant token is dropped. Template errors are raised together as a DataError (row = example number).
    """
    stats = RenderStats(n_rows=len(examples))
    rows: list[dict[str, list[int]]] = []
    problems: list[Problem] = []
    for number, example in enumerate(examples, 1):
        try:
            text, spans = assistant_spans(tokenizer, example["messages"], example.get("tools"))
        except Exception as e:  # noqa: BLE001 (jinja raises TemplateError, and templates call raise_exception)
            where = f"chat template of {_model_name(tokenizer)}"
            problems.append(Problem(where, number, "messages", f"{type(e).__name__}: {e}"))
            continue
        ids, mask = _encode_with_mask(tokenizer, text, spans)
        if len(ids) > cutoff_len:
            stats.n_truncated += 1
            ids, mask = ids[:cutoff_len], mask[:cutoff_len]
        if not any(mask):
            stats.n_dropped += 1
            continue
        rows.append({"input_ids": ids, "completion_mask": mask})
        stats.n_tokens += len(ids)
    if problems:
        raise DataError(cap_problems(problems))
    return rows, stats


def tokenize_pt(
    examples: list[dict[str, Any]], tokenizer: Any, cutoff_len: int
) -> tuple[list[dict[str, list[int]]], RenderStats]:
    """Pre-training: texts joined with EOS after each, packed into blocks of `cutoff_len` tokens.

    The last, shorter block is kept (dropped only when under 2 tokens: nothing to predict), so a small
    corpus loses nothing. No BOS is added, as in LLaMA-Factory.
    """
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise DataError([Problem(_model_name(tokenizer), None, "eos_token", "the tokenizer has no EOS token")])
    stats = RenderStats(n_rows=len(examples))
    texts = [example["text"] for example in examples]
    stream: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []:
        stream += [*ids, eos_id]
    blocks = [stream[i : i + cutoff_len] for i in range(0, len(stream), cutoff_len)]
    if blocks and len(blocks[-1]) < 2:
        stats.n_dropped += 1
        blocks.pop()
    stats.n_tokens = sum(len(b) for b in blocks)
    return [{"input_ids": b} for b in blocks], stats


def to_dpo_rows(examples: list[dict[str, Any]]) -> list[dict[str, Messages]]:
    """DPO examples as TRL's conversational preference rows (TRL applies the chat template itself)."""
    return [{"prompt": e["prompt"], "chosen": e["chosen"], "rejected": e["rejected"]} for e in examples]


def render_segments(tokenizer: Any, messages: Messages, tools: list[Any] | None = None) -> list[tuple[str, bool]]:
    """The rendered conversation cut into (text, trained) pieces, for previews that show the loss mask."""
    text, spans = assistant_spans(tokenizer, messages, tools)
    pieces: list[tuple[str, bool]] = []
    pos = 0
    for s, e in spans:
        if s > pos:
            pieces.append((text[pos:s], False))
        pieces.append((text[s:e], True))
        pos = e
    if pos < len(text):
        pieces.append((text[pos:], False))
    return pieces
