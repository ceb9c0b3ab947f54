"""Start-up without repeated work: the datasets parsed once per start, tokenized rows reused between runs.

- `examples_for(job)`: the job's examples, parsed and validated once per process. The worker's
  validation step and `prepare_data` share them (they were parsed twice per start, three times when
  the UI had just checked them).
- `TokenCache`: the tokenized training rows of a job, kept on disk (Arrow, memory-mapped on load)
  under `<cache_root>/tokenized/<fingerprint>/`. The fingerprint covers everything that changes the
  rows: each dataset's catalogue entry and its files (path, size, modification time), the tokenizer
  (its files and chat template), stage, cutoff_len, max_samples, val_size, seed, and the source of
  the code that renders and tokenizes. Bounded: the MAX_ENTRIES most recently used entries are kept.
  A cache that cannot be read or written is skipped (logged), never a reason to fail a run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.config import JobConfig

log = logging.getLogger(__name__)

MAX_ENTRIES = 8
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json")
CODE_MODULES = ("app/data/render.py", "app/data/formats.py", "app/data/catalogue.py", "app/data/files.py",
                "app/train/recipes.py", "app/train/data_cache.py")
REPO = Path(__file__).resolve().parents[2]

_examples: dict[str, list[dict]] = {}


# -- parsed once -------------------------------------------------------------------------------------
def _source_key(job: JobConfig) -> str:
    """What the parsed examples depend on: the catalogue, the files behind each dataset, stage, limits."""
    from app.data.catalogue import CATALOGUE_NAME, load_catalogue

    parts: list[Any] = [job.stage, job.max_samples, job.datasets, _stat(Path(job.dataset_dir) / CATALOGUE_NAME)]
    try:
        specs = load_catalogue(job.dataset_dir)
    except Exception:  # noqa: BLE001 - the loader reports catalogue problems itself
        return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()
    for name in job.datasets:
        spec = specs.get(name)
        if spec is None or spec.path is None:
            parts.append([name, None])
            continue
        files = sorted(spec.path.rglob("*")) if spec.path.is_dir() else [spec.path]
        parts.append([name, [(str(f), _stat(f)) for f in files if f.is_file()]])
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()


def _stat(path: Path) -> list | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def examples_for(job: JobConfig) -> list[dict]:
    """Every example of the job's datasets (DataError listing every problem), parsed once per process."""
    from app.data.validate import load_datasets

    key = _source_key(job)
    if key not in _examples:
        _examples.clear()  # one job per worker process: keep only the latest
        _examples[key] = load_datasets(job.dataset_dir, job.datasets, job.stage, job.max_samples)
    return _examples[key]


# -- tokenized rows, kept between runs ---------------------------------------------------------------
def _tokenizer_key(tokenizer: Any) -> list:
    folder = Path(str(getattr(tokenizer, "name_or_path", "") or ""))
    files = [(name, _stat(folder / name)) for name in TOKENIZER_FILES] if folder.is_dir() else [str(folder)]
    return [type(tokenizer).__name__, len(tokenizer), tokenizer.chat_template, tokenizer.eos_token,
            tokenizer.pad_token, files]


def _code_key() -> list:
    return [hashlib.sha256((REPO / m).read_bytes()).hexdigest() if (REPO / m).is_file() else m for m in CODE_MODULES]


def fingerprint(job: JobConfig, tokenizer: Any) -> str:
    parts = [_source_key(job), _tokenizer_key(tokenizer), job.cutoff_len, job.val_size, job.seed, _code_key()]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:32]


@dataclass
class Cached:
    train: Any  # datasets.Dataset
    eval: Any | None
    n_rows: int
    message: str


class TokenCache:
    def __init__(self, root: Path | None = None, max_entries: int = MAX_ENTRIES):
        from app.models.source import cache_root

        self.root = root or cache_root() / "tokenized"
        self.max_entries = max_entries

    def load(self, key: str) -> Cached | None:
        from datasets import Dataset

        folder = self.root / key
        meta_file = folder / "meta.json"
        if not meta_file.is_file():
            return None
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            train = Dataset.load_from_disk(str(folder / "train"))
            evaluation = Dataset.load_from_disk(str(folder / "eval")) if meta.get("has_eval") else None
            os.utime(meta_file)  # most recently used
        except Exception as exc:  # noqa: BLE001 - a broken entry is rebuilt
            log.warning("tokenized cache %s unreadable (%s); tokenizing again", folder, exc)
            shutil.rmtree(folder, ignore_errors=True)
            return None
        return Cached(train, evaluation, int(meta["n_rows"]), meta["message"])

    def store(self, key: str, cached: Cached) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))
            cached.train.save_to_disk(str(staging / "train"))
            if cached.eval is not None:
                cached.eval.save_to_disk(str(staging / "eval"))
            (staging / "meta.json").write_text(json.dumps(
                {"n_rows": cached.n_rows, "message": cached.message, "has_eval": cached.eval is not None,
                 "created": time.time()}), encoding="utf-8")
            target = self.root / key
            shutil.rmtree(target, ignore_errors=True)
            os.replace(staging, target)  # complete or absent
        except Exception as exc:  # noqa: BLE001 - caching is an optimisation only
            log.warning("could not cache the tokenized dataset in %s: %s", self.root, exc)
            return
        self.evict()

    def entries(self) -> list[Path]:
        """Complete entries, most recently used first."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir() if (p / "meta.json").is_file()]
        return sorted(found, key=lambda p: (p / "meta.json").stat().st_mtime, reverse=True)

    def evict(self) -> None:
        for old in self.entries()[self.max_entries:]:
            shutil.rmtree(old, ignore_errors=True)
        for staging in self.root.glob(".staging-*"):  # left by a crash more than an hour ago
            if time.time() - staging.stat().st_mtime > 3600:
                shutil.rmtree(staging, ignore_errors=True)
