"""Dataset insight: what a catalogue set looks like under a model's chat template, before training on it.

    insight = compute_insight(spec, tokenizer, model_key="SmolLM2-135M-Instruct")
    insight.truncated(1024), insight.suggested_cutoff(), insight.histogram("prompt")

Per row: prompt and response token counts, rendered exactly as training renders them (app.data.render:
the same chat template, the same assistant-only split), so "truncated at cutoff_len N" counts the rows
that training would cut. Over the set: exact duplicates (same conversation), repeated prompts with
another answer, near-duplicates (rows whose prompt -- a pt row: its text -- is not identical to but at least
90% similar to an earlier row's: RapidFuzz's normalised Indel similarity on whitespace- and case-folded
text, every pair compared, for sets of up to NEAR_DUP_MAX_ROWS rows; larger sets skip it), empty
fields per column, and the language mix (py3langid, the maintained fork of langid.py: a many-language
naive Bayes model shipped inside the wheel, offline; one label per row from all of its text; Wu and Cantonese
labels are counted as zh, which short Mandarin rows are sometimes mistaken for).

Results are cached by fingerprint (a hash of the files' bytes, the catalogue entry, the model and the
chat template): in memory (the last MEMORY_ENTRIES) and as JSON files in `cache_dir` (the newest
DISK_ENTRIES). cutoff_len is not part of the key: the lengths are stored, truncation is counted on them.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
from collections import Counter, OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from app.atomic import write_json_atomic
from app.data.catalogue import DatasetSpec
from app.data.errors import DataError, Problem
from app.data.files import BROKEN, read_rows
from app.data.formats import _Row, convert_row, data_files, stage_problems
from app.data.render import render, tokenize_sft

VERSION = 2  # bump when the computed fields change: old cache files are ignored
COVERAGE = 0.99  # the suggested cutoff_len keeps this share of rows whole
CUTOFF_MULTIPLE = 16  # ... rounded up to a multiple of this
NEAR_DUP_THRESHOLD = 0.9
NEAR_DUP_MAX_ROWS = 5000  # all pairs are compared: 5,000 prompts = 25 M comparisons, ~2-5 s on 2 cores
NEAR_DUP_CHARS = 500  # of each prompt
MEMORY_ENTRIES = 16
DISK_ENTRIES = 64
LANGUAGE_METHOD = "py3langid (langid.py's naive Bayes model, offline), one label per row"
# Short Mandarin rows with digits come out as Wu or Cantonese now and then: the studio reports written Chinese.
LANGUAGE_FOLD = {"wuu": "zh", "yue": "zh"}
_SPACE = re.compile(r"\s+")


@dataclass
class Insight:
    dataset: str
    stage: str
    model: str
    fingerprint: str
    rows: int  # rows in the files
    valid_rows: int  # rows that convert to training examples (the rest are listed in `problems`)
    prompt_tokens: list[int] = field(default_factory=list)  # per valid row; pt: 0
    response_tokens: list[int] = field(default_factory=list)  # sft: assistant turns; dpo: the longer answer
    problems: list[str] = field(default_factory=list)  # the first few, as "file, row N, field 'x': ..."
    n_problems: int = 0
    exact_duplicates: int = 0  # rows equal to an earlier row
    repeated_prompts: int = 0  # rows whose prompt came earlier with a different answer
    near_duplicates: int | None = 0  # rows >= threshold similar to an earlier, non-identical row; None: skipped
    near_duplicate_pairs: list[tuple[int, int, float]] = field(default_factory=list)  # (row, earlier row, score)
    empty_fields: dict[str, int] = field(default_factory=dict)  # column -> rows where it is empty or missing
    languages: dict[str, int] = field(default_factory=dict)  # language code -> rows, most common first
    language_method: str = LANGUAGE_METHOD
    context_length: int | None = None  # the model's window, when known: the suggestion never exceeds it
    version: int = VERSION

    @property
    def total_tokens(self) -> list[int]:
        return [p + r for p, r in zip(self.prompt_tokens, self.response_tokens)]

    def truncated(self, cutoff_len: int) -> int | None:
        """Rows longer than `cutoff_len` tokens: training keeps only their first `cutoff_len` tokens.

        None for pre-training text, which is packed into cutoff_len blocks: nothing is cut away."""
        if self.stage == "pt":
            return None
        return sum(1 for n in self.total_tokens if n > cutoff_len)

    def suggested_cutoff(self, coverage: float = COVERAGE) -> int | None:
        """The smallest multiple of 16 that keeps `coverage` of the rows whole (nearest-rank percentile);
        None for pre-training text (packed, so any block size loses nothing)."""
        lengths = sorted(self.total_tokens)
        if not lengths or self.stage == "pt":
            return None
        need = lengths[max(math.ceil(coverage * len(lengths)), 1) - 1]
        value = max(CUTOFF_MULTIPLE, -(-need // CUTOFF_MULTIPLE) * CUTOFF_MULTIPLE)
        return min(value, self.context_length) if self.context_length else value

    def histogram(self, which: str = "total", bins: int = 12) -> list[tuple[int, int, int]]:
        """(low, high, rows) with low <= length <= high, equal-width integer bins over 0..max."""
        values = {"prompt": self.prompt_tokens, "response": self.response_tokens,
                  "total": self.total_tokens}[which]
        if not values:
            return []
        top = max(values)
        width = max(1, -(-(top + 1) // bins))
        counts = Counter(v // width for v in values)
        return [(i * width, (i + 1) * width - 1, counts.get(i, 0)) for i in range(top // width + 1)]

    def summary(self, cutoff_len: int | None = None) -> dict[str, Any]:
        """The figures a person reads (CLI output, the UI's table)."""
        totals = sorted(self.total_tokens)
        out: dict[str, Any] = {
            "dataset": self.dataset, "stage": self.stage, "model": self.model, "rows": self.rows,
            "valid_rows": self.valid_rows, "problems": self.n_problems,
            "tokens": {name: _spread(values) for name, values in
                       (("prompt", self.prompt_tokens), ("response", self.response_tokens), ("total", totals))},
            "exact_duplicates": self.exact_duplicates, "repeated_prompts": self.repeated_prompts,
            "near_duplicates": self.near_duplicates, "empty_fields": self.empty_fields,
            "languages": self.languages, "language_method": self.language_method,
            "suggested_cutoff_len": self.suggested_cutoff(),
        }
        if cutoff_len is not None:
            out["cutoff_len"] = cutoff_len
            out["truncated"] = self.truncated(cutoff_len)
        return out

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Insight:
        data = dict(data)
        data["near_duplicate_pairs"] = [tuple(p) for p in data.get("near_duplicate_pairs", [])]
        return cls(**data)


def _spread(values: list[int]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    return {"min": ordered[0], "median": ordered[(len(ordered) - 1) // 2], "mean": round(sum(values) / len(values), 1),
            "max": ordered[-1]}


# -- fingerprint and cache ---------------------------------------------------------------------------------
def fingerprint(spec: DatasetSpec, model_key: str, template: str | None) -> str:
    """Hash of the entry, every file's bytes, the model and the template text: equal means same answer."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps([VERSION, spec.name, spec.raw, model_key, template or ""], sort_keys=True,
                             default=str).encode())
    for path, _ in data_files(spec) if spec.path is not None else []:
        digest.update(path.name.encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


_memory: OrderedDict[str, Insight] = OrderedDict()
_memory_lock = threading.Lock()


def _cache_get(key: str, cache_dir: Path | None) -> Insight | None:
    with _memory_lock:
        if key in _memory:
            _memory.move_to_end(key)
            return _memory[key]
    if cache_dir is not None and (cache_dir / f"{key}.json").is_file():
        try:
            found = Insight.from_json(json.loads((cache_dir / f"{key}.json").read_text(encoding="utf-8")))
        except (ValueError, TypeError, OSError):
            return None  # an old or damaged file: compute again
        if found.version == VERSION:
            (cache_dir / f"{key}.json").touch()  # newest use: kept longest
            _cache_put(key, found, None)
            return found
    return None


def _cache_put(key: str, insight: Insight, cache_dir: Path | None) -> None:
    with _memory_lock:
        _memory[key] = insight
        _memory.move_to_end(key)
        while len(_memory) > MEMORY_ENTRIES:
            _memory.popitem(last=False)
    if cache_dir is None:
        return
    cache_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(cache_dir / f"{key}.json", insight.to_json(), indent=None)
    files = sorted(cache_dir.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in files[DISK_ENTRIES:]:
        old.unlink(missing_ok=True)


def clear_memory_cache() -> None:
    with _memory_lock:
        _memory.clear()


# -- computing -----------------------------------------------------------------------------------------
def dataset_insight(spec: DatasetSpec, tokenizer: Any, model_key: str, cache_dir: Path | None = None,
                    context_length: int | None = None) -> tuple[Insight, bool]:
    """(insight, came from the cache) for a catalogue entry under `tokenizer`'s chat template."""
    if spec.problems:
        raise DataError(spec.problems)
    key = fingerprint(spec, model_key, getattr(tokenizer, "chat_template", None))
    found = _cache_get(key, cache_dir)
    if found is not None:
        return found, True
    insight = compute_insight(spec, tokenizer, model_key, context_length)
    insight.fingerprint = key
    _cache_put(key, insight, cache_dir)
    return insight, False


def compute_insight(spec: DatasetSpec, tokenizer: Any, model_key: str, context_length: int | None = None,
                    max_problems: int = 5) -> Insight:
    """Read every row of `spec` for its own stage and measure it (no cache)."""
    stage = spec.stage
    blocking = stage_problems(spec, stage)
    if blocking:
        raise DataError(blocking)
    insight = Insight(dataset=spec.name, stage=stage, model=model_key, fingerprint="", rows=0, valid_rows=0,
                      context_length=context_length)
    problems: list[Problem] = []
    examples: list[tuple[int, dict[str, Any]]] = []
    empty: Counter[str] = Counter()
    for path, display in data_files(spec):
        result = read_rows(path, display)
        problems += result.problems
        for number, raw in enumerate(result.rows, 1):
            insight.rows += 1
            if raw is BROKEN:
                continue
            if isinstance(raw, dict):
                _count_empty(spec, raw, empty)
            row = _Row(display, number, problems)
            if not isinstance(raw, dict):
                row.bad(None, "expected an object with named columns")
                continue
            example = convert_row(spec, stage, raw, row)
            if example is not None and stage == "kto":  # measured as the conversation it tags
                example = {"messages": example["prompt"] + example["completion"]}
            if example is not None:
                examples.append((insight.rows, example))
    insight.empty_fields = dict(sorted(empty.items()))

    texts: list[tuple[str, str]] = []  # (prompt side, answer side) per measured row, for duplicates
    for number, example in examples:
        try:
            prompt_n, response_n = _token_counts(stage, example, tokenizer)
        except DataError as exc:
            problems += [Problem(p.file, number, p.field, p.message) for p in exc.problems]
            continue
        insight.prompt_tokens.append(prompt_n)
        insight.response_tokens.append(response_n)
        texts.append(_sides(stage, example))
    insight.valid_rows = len(texts)
    insight.n_problems = len(problems)
    insight.problems = [str(p) for p in problems[:max_problems]]
    _duplicates(insight, texts)
    insight.languages = language_mix([f"{p}\n{a}" for p, a in texts])
    return insight


def _count_empty(spec: DatasetSpec, raw: dict[str, Any], empty: Counter[str]) -> None:
    """Per mapped column: rows where it is missing or blank; per message list: rows with a blank turn."""
    content_tag = spec.tags.get("content_tag", "content")
    mapped = {"text": spec.text_column} if spec.stage == "pt" else spec.columns
    for role, column in mapped.items():
        if role in ("tools", "images", "videos", "audios", "kto_tag") or (role == "response" and spec.ranking):
            continue  # not text, or not used by this set (a ranking set answers in chosen/rejected)
        value = raw.get(column)
        if _blank(value):
            empty[column] += 1
        elif role == "messages" and isinstance(value, list):
            if any(isinstance(t, dict) and _blank(t.get(content_tag)) for t in value):
                empty[f"{column}[].{content_tag}"] += 1


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or (
        isinstance(value, (list, dict)) and not value)


def _token_counts(stage: str, example: dict[str, Any], tokenizer: Any) -> tuple[int, int]:
    """(prompt tokens, response tokens) as training renders the row (no truncation)."""
    if stage == "pt":
        return 0, len(tokenizer(example["text"], add_special_tokens=False)["input_ids"]) + 1  # + EOS
    if stage in ("sft", "kto"):
        rows, _ = tokenize_sft([example], tokenizer, cutoff_len=1 << 30)
        if not rows:
            return 0, 0
        answer = sum(rows[0]["completion_mask"])
        return len(rows[0]["input_ids"]) - answer, answer
    prompt = len(tokenizer(render(tokenizer, example["prompt"], generation=True),
                           add_special_tokens=False)["input_ids"])
    longest = 0
    for key in ("chosen", "rejected"):
        rows, _ = tokenize_sft([{"messages": example["prompt"] + example[key]}], tokenizer, cutoff_len=1 << 30)
        if rows:
            longest = max(longest, len(rows[0]["input_ids"]) - prompt)
    return prompt, longest


def _sides(stage: str, example: dict[str, Any]) -> tuple[str, str]:
    """The row's prompt side (user and tool turns, no system prompt) and answer side as plain text."""
    if stage == "pt":
        return "", example["text"]
    if stage == "dpo":
        prompt = example["prompt"]
        answer = "\n".join(m["content"] for k in ("chosen", "rejected") for m in example[k])
    else:
        messages = example["messages"]
        roles = [m["role"] for m in messages]
        last = len(roles) - 1 - roles[::-1].index("assistant") if "assistant" in roles else len(roles)
        prompt, answer = messages[:last], "\n".join(m["content"] for m in messages[last:])
    return "\n".join(m["content"] for m in prompt if m["role"] != "system"), answer


def _normal(text: str) -> str:
    return _SPACE.sub(" ", text).strip().casefold()


def _duplicates(insight: Insight, texts: list[tuple[str, str]]) -> None:
    seen: dict[tuple[str, str], int] = {}
    prompts: dict[str, str] = {}
    exact = [False] * len(texts)
    for i, (prompt, answer) in enumerate(texts):
        key = (_normal(prompt), _normal(answer))
        if key in seen:
            exact[i] = True
            insight.exact_duplicates += 1
        else:
            seen[key] = i
        if key[0] and key[0] in prompts and prompts[key[0]] != key[1]:
            insight.repeated_prompts += 1
        prompts.setdefault(key[0], key[1])
    if len(texts) > NEAR_DUP_MAX_ROWS:
        insight.near_duplicates = None
        return
    # Prompts (pt: the text) are compared, not whole rows: a rephrased question is what repeats, and short
    # strings keep the all-pairs comparison cheap. Identical prompts are already counted above.
    sides = [_normal(p or a)[:NEAR_DUP_CHARS] for p, a in texts]
    first = {side: i for i, side in reversed(list(enumerate(sides)))}  # a repeated prompt counts once, above
    pairs = [(i, j, score) for i, j, score in near_duplicate_pairs(sides, NEAR_DUP_THRESHOLD)
             if first[sides[i]] == i and sides[i] != sides[j]]
    flagged = sorted({i for i, _, _ in pairs})
    insight.near_duplicates = len(flagged)
    insight.near_duplicate_pairs = [(i + 1, j + 1, score) for i, j, score in pairs][:20]


def near_duplicate_pairs(texts: list[str], threshold: float = NEAR_DUP_THRESHOLD) -> list[tuple[int, int, float]]:
    """(i, j, similarity) with j < i for every pair at or above `threshold` (0-1), all pairs compared.

    Similarity is RapidFuzz's `fuzz.ratio` (normalised Indel distance) / 100; the texts are compared as given.
    """
    if len(texts) < 2:
        return []
    import numpy as np
    from rapidfuzz import fuzz, process

    cutoff = threshold * 100
    # uint8 percentages: 5,000 rows take 25 MB; scores under the cutoff come back as 0
    scores = process.cdist(texts, texts, scorer=fuzz.ratio, score_cutoff=cutoff, dtype=np.uint8,
                           workers=-1)
    rows, cols = np.nonzero(scores >= max(cutoff, 1))
    return [(int(i), int(j), int(scores[i, j]) / 100) for i, j in zip(rows, cols) if j < i]


def language_mix(texts: list[str]) -> dict[str, int]:
    """Rows per language code (py3langid), most common first; blank texts count as "-"."""
    import py3langid  # loads its model (~1 s) once per process, on first use

    counts: Counter[str] = Counter()
    for text in texts:
        code = py3langid.classify(text)[0] if text.strip() else "-"
        counts[LANGUAGE_FOLD.get(code, code)] += 1
    return dict(counts.most_common())
