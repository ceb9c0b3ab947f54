"""A corpus of malformed inputs a new user produces: datasets, catalogues, job files, CLI flags, uploads
and run names. Each case asserts a non-zero exit (or the UI's message), a message naming what is wrong,
no Python traceback, and nothing written outside the data and runs folders.

One table, one test: add a row to add a case. CLI cases run `app.cli.main` in this process with the
case's folder as the working directory (its output captured as a terminal would show it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

GOOD = [{"instruction": f"Question {i}?", "input": "", "output": f"Answer {i}."} for i in range(6)]
PREFS = [{"instruction": f"Q{i}?", "input": "", "chosen": "Good.", "rejected": "Bad."} for i in range(4)]
CHAT = [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]}]
BASE_CATALOGUE: dict[str, Any] = {
    "good": {"file_name": "data/good.json"},
    "prefs": {"file_name": "data/prefs.json", "ranking": True,
              "columns": {"prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected"}},
    "chat": {"file_name": "data/chat.json", "formatting": "sharegpt"},
    "text": {"file_name": "data/text.txt"},
}


@dataclass
class Case:
    id: str
    argv: list[str] | None = None  # a CLI case: `ftstudio <argv>`
    ui: Callable[[Path], str] | None = None  # a UI case: returns the message the page shows
    expect: tuple[str, ...] = ()  # each must appear in the message (case-insensitive)
    files: dict[str, str] = field(default_factory=dict)  # written before the case (relative to the root)
    catalogue: dict[str, Any] | None = None  # entries added to (or replacing) the base catalogue
    raw_catalogue: str | None = None  # the catalogue file's whole text


def entry(name: str, **spec: Any) -> dict[str, Any]:
    return {name: spec}


def job(**keys: Any) -> str:
    return "\n".join(f"{k}: {json.dumps(v)}" for k, v in ({"dataset": "good"} | keys).items()) + "\n"


# -- UI cases -----------------------------------------------------------------------------------
def ui_upload(name: str, content: bytes | str, formatting: str = "alpaca", ranking: bool = False,
              limit_mb: float | None = None) -> Callable[[Path], str]:
    def run(root: Path) -> str:
        from app.ui.datasets import guess_mapping, validate_upload
        from app.ui.tabs.dataset import problems_text, upload_problem

        folder = root / "runs" / "upload-tmp"  # gradio keeps uploads in its own temp folder; tests use runs/
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        ctx = FakeContext()
        if limit_mb is not None:
            os.environ["FTSTUDIO_MAX_UPLOAD_MB"] = str(limit_mb)
        try:
            too_large = upload_problem(ctx, "en", str(path))
        finally:
            os.environ.pop("FTSTUDIO_MAX_UPLOAD_MB", None)
        if too_large:
            return too_large
        from app.data.files import read_rows

        rows = [r for r in read_rows(path, path.name).rows if isinstance(r, dict)]
        columns = list(dict.fromkeys(k for r in rows for k in r))
        _, _, problems = validate_upload(path, formatting, ranking, guess_mapping(formatting, ranking, columns))
        return problems_text(ctx, "en", problems) if problems else "no problem found"

    return run


def ui_run_name(name: str) -> Callable[[Path], str]:
    def run(root: Path) -> str:
        from app.config import ConfigError
        from app.ui.forms import default_controls, form_to_job

        try:
            form_to_job(default_controls() | {"output_dir": name}, None, root, root / "runs")
        except ConfigError as exc:
            return "\n".join(exc.problems)
        return "accepted"

    return run


def ui_start(**keys: Any) -> Callable[[Path], str]:
    """The Train tab's Start: the form's job, then the preflight (before anything is submitted)."""
    def run(root: Path) -> str:
        from app.config import ConfigError
        from app.train.preflight import preflight
        from app.ui.forms import default_controls, form_to_job

        values = default_controls() | {"dataset": ["good"]} | keys
        try:
            problems = preflight(form_to_job(values, None, root, root / "runs"))
        except ConfigError as exc:
            problems = exc.problems
        return "\n".join(problems) or "accepted"

    return run


class FakeContext:
    """What the Dataset tab's helpers need of the StudioContext: the string table."""

    def __init__(self) -> None:
        from app.ui.i18n import Translator

        self.i18n = Translator()

    def t(self, key: str, lang: str | None = None, **values: object) -> str:
        return self.i18n.t(key, lang or "en", **values)


