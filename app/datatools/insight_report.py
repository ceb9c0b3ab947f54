"""Dataset insight for a catalogue name under a real model: the tokenizer and template loaded once per
(model, template), the cache in the studio's cache folder, and `ftstudio data stats` printing it.

    insight, cached = insight_for(".", "identity", model=None, template=None)
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from app.data.catalogue import CATALOGUE_NAME, load_catalogue
from app.data.errors import DataError, Problem, display_path
from app.data.formats import data_files
from app.data.insight import Insight, dataset_insight
from app.models.source import EMBEDDED_ID, ModelSourceError, cache_root, is_embedded, resolve_model_path


def insight_cache_dir() -> Path:
    return cache_root() / "insight"


@functools.lru_cache(maxsize=4)
def model_tokenizer(model: str | None, template: str | None) -> tuple[Any, str, int | None]:
    """(tokenizer with the chat template set, the model's name for the cache key, its context window)."""
    from app.train.model_setup import load_tokenizer

    folder = resolve_model_path(model)
    tokenizer = load_tokenizer(folder, template or None)
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        window = config.get("max_position_embeddings") or config.get("n_positions")
    except (OSError, ValueError):
        window = None
    key = EMBEDDED_ID if is_embedded(model) else str(folder)
    return tokenizer, key, int(window) if window else None


def insight_for(dataset_dir: str | Path, name: str, model: str | None = None, template: str | None = None,
                cache_dir: Path | None = None) -> tuple[Insight, bool]:
    """(insight, from the cache) of catalogue set `name` under `model`'s chat template (or `template`)."""
    specs = load_catalogue(dataset_dir)
    if name not in specs:
        where = display_path(Path(dataset_dir) / CATALOGUE_NAME)
        raise DataError([Problem(where, None, name, f"unknown dataset {name!r} (known: {', '.join(specs) or '-'})")])
    tokenizer, key, window = model_tokenizer(model or None, template or None)
    return dataset_insight(specs[name], tokenizer, key, cache_dir or insight_cache_dir(), window)


ESTIMATE_MAX_BYTES = 8 << 20  # larger sets: the estimate assumes full-length rows instead of reading them


def estimate_rows(dataset_dir: str | Path, names: list[str], model: str | None, template: str | None,
                  cutoff_len: int, max_samples: int | None = None) -> list[tuple[int, int]] | None:
    """(tokens, label tokens) of every SFT row as the worker will cut it at `cutoff_len`, from each set's
    insight (cached by content fingerprint), for the Train tab's memory estimate before anything is
    tokenized; None when a set is missing, broken or over ESTIMATE_MAX_BYTES (then the estimate takes
    every row as cutoff_len long, as before). A row is cut at its end, so its prompt stays whole."""
    specs = load_catalogue(dataset_dir)
    rows: list[tuple[int, int]] = []
    for name in names:
        spec = specs.get(name)
        if spec is None or spec.path is None or spec.problems:
            return None
        try:
            if sum(path.stat().st_size for path, _ in data_files(spec)) > ESTIMATE_MAX_BYTES:
                return None
            insight, _ = insight_for(dataset_dir, name, model, template)
        except (DataError, ModelSourceError, OSError, ValueError):
            return None
        pairs = list(zip(insight.prompt_tokens, insight.response_tokens))[:max_samples or None]
        for prompt, response in pairs:
            kept = min(prompt + response, cutoff_len)
            if labels := min(response, kept - prompt):  # the worker drops a row cut before its answer
                rows.append((kept, labels))
    return rows or None


def report_text(insight: Insight, cutoff_len: int) -> str:
    """The figures a person reads, one per line (the CLI's output)."""
    s = insight.summary(cutoff_len)
    tokens = s["tokens"]

    def spread(kind: str) -> str:
        t = tokens.get(kind) or {}
        return f"min {t['min']}, median {t['median']}, mean {t['mean']}, max {t['max']}" if t else "-"

    near = "not computed (too many rows)" if s["near_duplicates"] is None else s["near_duplicates"]
    empty = ", ".join(f"{k} {v}" for k, v in s["empty_fields"].items()) or "none"
    langs = ", ".join(f"{k} {v}" for k, v in s["languages"].items()) or "-"
    lines = [
        f"dataset            {s['dataset']} ({s['stage']}), rendered with {s['model']}",
        f"rows               {s['rows']} ({s['valid_rows']} usable, {s['problems']} with problems)",
        f"prompt tokens      {spread('prompt')}",
        f"response tokens    {spread('response')}",
        f"total tokens       {spread('total')}",
        f"cut at cutoff_len  {s['truncated']} rows longer than {cutoff_len} tokens" if s["truncated"] is not None
        else "cut at cutoff_len  none: pre-training text is packed into cutoff_len blocks",
        f"suggested cutoff   {s['suggested_cutoff_len']} (keeps 99% of rows whole)" if s["suggested_cutoff_len"]
        else "suggested cutoff   -",
        f"duplicates         {s['exact_duplicates']} exact, {s['repeated_prompts']} repeated prompts with "
        f"another answer, {near} near (prompt >= 90% similar)",
        f"empty fields       {empty}",
        f"languages          {langs}  [{s['language_method']}]",
    ]
    lines += [f"problem            {p}" for p in insight.problems]
    return "\n".join(lines)


def main_stats(dataset_dir: str, name: str, model: str | None, template: str | None, cutoff_len: int,
               as_json: bool = False, out: TextIO | None = None) -> int:
    """`ftstudio data stats`: 0 with the report printed, 1 with the reason on stderr."""
    out = out or sys.stdout
    try:
        insight, _ = insight_for(dataset_dir, name, model, template)
    except DataError as exc:
        print("\n".join(f"error: {p}" for p in exc.problems), file=sys.stderr)
        return 1
    except ModelSourceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(insight.summary(cutoff_len) | {"histograms": {
            k: insight.histogram(k) for k in ("prompt", "response")}}, ensure_ascii=False, indent=2), file=out)
    else:
        print(report_text(insight, cutoff_len), file=out)
    return 0
