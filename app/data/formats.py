"""Normalising catalogue rows into training examples, checking every row on the way.

These shapes come out, whatever the file's formatting:
  sft  {"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": str}, ...]} (+ "tools")
  dpo  {"prompt": [... ending with a user turn], "chosen": [assistant msg], "rejected": [assistant msg]}
       (rm: the same rows train a reward model)
  kto  {"prompt": [... ending with a user turn], "completion": [assistant msg], "label": bool}  (kto_tag)
  grpo {"prompt": [... ending with a user turn], "answer": str}  (the last assistant turn, "" if none)
  pt   {"text": str}
The conversions follow LLaMA-Factory's converters: alpaca joins prompt and query with a newline and turns
history pairs into earlier turns; sharegpt/openai map role tags onto roles, take a leading system turn or
the system column, and must alternate user (or observation) with assistant (or function_call).
Observation turns become role "tool"; function calls stay assistant turns whose content is the call
(for openai formatting, an assistant turn's `tool_calls` are written as that JSON content).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from app.data.catalogue import MEDIA_COLUMNS, DatasetSpec, list_data_files
from app.data.errors import DataError, Problem, cap_problems, display_path
from app.data.files import BROKEN, read_rows, type_name

STAGES = ("sft", "dpo", "pt", "kto", "rm", "grpo")
PAIR_STAGES = ("dpo", "rm")  # rows of prompt / chosen / rejected
Example = dict[str, Any]


class _Row:
    """Where a row came from, so each check only says what is wrong."""

    def __init__(self, file: str, row: int, problems: list[Problem]) -> None:
        self.file, self.row, self.problems = file, row, problems

    def bad(self, field: str | None, message: str) -> None:
        self.problems.append(Problem(self.file, self.row, field, message))

    def string(self, value: Any, field: str, *, required: bool = True) -> str | None:
        """`value` if it is a string (an absent optional value is ""), else a problem and None."""
        if value is None and not required:
            return ""
        if isinstance(value, str):
            return value
        self.bad(field, f"expected a string, got {type_name(value)}")
        return None


def stage_problems(spec: DatasetSpec, stage: str) -> list[Problem]:
    """Why `spec` cannot feed `stage` (empty when it can)."""

    def bad(message: str) -> list[Problem]:
        return [Problem(spec.catalogue_file, None, spec.name, message)]

    if stage not in STAGES:
        return bad(f"unknown stage {stage!r} (expected one of: {', '.join(STAGES)})")
    media = [c for c in MEDIA_COLUMNS if spec.columns.get(c)]
    if media:
        return bad(f"multimodal columns ({', '.join(media)}) are not supported: text-only training")
    if stage not in spec.stages:
        if spec.stage == "kto":
            return bad(f"dataset {spec.name!r} holds answers tagged good or bad (kto_tag): use it for kto, not {stage}")
        if spec.ranking:
            return bad(f"dataset {spec.name!r} holds preference pairs (ranking: true): use it for dpo or rm, "
                       f"not {stage}")
        if stage == "kto":
            return bad(f"dataset {spec.name!r} has no kto_tag column (answers tagged true/false): it cannot be "
                       "used for kto")
        if stage in PAIR_STAGES:
            return bad(
                f"dataset {spec.name!r} has no preference pairs (needs ranking: true with chosen/rejected "
                f"columns): it cannot be used for {stage}"
            )
        kind = "a plain-text (pt)" if spec.is_text else f"an {spec.stage}"
        return bad(f"dataset {spec.name!r} is {kind} dataset: it cannot be used for {stage}")
    if stage in PAIR_STAGES and not (spec.columns.get("chosen") and spec.columns.get("rejected")):
        return bad("a ranking dataset needs 'chosen' and 'rejected' in its columns")
    return []


def required_columns(spec: DatasetSpec, stage: str) -> list[str]:
    if stage == "pt":
        return [spec.text_column]
    first = ["prompt"] if spec.formatting == "alpaca" else ["messages"]
    if stage in PAIR_STAGES:
        rest = ["chosen", "rejected"]
    elif stage == "grpo":  # prompts; the answer column is optional
        rest = []
    else:
        rest = (["response"] if spec.formatting == "alpaca" else []) + (["kto_tag"] if stage == "kto" else [])
    return [spec.columns[k] for k in first + rest if spec.columns.get(k)]


def data_files(spec: DatasetSpec) -> list[tuple[Path, str]]:
    """(absolute path, display path) of each file behind the entry: the file, or a folder's files."""
    assert spec.path is not None
    if spec.path.is_dir():
        return [(p, display_path(Path(spec.display) / p.name)) for p in list_data_files(spec.path)]
    return [(spec.path, spec.display)]


