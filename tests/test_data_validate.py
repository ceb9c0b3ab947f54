"""Checking datasets before a job, and `ftstudio data check`."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from app.data.errors import DataError
from app.data.validate import check_datasets, load_datasets, main_check, validate_or_raise

REPO = Path(__file__).parent.parent


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)  # the hub error names the endpoint
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "good.json").write_text(json.dumps([{"instruction": "q", "output": "a"}] * 3))
    (tmp_path / "data" / "bad.json").write_text(json.dumps([{"instruction": "q", "output": 1}]))
    (tmp_path / "data" / "pairs.json").write_text(json.dumps([{"instruction": "q", "chosen": "a", "c": "b"}]))
    catalogue = {
        "good": {"file_name": "data/good.json"},
        "bad": {"file_name": "data/bad.json"},
        "pairs": {"file_name": "data/pairs.json", "ranking": True, "columns": {"chosen": "chosen", "rejected": "c"}},
        "hub": {"hf_hub_url": "org/set"},
    }
    (tmp_path / "dataset_info.json").write_text(json.dumps(catalogue))
    return tmp_path


def test_unknown_dataset_lists_the_known_ones(ws: Path) -> None:
    assert [str(p) for p in check_datasets(".", ["good", "nope"], "sft")] == [
        "dataset_info.json, field 'nope': unknown dataset 'nope' (known datasets: good, bad, pairs, hub)"
    ]


def test_check_datasets_collects_every_problem(ws: Path) -> None:
    assert [str(p) for p in check_datasets(".", ["good", "bad", "pairs"], "sft")] == [
        "data/bad.json, row 1, field 'output': expected a string, got number",
        "dataset_info.json, field 'pairs': dataset 'pairs' holds preference pairs (ranking: true): "
        "use it for dpo or rm, not sft",
    ]
    assert check_datasets(".", ["good", "pairs"], None) == []  # each dataset's own stage
    assert [str(p) for p in check_datasets("missing", ["good"], "sft")] == [
        "missing/dataset_info.json: dataset folder missing not found"
    ]


def test_validate_or_raise(ws: Path) -> None:
    validate_or_raise(".", ["good"], "sft")
    with pytest.raises(DataError, match="unknown dataset 'nope'"):
        validate_or_raise(".", ["nope"], "sft")
    with pytest.raises(DataError, match="no dataset selected"):
        validate_or_raise(".", [], "sft")


def test_load_datasets_concatenates(ws: Path) -> None:
    assert len(load_datasets(".", ["good", "good"], "sft")) == 6
    assert len(load_datasets(".", ["good"], "sft", max_samples=2)) == 2
    with pytest.raises(DataError) as e:
        load_datasets(".", ["bad", "hub"], "sft")
    assert [p.message for p in e.value.problems] == [
        "expected a string, got number",
        "cannot load hub dataset 'org/set' from https://huggingface.co (HF_HUB_OFFLINE is set: only the local "
        "cache is read): ConnectionError: Couldn't reach 'org/set' on the Hub (OfflineModeIsEnabled). Connect to "
        "the network (or set HF_ENDPOINT to a mirror), or download the files next to the catalogue and set "
        "'file_name'",
    ]


def test_main_check_output_and_exit_code(ws: Path) -> None:
    out = io.StringIO()
    assert main_check(".", ["good", "pairs"], out=out) == 0
    assert out.getvalue().splitlines() == ["ok    good  sft  3 rows", "ok    pairs  dpo  1 rows"]
    out = io.StringIO()
    assert main_check(".", [], out=out) == 1
    assert out.getvalue().splitlines() == [
        "ok    good  sft  3 rows",
        "FAIL  bad  sft",
        "      data/bad.json, row 1, field 'output': expected a string, got number",
        "ok    pairs  dpo  1 rows",
        "FAIL  hub  sft",
        "      dataset_info.json, field 'hub': cannot load hub dataset 'org/set' from https://huggingface.co "
        "(HF_HUB_OFFLINE is set: only the local cache is read): ConnectionError: Couldn't reach 'org/set' on the "
        "Hub (OfflineModeIsEnabled). Connect to the network (or set HF_ENDPOINT to a mirror), or download the "
        "files next to the catalogue and set 'file_name'",
    ]
    out = io.StringIO()
    assert main_check(".", ["nope"], "sft", out=out) == 1
    assert out.getvalue().startswith("FAIL  nope  dataset_info.json, field 'nope': unknown dataset 'nope'")


def test_repo_demo_datasets_all_pass(capsys: pytest.CaptureFixture[str]) -> None:
    assert main_check(str(REPO), []) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 8 and all(line.startswith("ok") for line in lines)
