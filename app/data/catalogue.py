"""The dataset catalogue: LLaMA-Factory's `dataset_info.json`, read and written unchanged in schema.

An entry names a local file (or a folder of files) relative to the catalogue's folder, its `formatting`
(alpaca | sharegpt | openai), whether it holds preference pairs (`ranking`), and optional `columns` and
`tags` that map the file's own names onto LLaMA-Factory's. A catalogue written for LLaMA-Factory loads
as is: entries this studio cannot use (hub datasets, unknown formatting, paths leaving the folder) are
kept with their problems attached, so a UI can list them and a job that asks for one fails clearly.
Entries with `hf_hub_url` (and no `file_name`) are read through `datasets` when a job loads them
(app.data.hub; honours HF_ENDPOINT), never while listing the catalogue.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.atomic import write_json_atomic
from app.data.errors import DataError, Problem, display_path

CATALOGUE_NAME = "dataset_info.json"
FORMATTINGS = ("alpaca", "sharegpt", "openai")
SUPPORTED_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".txt")
HUB_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")

# Every column name LLaMA-Factory knows, plus `text` (this studio's plain name for a pre-training column).
KNOWN_COLUMNS = (
    "prompt", "query", "response", "history", "messages", "system", "tools",
    "images", "videos", "audios", "chosen", "rejected", "kto_tag", "text",
)  # fmt: skip
MEDIA_COLUMNS = ("images", "videos", "audios")
# A set's own stage -> every stage it can feed.
STAGES_OF: dict[str, tuple[str, ...]] = {"kto": ("kto",), "dpo": ("dpo", "rm"), "pt": ("pt",), "sft": ("sft", "grpo")}
DEFAULT_COLUMNS: dict[str, dict[str, str]] = {
    "alpaca": {"prompt": "instruction", "query": "input", "response": "output"},
    "sharegpt": {"messages": "conversations"},
    "openai": {"messages": "messages"},
}
DEFAULT_TAGS: dict[str, dict[str, str]] = {
    "sharegpt": {
        "role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
        "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system",
    },
    "openai": {
        "role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
        "observation_tag": "tool", "function_tag": "function_call", "system_tag": "system",
    },
}  # fmt: skip


@dataclass
class DatasetSpec:
    """One catalogue entry, with LLaMA-Factory's defaults filled in and its file resolved."""

    name: str
    file_name: str | None
    formatting: str = "alpaca"
    ranking: bool = False
    columns: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    split: str = "train"
    num_samples: int | None = None
    path: Path | None = None  # absolute; None for entries without a usable local file
    hub_id: str | None = None  # `hf_hub_url`: a Hugging Face dataset id read through `datasets`
    subset: str | None = None  # `subset`: the hub dataset's configuration name
    dataset_dir: Path = Path(".")  # the catalogue's folder, as given
    raw: dict[str, Any] = field(default_factory=dict)  # the entry exactly as written
    problems: list[Problem] = field(default_factory=list)  # why this entry cannot be used, if it cannot

    @property
    def catalogue_file(self) -> str:
        return display_path(self.dataset_dir / CATALOGUE_NAME)

    @property
    def display(self) -> str:
        """The data file's path for messages: the catalogue folder joined with `file_name` (or the hub id)."""
        if self.hub_id and not self.file_name:
            return f"hub dataset {self.hub_id}"
        return display_path(self.dataset_dir / (self.file_name or ""))

    @property
    def is_text(self) -> bool:
        """A plain-text set for pre-training: a .txt file, or an alpaca entry mapping only `prompt`/`text`."""
        if self.ranking or self.formatting != "alpaca":
            return False
        if self.file_name and _all_txt(self.path, self.file_name):
            return True
        explicit = {k for k, v in self._raw_columns().items() if v}
        return explicit in ({"prompt"}, {"text"})

    def _raw_columns(self) -> dict[str, Any]:
        """The entry's own `columns` (an empty mapping when it is not one: that is reported as a problem)."""
        columns = self.raw.get("columns")
        return columns if isinstance(columns, dict) else {}

    @property
    def text_column(self) -> str:
        explicit = self._raw_columns()
        return explicit.get("text") or explicit.get("prompt") or "text"

    @property
    def stages(self) -> set[str]:
        """The training stages this set feeds: answers tagged good/bad -> kto; preference pairs -> dpo and
        rm (a reward model); plain text -> pt; conversations -> sft, and grpo (their prompts, with the
        last answer as the reference an exact-match reward compares against)."""
        return set(STAGES_OF[self.stage])

    @property
    def stage(self) -> str:
        """The stage a set is listed and checked under by default."""
        if self.columns.get("kto_tag"):
            return "kto"
        if self.ranking:
            return "dpo"
        if self.is_text:
            return "pt"
        return "sft"