def load_examples(spec: DatasetSpec, stage: str, max_samples: int | None = None) -> list[Example]:
    """Every row of `spec` as a `stage` example; DataError lists every problem (first 50, then a count)."""
    problems = list(spec.problems) or stage_problems(spec, stage)
    if problems:
        raise DataError(problems)
    if spec.hub_id and spec.path is None:
        from app.data.hub import hub_rows

        files = [(None, spec.display)]
    else:
        files = data_files(spec)
    if not files:
        raise DataError([Problem(spec.display, None, None, "folder holds no .json/.jsonl/.csv/.parquet/.txt")])
    examples: list[Example] = []
    for path, display in files:
        result = read_rows(path, display) if path is not None else _Rows(hub_rows(spec), [])
        problems += result.problems
        dict_rows = [r for r in result.rows if isinstance(r, dict)]
        seen = set().union(*(r.keys() for r in dict_rows)) if dict_rows else set()
        absent = [c for c in required_columns(spec, stage) if dict_rows and c not in seen]
        for column in absent:
            have = ", ".join(sorted(map(str, seen))) or "(none)"
            problems.append(Problem(display, None, column, f"missing column {column!r} (the file has: {have})"))
        if absent:
            continue
        for number, raw in enumerate(result.rows, 1):
            if raw is BROKEN:
                continue
            row = _Row(display, number, problems)
            if not isinstance(raw, dict):
                row.bad(None, f"expected an object with named columns, got {type_name(raw)}")
                continue
            example = convert_row(spec, stage, raw, row)
            if example is not None:
                examples.append(example)
    if not problems and not examples:
        problems.append(Problem(spec.display, None, None, "no rows"))
    if problems:
        raise DataError(cap_problems(problems))
    return _sample(examples, spec.num_samples, max_samples)


class _Rows:
    """Rows that did not come from a file (a hub dataset), shaped like files.read_rows' result."""

    def __init__(self, rows: list[Any], problems: list[Problem]) -> None:
        self.rows, self.problems = rows, problems