CASES = [
    # -- datasets (through `ftstudio data check` and `ftstudio train`) -------------------------
    Case("data-broken-json", ["data", "check", "bad"], expect=("data/bad.json", "line"),
         files={"data/bad.json": '[{"instruction": "a", "output": "b"},'},
         catalogue=entry("bad", file_name="data/bad.json")),
    Case("data-missing-column", ["data", "check", "bad"], expect=("data/bad.json", "'output'"),
         files={"data/bad.json": json.dumps([{"instruction": "a"}])},
         catalogue=entry("bad", file_name="data/bad.json")),
    Case("data-empty-value", ["train", "--dataset", "bad"], expect=("data/bad.json", "row 2"),
         files={"data/bad.json": json.dumps(GOOD[:1] + [{"instruction": "", "input": "", "output": "x"}])},
         catalogue=entry("bad", file_name="data/bad.json")),
    Case("data-role-order", ["data", "check", "bad"], expect=("data/bad.json", "row 1"),
         files={"data/bad.json": json.dumps([{"conversations": [{"from": "gpt", "value": "Hi"},
                                                                 {"from": "human", "value": "x"}]}])},
         catalogue=entry("bad", file_name="data/bad.json", formatting="sharegpt")),
    Case("data-unknown-role", ["data", "check", "bad"], expect=("data/bad.json", "row 1", "robot"),
         files={"data/bad.json": json.dumps([{"conversations": [{"from": "robot", "value": "Hi"}]}])},
         catalogue=entry("bad", file_name="data/bad.json", formatting="sharegpt")),
    Case("data-empty-file", ["data", "check", "bad"], expect=("data/bad.json",),
         files={"data/bad.json": ""}, catalogue=entry("bad", file_name="data/bad.json")),
    Case("data-not-utf8", ["data", "check", "bad"], expect=("data/bad.jsonl", "utf"),
         files={"data/bad.jsonl": "\udcff"}, catalogue=entry("bad", file_name="data/bad.jsonl")),
    Case("data-torn-jsonl-line", ["data", "check", "bad"], expect=("data/bad.jsonl", "row 2"),
         files={"data/bad.jsonl": json.dumps(GOOD[0]) + "\n{\"instruction\": \"cut\n"},
         catalogue=entry("bad", file_name="data/bad.jsonl")),
    Case("data-csv-missing-column", ["data", "check", "bad"], expect=("data/bad.csv", "'output'"),
         files={"data/bad.csv": "instruction,input\nhi,\n"}, catalogue=entry("bad", file_name="data/bad.csv")),
    Case("data-rows-not-objects", ["data", "check", "bad"], expect=("data/bad.json", "row 1"),
         files={"data/bad.json": json.dumps(["just a string"])}, catalogue=entry("bad", file_name="data/bad.json")),
    Case("data-preference-without-rejected", ["train", "--stage", "dpo", "--dataset", "bad"],
         expect=("data/bad.json", "rejected"),
         files={"data/bad.json": json.dumps([{"instruction": "q", "input": "", "chosen": "a"}])},
         catalogue=entry("bad", file_name="data/bad.json", ranking=True,
                         columns={"prompt": "instruction", "chosen": "chosen", "rejected": "rejected"})),
    Case("data-sft-set-for-dpo", ["train", "--stage", "dpo", "--dataset", "good"], expect=("good", "dpo")),
    Case("data-preference-set-for-sft", ["train", "--stage", "sft", "--dataset", "prefs"], expect=("prefs", "sft")),
    Case("data-text-set-for-sft", ["train", "--dataset", "text"], expect=("text",),
         files={"data/text.txt": "Some prose.\n"}),
    Case("data-missing-file", ["data", "check", "gone"], expect=("data/gone.json", "not found"),
         catalogue=entry("gone", file_name="data/gone.json")),
    Case("data-unsupported-suffix", ["data", "check", "sheet"], expect=("xlsx",),
         files={"data/sheet.xlsx": "PK"}, catalogue=entry("sheet", file_name="data/sheet.xlsx")),
    # -- catalogues ------------------------------------------------------------------------------
    Case("cat-broken-json", ["data", "check"], expect=("dataset_info.json", "line 1"), raw_catalogue='{"good": '),
    Case("cat-not-an-object", ["train", "--dataset", "good"], expect=("dataset_info.json", "object"),
         raw_catalogue="[1, 2]"),
    Case("cat-escaping-path", ["data", "check", "evil"], expect=("evil", "outside"),
         catalogue=entry("evil", file_name="../../etc/passwd")),
    Case("cat-absolute-path", ["train", "--dataset", "evil"], expect=("evil", "outside"),
         catalogue=entry("evil", file_name="/etc/hostname")),
    Case("cat-hub-entry-offline", ["data", "check", "hub"], expect=("hub", "someone/data"),
         catalogue=entry("hub", hf_hub_url="someone/data")),
    Case("cat-unknown-formatting", ["data", "check", "odd"], expect=("odd", "formatting"),
         catalogue=entry("odd", file_name="data/good.json", formatting="xml")),
    Case("cat-ranking-not-bool", ["data", "check", "odd"], expect=("odd", "ranking"),
         catalogue=entry("odd", file_name="data/good.json", ranking="yes")),
    Case("cat-columns-not-mapping", ["data", "check", "odd"], expect=("odd", "columns"),
         catalogue=entry("odd", file_name="data/good.json", columns=["prompt"])),
    Case("cat-bad-num-samples", ["data", "check", "odd"], expect=("odd", "num_samples"),
         catalogue=entry("odd", file_name="data/good.json", num_samples=-3)),
    Case("cat-missing", ["train", "--dataset", "good", "--dataset_dir", "empty"],
         expect=("empty/dataset_info.json", "not found"), files={"empty/.keep": ""}),
    Case("cat-folder-missing", ["data", "check", "--dataset-dir", "nowhere"], expect=("nowhere", "not found")),
    # -- job files -------------------------------------------------------------------------------
    Case("job-yaml-syntax", ["train", "jobs/bad.yaml"], expect=("jobs/bad.yaml", "line 3", "column 1"),
         files={"jobs/bad.yaml": "dataset: good\nstage: [sft\n"}),
    Case("job-yaml-tab-indent", ["train", "jobs/bad.yaml"], expect=("jobs/bad.yaml", "line"),
         files={"jobs/bad.yaml": "dataset: good\n\tstage: sft\n"}),
    Case("job-not-a-mapping", ["train", "jobs/bad.yaml"], expect=("jobs/bad.yaml", "mapping"),
         files={"jobs/bad.yaml": "- dataset\n- good\n"}),
    Case("job-unknown-key", ["train", "jobs/bad.yaml"], expect=("learning_rat", "unknown key"),
         files={"jobs/bad.yaml": job(learning_rat=0.1)}),
    Case("job-unsupported-lf-key", ["train", "jobs/bad.yaml"], expect=("use_galore", "not supported"),
         files={"jobs/bad.yaml": job(use_galore=True)}),
    Case("job-wrong-type", ["train", "jobs/bad.yaml"], expect=("learning_rate", "number", "abc"),
         files={"jobs/bad.yaml": job(learning_rate="abc")}),
    Case("job-out-of-range", ["train", "jobs/bad.yaml"], expect=("lora_rank", ">= 1"),
         files={"jobs/bad.yaml": job(lora_rank=0)}),
    Case("job-bad-choice", ["train", "jobs/bad.yaml"], expect=("stage", "one of"),
         files={"jobs/bad.yaml": job(stage="rlhf")}),
    Case("job-bf16-and-fp16", ["train", "jobs/bad.yaml"], expect=("fp16", "bf16"),
         files={"jobs/bad.yaml": job(bf16=True, fp16=True)}),
    Case("job-quantized-full", ["train", "jobs/bad.yaml"], expect=("quantization_bit", "lora"),
         files={"jobs/bad.yaml": job(quantization_bit=4, finetuning_type="full")}),
    Case("job-val-size-too-large", ["train", "jobs/bad.yaml"], expect=("val_size", "6"),
         files={"jobs/bad.yaml": job(val_size=50)}),
    Case("job-val-size-fractional-count", ["train", "jobs/bad.yaml"], expect=("val_size", "whole"),
         files={"jobs/bad.yaml": job(val_size=2.5)}),
    Case("job-val-size-after-max-samples", ["train", "--dataset", "good", "--max_samples", "1", "--val_size", "0.5"],
         expect=("val_size", "at least 2")),
    Case("job-unknown-dataset", ["train", "jobs/bad.yaml"], expect=("dataset", "goood", "known datasets"),
         files={"jobs/bad.yaml": job(dataset="goood")}),
    Case("job-model-path-missing", ["train", "jobs/bad.yaml"], expect=("model_name_or_path", "./no-such-model"),
         files={"jobs/bad.yaml": job(model_name_or_path="./no-such-model")}),
    Case("job-model-folder-without-config", ["train", "jobs/bad.yaml"], expect=("model_name_or_path", "config.json"),
         files={"jobs/bad.yaml": job(model_name_or_path="runs/not-a-model"), "runs/not-a-model/weights.bin": "x"}),
    Case("job-unknown-template", ["train", "jobs/bad.yaml"], expect=("template", "chatmlx", "built-ins"),
         files={"jobs/bad.yaml": job(template="chatmlx")}),
    Case("job-template-file-missing", ["train", "jobs/bad.yaml"], expect=("template", "mine.jinja"),
         files={"jobs/bad.yaml": job(template="mine.jinja")}),
    Case("job-file-missing", ["train", "jobs/nothing.yaml"], expect=("jobs/nothing.yaml", "cannot read")),
    Case("job-file-is-a-folder", ["train", "jobs"], expect=("jobs", "cannot read"), files={"jobs/.keep": ""}),
    Case("job-resume-path-missing", ["train", "jobs/bad.yaml"], expect=("resume_from_checkpoint", "ckpt-9")),
    Case("job-deepspeed-file-missing", ["train", "jobs/bad.yaml"], expect=("deepspeed", "ds.json"),
         files={"jobs/bad.yaml": job(deepspeed="ds.json")}),
    Case("job-several-problems-at-once", ["train", "jobs/bad.yaml"], expect=("lora_rank", "stage", "warmup_ratio"),
         files={"jobs/bad.yaml": job(lora_rank=-1, stage="x", warmup_ratio=3)}),
    # -- CLI flags -------------------------------------------------------------------------------
    Case("flag-not-a-number", ["train", "--max_steps", "ten"], expect=("max_steps", "whole number")),
    Case("flag-negative-lr", ["train", "--learning_rate", "-1"], expect=("learning_rate", "> 0")),
    Case("flag-bad-choice", ["train", "--finetuning_type", "qlora"], expect=("finetuning_type", "lora, freeze, full")),
    Case("flag-bad-bool", ["train", "--bf16", "maybe"], expect=("bf16", "true or false")),
    Case("flag-unknown-subcommand-option", ["data", "check", "--stage", "rl"], expect=("--stage", "invalid choice")),
    Case("flag-missing-export-output", ["export", "runs/x"], expect=("--output", "required")),
    Case("runs-stop-unknown", ["runs", "stop", "ghost"], expect=("ghost", "no run named")),
    Case("runs-submit-escaping-name", ["runs", "submit", "jobs/ok.yaml", "--name", "../evil"],
         expect=("output_dir", "../evil", "runs folder"), files={"jobs/ok.yaml": job()}),
    Case("runs-submit-bad-job", ["runs", "submit", "jobs/bad.yaml"], expect=("dataset", "goood"),
         files={"jobs/bad.yaml": job(dataset="goood")}),
    Case("runs-resume-unknown", ["runs", "resume", "ghost"], expect=("ghost",)),
    # -- uploads (the Dataset tab) -----------------------------------------------------------------
    Case("upload-too-large", ui=ui_upload("big.json", "[" + ",".join([json.dumps(GOOD[0])] * 3000) + "]",
                                          limit_mb=0.05), expect=("big.json", "upload limit", "MB")),
    Case("upload-broken-json", ui=ui_upload("qa.json", '[{"instruction": "a", "output": "b"'), expect=("qa.json",)),
    Case("upload-missing-answer", ui=ui_upload("qa.jsonl", json.dumps({"instruction": "a", "output": "b"}) + "\n"
                                               + json.dumps({"instruction": "no answer"}) + "\n"),
         expect=("qa.jsonl", "row 2", "'output'")),
    Case("upload-preference-without-rejected", ui=ui_upload("p.json", json.dumps([{"instruction": "q", "chosen": "a"}]),
                                                            ranking=True), expect=("p.json", "rejected")),
    Case("upload-sharegpt-bad-roles",
         ui=ui_upload("c.json", json.dumps([{"conversations": [{"from": "x", "value": "y"}]}]), formatting="sharegpt"),
         expect=("c.json", "row 1")),
    # -- the Train tab's run name and Start ------------------------------------------------------
    Case("ui-run-name-parent", ui=ui_run_name("../outside"), expect=("output_dir", "../outside", "runs")),
    Case("ui-run-name-absolute", ui=ui_run_name("/tmp/elsewhere"), expect=("output_dir", "/tmp/elsewhere")),
    Case("ui-run-name-nested", ui=ui_run_name("a/b"), expect=("output_dir", "a/b")),
    Case("ui-start-val-size", ui=ui_start(val_size=10), expect=("val_size", "6")),
    Case("ui-start-unknown-template", ui=ui_start(template="nope"), expect=("template", "nope")),
]
CASES[CASES.index(next(c for c in CASES if c.id == "job-resume-path-missing"))].files = {
    "jobs/bad.yaml": job(resume_from_checkpoint="runs/x/ckpt-9")}


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file outside data/ and runs/, with size and mtime."""
    out = {}
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if path.is_file() and rel.parts[0] not in ("data", "runs"):
            out[str(rel)] = (path.stat().st_size, path.stat().st_mtime_ns)
    return out


@pytest.fixture()
def root(tmp_path: Path, monkeypatch) -> Path:
    (tmp_path / "data").mkdir()
    (tmp_path / "runs").mkdir()
    (tmp_path / "data" / "good.json").write_text(json.dumps(GOOD), encoding="utf-8")
    (tmp_path / "data" / "prefs.json").write_text(json.dumps(PREFS), encoding="utf-8")
    (tmp_path / "data" / "chat.json").write_text(json.dumps(CHAT), encoding="utf-8")
    (tmp_path / "data" / "text.txt").write_text("Some prose about an island.\n\nMore prose.\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FTSTUDIO_RUNS", str(tmp_path / "runs"))
    return tmp_path


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_input_is_reported_plainly(case: Case, root: Path, capsys):
    catalogue = BASE_CATALOGUE | (case.catalogue or {})
    (root / "dataset_info.json").write_text(case.raw_catalogue if case.raw_catalogue is not None
                                            else json.dumps(catalogue), encoding="utf-8")
    for rel, text in case.files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if "\udcff" in text:
            path.write_bytes(b"\xff\xfe\x00bad " + json.dumps(GOOD[0]).encode())
        else:
            path.write_text(text, encoding="utf-8")
    before = snapshot(root)
    runs_before = sorted(p.name for p in (root / "runs").iterdir())

    if case.argv is not None:
        from app.cli import main

        try:
            code = main(case.argv)
        except SystemExit as exc:  # argparse's own errors: usage + one line, exit 2
            code = exc.code
        captured = capsys.readouterr()
        message = captured.out + captured.err
        assert code not in (0, None), f"exit {code}: {message}"
    else:
        assert case.ui is not None
        message = case.ui(root)
        assert message not in ("accepted", "no problem found"), message

    assert "Traceback" not in message, message
    for word in case.expect:
        assert word.lower() in message.lower(), f"{word!r} not in: {message}"
    assert snapshot(root) == before  # nothing written outside data/ and runs/
    if case.argv and case.argv[0] == "train":
        assert sorted(p.name for p in (root / "runs").iterdir()) == runs_before  # a mistake costs no run folder