def _all_txt(path: Path | None, file_name: str) -> bool:
    if path is not None and path.is_dir():
        files = list_data_files(path)
        return bool(files) and all(f.suffix.lower() == ".txt" for f in files)
    return file_name.lower().endswith(".txt")


def list_data_files(folder: Path) -> list[Path]:
    """The supported files in a folder entry, sorted by name (hidden files skipped), as LLaMA-Factory does."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in SUPPORTED_SUFFIXES
    )


def _read_catalogue_json(dataset_dir: Path) -> dict[str, Any]:
    where = display_path(dataset_dir / CATALOGUE_NAME)
    path = dataset_dir / CATALOGUE_NAME
    if not dataset_dir.is_dir():
        raise DataError([Problem(where, None, None, f"dataset folder {display_path(dataset_dir)} not found")])
    if not path.is_file():
        raise DataError([Problem(where, None, None, "dataset catalogue not found")])
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise DataError([Problem(where, None, None, f"not UTF-8 text ({e.reason})")]) from None
    except json.JSONDecodeError as e:
        raise DataError(
            [Problem(where, None, None, f"broken JSON at line {e.lineno}, column {e.colno}: {e.msg}")]
        ) from None
    if not isinstance(data, dict):
        raise DataError([Problem(where, None, None, "expected a JSON object mapping dataset names to entries")])
    return data


def load_catalogue(dataset_dir: str | os.PathLike[str], *, strict: bool = False) -> dict[str, DatasetSpec]:
    """Read `<dataset_dir>/dataset_info.json` into specs, in the file's order.

    A missing or unreadable catalogue raises DataError. An entry that cannot be used keeps its problems in
    `spec.problems` (strict=False, the default, so LLaMA-Factory's own catalogue with hub entries loads),
    or they are all raised together (strict=True).
    """
    folder = Path(os.fspath(dataset_dir))
    data = _read_catalogue_json(folder)
    specs = {str(name): parse_entry(str(name), entry, folder) for name, entry in data.items()}
    if strict:
        problems = [p for spec in specs.values() for p in spec.problems]
        if problems:
            raise DataError(problems)
    return specs


def parse_entry(name: str, entry: Any, dataset_dir: Path) -> DatasetSpec:
    """One catalogue entry -> DatasetSpec, collecting (not raising) everything wrong with it."""
    where = display_path(dataset_dir / CATALOGUE_NAME)
    spec = DatasetSpec(name=name, file_name=None, dataset_dir=dataset_dir)
    problems = spec.problems

    def bad(message: str) -> None:
        problems.append(Problem(where, None, name, message))

    if not isinstance(entry, dict):
        bad(f"expected an object with file_name, formatting, columns..., got {type(entry).__name__}")
        return spec
    spec.raw = entry

    formatting = entry.get("formatting", "alpaca")
    if formatting not in FORMATTINGS:
        bad(f"unknown formatting {formatting!r} (expected one of: {', '.join(FORMATTINGS)})")
        formatting = "alpaca"
    spec.formatting = formatting

    ranking = entry.get("ranking", False)
    if not isinstance(ranking, bool):
        bad(f"'ranking' must be true or false, got {ranking!r}")
    spec.ranking = bool(ranking)

    columns = entry.get("columns") or {}
    if not isinstance(columns, dict) or not all(v is None or isinstance(v, str) for v in columns.values()):
        bad("'columns' must be an object mapping column roles to column names")
        columns = {}
    spec.columns = {k: v for k, v in {**DEFAULT_COLUMNS[formatting], **columns}.items() if v}

    tags = entry.get("tags") or {}
    if not isinstance(tags, dict) or not all(v is None or isinstance(v, str) for v in tags.values()):
        bad("'tags' must be an object mapping tag roles to tag names")
        tags = {}
    if formatting in DEFAULT_TAGS:
        spec.tags = {k: v for k, v in {**DEFAULT_TAGS[formatting], **tags}.items() if v}

    split = entry.get("split", "train")
    spec.split = split if isinstance(split, str) else "train"
    num_samples = entry.get("num_samples")
    if num_samples is not None and (not isinstance(num_samples, int) or num_samples < 1):
        bad(f"'num_samples' must be a positive integer, got {num_samples!r}")
        num_samples = None
    spec.num_samples = num_samples

    file_name = entry.get("file_name")
    if file_name is None:
        hub = [k for k in HUB_KEYS if entry.get(k)]
        if isinstance(entry.get("hf_hub_url"), str) and entry["hf_hub_url"].strip():
            spec.hub_id = entry["hf_hub_url"].strip()
            subset = entry.get("subset")
            spec.subset = subset if isinstance(subset, str) and subset else None
        elif hub:
            bad(
                f"only Hugging Face hub datasets (hf_hub_url) are supported ({hub[0]}: {entry[hub[0]]!r}); "
                "download the files next to the catalogue and set 'file_name'"
            )
        else:
            bad("entry has no 'file_name'")
        return spec
    if not isinstance(file_name, str) or not file_name.strip():
        bad(f"'file_name' must be a non-empty string, got {file_name!r}")
        return spec
    spec.file_name = file_name
    path = resolve_inside(dataset_dir, file_name)
    if path is None:
        bad(f"file_name {file_name!r} points outside the catalogue folder {display_path(dataset_dir)}")
        return spec
    spec.path = path
    return spec


def resolve_inside(dataset_dir: Path, file_name: str) -> Path | None:
    """`dataset_dir / file_name` as an absolute path, or None when it is absolute or leads out of the folder.

    Symbolic links are followed, so a link inside the folder that points elsewhere counts as outside.
    """
    if os.path.isabs(file_name) or file_name.startswith(("/", "\\")):
        return None
    root = dataset_dir.resolve()
    path = (root / file_name).resolve()
    return path if root in path.parents else None


def _reserve_unique(folder: Path, file_name: str) -> Path:
    """Create an empty file named like `file_name` in `folder` that did not exist before (name_1.json...)."""
    stem, suffix = Path(file_name).stem or "dataset", Path(file_name).suffix
    for i in range(10_000):
        candidate = folder / (f"{stem}{suffix}" if i == 0 else f"{stem}_{i}{suffix}")
        try:
            os.close(os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return candidate
        except FileExistsError:
            continue
    raise DataError([Problem(display_path(folder), None, None, f"no free file name for {file_name!r}")])


def register_dataset(
    dataset_dir: str | os.PathLike[str],
    name: str,
    source_file: str | os.PathLike[str],
    formatting: str = "alpaca",
    columns: dict[str, str] | None = None,
    tags: dict[str, str] | None = None,
    ranking: bool = False,
    overwrite: bool = False,
) -> DatasetSpec:
    """Validate `source_file`, copy it into `<dataset_dir>/data/` and add an entry to the catalogue.

    Nothing is written when the file has problems (DataError lists them) or the name is taken (unless
    `overwrite`, which replaces the entry in place and keeps the old file). Other entries and their order
    are kept; the catalogue is replaced atomically and created if missing.
    """
    from app.data.formats import load_examples  # formats imports this module

    folder = Path(os.fspath(dataset_dir))
    source = Path(os.fspath(source_file))
    where = display_path(folder / CATALOGUE_NAME)
    name = name.strip()
    if not name:
        raise DataError([Problem(where, None, None, "a dataset needs a name")])
    existing = _read_catalogue_json(folder) if (folder / CATALOGUE_NAME).exists() else {}
    if name in existing and not overwrite:
        raise DataError([Problem(where, None, name, f"a dataset named {name!r} already exists")])
    unknown = sorted(set(columns or {}) - set(KNOWN_COLUMNS))
    if unknown:
        raise DataError([Problem(where, None, name, f"unknown column roles: {', '.join(unknown)}")])
    if not source.is_file():
        raise DataError([Problem(display_path(source), None, None, "file not found")])
    if source.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise DataError(
            [Problem(display_path(source), None, None, f"unsupported file type {source.suffix or '(none)'!r} "
                     f"(expected one of: {', '.join(SUPPORTED_SUFFIXES)})")]
        )  # fmt: skip

    entry: dict[str, Any] = {"file_name": f"data/{source.name}", "formatting": formatting}
    if ranking:
        entry["ranking"] = True
    if columns:
        entry["columns"] = dict(columns)
    if tags:
        entry["tags"] = dict(tags)

    # Validate the source where it lies, under the entry it will get: a bad file never reaches the folder.
    probe = parse_entry(name, entry, folder)
    if probe.problems:
        raise DataError(probe.problems)
    probe.path, probe.file_name = source.resolve(), str(source)
    probe.dataset_dir = Path("")
    load_examples(probe, probe.stage)

    data_dir = folder / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    target = _reserve_unique(data_dir, source.name)
    try:
        shutil.copyfile(source, target)
        entry["file_name"] = f"data/{target.name}"
        catalogue = dict(existing)
        catalogue[name] = entry  # replacing keeps the key's position; a new key goes last
        write_json_atomic(folder / CATALOGUE_NAME, catalogue)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return parse_entry(name, entry, folder)