def _sample(examples: list[Example], num_samples: int | None, max_samples: int | None) -> list[Example]:
    """LLaMA-Factory's `num_samples` (sub- or over-sample, here seeded and in file order), then `max_samples`."""
    if num_samples is not None and num_samples != len(examples):
        rng, n = random.Random(0), len(examples)
        if num_samples < n:
            picks = sorted(rng.sample(range(n), num_samples))
        else:
            picks = list(range(n)) * (num_samples // n) + sorted(rng.sample(range(n), num_samples % n))
        examples = [examples[i] for i in picks]
    return examples[:max_samples] if max_samples is not None else examples


def convert_row(spec: DatasetSpec, stage: str, raw: dict[str, Any], row: _Row) -> Example | None:
    """One raw row -> one example, or None with the row's problems recorded."""
    before = len(row.problems)
    if stage == "pt":
        example = _text_row(spec, raw, row)
    elif spec.formatting == "alpaca":
        example = _alpaca_row(spec, "dpo" if stage in PAIR_STAGES else "sft", raw, row, need_answer=stage != "grpo")
    else:
        example = _sharegpt_row(spec, "dpo" if stage in PAIR_STAGES else "sft", raw, row, need_answer=stage != "grpo")
    if example is not None and stage == "kto":
        example = _kto_row(spec, example, raw, row)
    elif example is not None and stage == "grpo":
        example = _prompt_row(example)
    return example if len(row.problems) == before else None


def _kto_row(spec: DatasetSpec, example: Example, raw: dict[str, Any], row: _Row) -> Example | None:
    """A conversation + its kto_tag -> the prompt, the last answer and whether it is desirable."""
    column = spec.columns["kto_tag"]
    tag = raw.get(column)
    if isinstance(tag, str) and tag.strip().lower() in ("true", "false"):
        tag = tag.strip().lower() == "true"
    if not isinstance(tag, bool):
        row.bad(column, f"expected true or false, got {tag!r}")
        return None
    messages = example["messages"]
    return {"prompt": messages[:-1], "completion": messages[-1:], "label": tag}


def _prompt_row(example: Example) -> Example:
    """A conversation -> its prompt (every turn before the last answer) and that answer as the reference."""
    messages = example["messages"]
    if messages and messages[-1]["role"] == "assistant":
        return {"prompt": messages[:-1], "answer": messages[-1]["content"]}
    return {"prompt": messages, "answer": ""}


def _column(raw: dict[str, Any], column: str, row: _Row) -> Any:
    if column not in raw:
        row.bad(column, f"missing column {column!r}")
    return raw.get(column)


def _text_row(spec: DatasetSpec, raw: dict[str, Any], row: _Row) -> Example | None:
    column = spec.text_column
    if column not in raw:
        row.bad(column, f"missing column {column!r}")
        return None
    text = row.string(raw[column], column)
    if text is not None and not text.strip():
        row.bad(column, "empty text")
    return {"text": text} if text else None


def _system(spec: DatasetSpec, raw: dict[str, Any], row: _Row) -> list[dict[str, str]]:
    column = spec.columns.get("system")
    system = row.string(raw.get(column), column, required=False) if column else ""
    return [{"role": "system", "content": system}] if system else []


def _alpaca_row(spec: DatasetSpec, stage: str, raw: dict[str, Any], row: _Row,
                need_answer: bool = True) -> Example | None:
    cols = spec.columns
    messages = _system(spec, raw, row)
    if cols.get("history") and raw.get(cols["history"]) is not None:
        history = raw[cols["history"]]
        if not isinstance(history, list):
            row.bad(cols["history"], f"expected a list of [instruction, response] pairs, got {type_name(history)}")
            history = []
        for j, pair in enumerate(history):
            field = f"{cols['history']}[{j}]"
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
                row.bad(field, "expected an [instruction, response] pair")
                continue
            old_prompt, old_response = row.string(pair[0], f"{field}[0]"), row.string(pair[1], f"{field}[1]")
            messages += [
                {"role": "user", "content": old_prompt},
                {"role": "assistant", "content": old_response},
            ]
    prompt = query = ""
    if cols.get("prompt"):
        prompt = row.string(_column(raw, cols["prompt"], row), cols["prompt"], required=False)
    if cols.get("query"):
        query = row.string(raw.get(cols["query"]), cols["query"], required=False)
    user = "\n".join(part for part in (prompt, query) if part)
    if prompt is not None and query is not None and not user.strip():
        row.bad(cols.get("prompt"), "empty instruction")
    messages.append({"role": "user", "content": user})
    if stage == "dpo":
        chosen = _answer(raw, cols["chosen"], row)
        rejected = _answer(raw, cols["rejected"], row)
        return {"prompt": messages, "chosen": chosen, "rejected": rejected}
    if not need_answer and (not cols.get("response") or raw.get(cols["response"]) in (None, "")):
        return {"messages": messages}  # a prompt-only row (grpo)
    return {"messages": messages + _answer(raw, cols["response"], row)}


def _answer(raw: dict[str, Any], column: str, row: _Row) -> list[dict[str, str]]:
    if column not in raw:
        row.bad(column, f"missing column {column!r}")
        return []
    text = row.string(raw[column], column)
    if text is not None and not text.strip():
        row.bad(column, "empty response")
    return [{"role": "assistant", "content": text or ""}]


def _sharegpt_row(spec: DatasetSpec, stage: str, raw: dict[str, Any], row: _Row,
                  need_answer: bool = True) -> Example | None:
    tags, column = spec.tags, spec.columns["messages"]
    role_tag, content_tag = tags["role_tag"], tags["content_tag"]
    roles = {
        tags.get("user_tag"): "user", tags.get("assistant_tag"): "assistant",
        tags.get("observation_tag"): "tool", tags.get("function_tag"): "assistant",
        tags.get("system_tag"): "system",
    }  # fmt: skip
    roles.pop(None, None)
    user_side = {t for t in (tags.get("user_tag"), tags.get("observation_tag")) if t}
    assistant_side = {t for t in (tags.get("assistant_tag"), tags.get("function_tag")) if t}

    turns = _column(raw, column, row)
    if column not in raw:
        return None
    if not isinstance(turns, list):
        row.bad(column, f"expected a list of messages, got {type_name(turns)}")
        return None
    system_tag, offset = tags.get("system_tag"), 0
    messages = _system(spec, raw, row)
    first = turns[0] if turns else None
    if system_tag and isinstance(first, dict) and first.get(role_tag) == system_tag:
        content = row.string(first.get(content_tag), f"{column}[0].{content_tag}")
        messages = [{"role": "system", "content": content}] if content else []
        offset = 1
    if len(turns) == offset:
        row.bad(column, "empty conversation")
        return None

    order_ok, prev = True, None
    for idx, turn in enumerate(turns[offset:]):
        j = idx + offset
        if not isinstance(turn, dict):
            row.bad(f"{column}[{j}]", f"expected a message object, got {type_name(turn)}")
            order_ok = False
            continue
        if spec.formatting == "openai" and turn.get("tool_calls"):  # an OpenAI call turn: its calls are the content
            calls = [c.get("function", c) if isinstance(c, dict) else c for c in turn["tool_calls"]]
            turn = {**turn, content_tag: json.dumps(calls, ensure_ascii=False)}
        role, content = turn.get(role_tag), turn.get(content_tag)
        for key in (role_tag, content_tag):
            if key not in turn:
                row.bad(f"{column}[{j}]", f"missing key {key!r}")
        if role_tag not in turn or content_tag not in turn:
            order_ok = False
            continue
        content = row.string(content, f"{column}[{j}].{content_tag}")
        if role not in roles:
            row.bad(f"{column}[{j}].{role_tag}", f"unknown role {role!r} (expected one of: {', '.join(roles)})")
            order_ok = False
        elif role == system_tag:
            row.bad(f"{column}[{j}].{role_tag}", "a system turn may only come first")
            order_ok = False
        elif order_ok and role not in (user_side if idx % 2 == 0 else assistant_side):
            expected = tags["user_tag"] if idx % 2 == 0 else tags["assistant_tag"]
            where = "first" if prev is None else f"after {prev!r}"
            row.bad(f"{column}[{j}].{role_tag}", f"expected role {expected!r} {where}, got {role!r}")
            order_ok = False
        messages.append({"role": roles.get(role, "user"), "content": content or ""})
        prev = role
    if not order_ok:
        return None

    last, n_turns = len(turns) - 1, len(turns) - offset
    if stage == "sft":
        if n_turns % 2 and not need_answer:
            return {"messages": messages}  # a conversation that ends with the user: a prompt (grpo)
        if n_turns % 2:
            row.bad(
                f"{column}[{last}].{role_tag}",
                f"the last turn must be the assistant's ({tags['assistant_tag']!r}), got {prev!r}",
            )
            return None
        example: Example = {"messages": messages}
        tools = _tools(spec, raw, row)
        if tools:
            example["tools"] = tools
        return example

    if n_turns % 2 == 0:
        row.bad(
            f"{column}[{last}].{role_tag}",
            f"a preference prompt must end with a user turn ({tags['user_tag']!r}), got {prev!r}",
        )
        return None
    pair = [_reply(spec, raw, spec.columns[k], assistant_side, row) for k in ("chosen", "rejected")]
    return {"prompt": messages, "chosen": pair[0], "rejected": pair[1]}


def _reply(spec: DatasetSpec, raw: dict[str, Any], column: str, allowed: set[str], row: _Row) -> list[dict]:
    """A sharegpt preference answer: one message object in the assistant position."""
    role_tag, content_tag = spec.tags["role_tag"], spec.tags["content_tag"]
    if column not in raw:
        row.bad(column, f"missing column {column!r}")
        return []
    reply = raw[column]
    if not isinstance(reply, dict):
        shape = f"{{{role_tag!r}: {spec.tags['assistant_tag']!r}, {content_tag!r}: ...}}"
        row.bad(column, f"expected a message object like {shape}, got {type_name(reply)}")
        return []
    if reply.get(role_tag) not in allowed:
        row.bad(
            f"{column}.{role_tag}",
            f"expected role {spec.tags['assistant_tag']!r}, got {reply.get(role_tag)!r}",
        )
    text = row.string(reply.get(content_tag), f"{column}.{content_tag}")
    if text is not None and not text.strip():
        row.bad(f"{column}.{content_tag}", "empty response")
    return [{"role": "assistant", "content": text or ""}]


def _tools(spec: DatasetSpec, raw: dict[str, Any], row: _Row) -> list[Any] | None:
    """The row's tool schemas (LLaMA-Factory stores them as a JSON string), parsed."""
    column = spec.columns.get("tools")
    value = raw.get(column) if column else None
    if value in (None, "", []):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            row.bad(column, f"broken JSON in tools at column {e.colno}: {e.msg}")
            return None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        row.bad(column, f"expected a list of tool schemas, got {type_name(value)}")
        return None
    return value
