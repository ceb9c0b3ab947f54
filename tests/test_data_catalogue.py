"""The dataset catalogue (LLaMA-Factory's dataset_info.json): loading, problems, registering files."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from app.data import catalogue as catalogue_module
from app.data.catalogue import load_catalogue, register_dataset
from app.data.errors import DataError, Problem
from app.data.formats import load_examples

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).parent.parent


def write(root: Path, rel: str, content: Any) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False, indent=2)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scratch catalogue folder as the working directory, so problems name files as `data/x.json`."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def problems_of(excinfo: pytest.ExceptionInfo[DataError]) -> list[str]:
    return [str(p) for p in excinfo.value.problems]


ALPACA_ROWS = [{"instruction": "Say hi", "input": "", "output": "Hi!"}]


# ---------------------------------------------------------------- errors


def test_problem_str_omits_missing_parts() -> None:
    assert (
        str(Problem("data/identity.json", 3, "conversations[1].from", "expected role 'gpt' after 'human'"))
        == "data/identity.json, row 3, field 'conversations[1].from': expected role 'gpt' after 'human'"
    )
    assert str(Problem("a.json", None, None, "file not found")) == "a.json: file not found"
    assert str(Problem("a.json", 2, None, "bad")) == "a.json, row 2: bad"
    assert str(Problem("a.json", None, "x", "bad")) == "a.json, field 'x': bad"
    error = DataError([Problem("a", None, None, "one"), Problem("b", 1, None, "two")])
    assert str(error) == "a: one\nb, row 1: two"


# ---------------------------------------------------------------- catalogue-level problems


def test_missing_catalogue(ws: Path) -> None:
    with pytest.raises(DataError) as e:
        load_catalogue(".")
    assert problems_of(e) == ["dataset_info.json: dataset catalogue not found"]


def test_missing_folder(ws: Path) -> None:
    with pytest.raises(DataError) as e:
        load_catalogue("nowhere")
    assert problems_of(e) == ["nowhere/dataset_info.json: dataset folder nowhere not found"]


def test_broken_catalogue_json(ws: Path) -> None:
    write(ws, "dataset_info.json", '{\n  "a": {"file_name": "a.json"},\n}\n')
    with pytest.raises(DataError) as e:
        load_catalogue(".")
    assert problems_of(e) == [
        "dataset_info.json: broken JSON at line 3, column 1: Expecting property name enclosed in double quotes"
    ]


def test_catalogue_must_be_an_object(ws: Path) -> None:
    write(ws, "dataset_info.json", [{"file_name": "a.json"}])
    with pytest.raises(DataError) as e:
        load_catalogue(".")
    assert problems_of(e) == ["dataset_info.json: expected a JSON object mapping dataset names to entries"]


# ---------------------------------------------------------------- entry problems


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"file_name": "a.json", "formatting": "xml"},
            "unknown formatting 'xml' (expected one of: alpaca, sharegpt, openai)",
        ),
        ({"file_name": "../secret.json"}, "file_name '../secret.json' points outside the catalogue folder ."),
        ({"file_name": "data/../../x.json"}, "file_name 'data/../../x.json' points outside the catalogue folder ."),
        ({"file_name": "/etc/passwd"}, "file_name '/etc/passwd' points outside the catalogue folder ."),
        (
            {"ms_hub_url": "deepctrl/deepctrl-sft-data"},
            "only Hugging Face hub datasets (hf_hub_url) are supported (ms_hub_url: 'deepctrl/deepctrl-sft-data'); "
            "download the files next to the catalogue and set 'file_name'",
        ),
        (
            {"script_url": "belle_multiturn", "formatting": "sharegpt"},
            "only Hugging Face hub datasets (hf_hub_url) are supported (script_url: 'belle_multiturn'); "
            "download the files next to the catalogue and set 'file_name'",
        ),
        ({"formatting": "alpaca"}, "entry has no 'file_name'"),
        ({"file_name": "a.json", "ranking": "yes"}, "'ranking' must be true or false, got 'yes'"),
        (
            {"file_name": "a.json", "columns": ["prompt"]},
            "'columns' must be an object mapping column roles to column names",
        ),
        ({"file_name": "a.json", "num_samples": 0}, "'num_samples' must be a positive integer, got 0"),
        ("a.json", "expected an object with file_name, formatting, columns..., got str"),
    ],
)
def test_entry_problems(ws: Path, entry: Any, message: str) -> None:
    write(ws, "dataset_info.json", {"good": {"file_name": "data/good.json"}, "bad": entry})
    specs = load_catalogue(".")  # one bad entry does not hide the others
    assert specs["good"].problems == []
    assert [str(p) for p in specs["bad"].problems] == [f"dataset_info.json, field 'bad': {message}"]
    with pytest.raises(DataError) as e:
        load_catalogue(".", strict=True)
    assert problems_of(e) == [f"dataset_info.json, field 'bad': {message}"]
    with pytest.raises(DataError) as e:  # using the entry reports the same problem
        load_examples(specs["bad"], "sft")
    assert problems_of(e) == [f"dataset_info.json, field 'bad': {message}"]


def test_file_name_inside_folder_is_resolved(ws: Path) -> None:
    write(ws, "dataset_info.json", {"a": {"file_name": "data/sub/../a.json"}})
    spec = load_catalogue(".")["a"]
    assert spec.problems == []
    assert spec.path == (ws / "data" / "a.json").resolve()
    assert spec.display == "data/a.json"


# ---------------------------------------------------------------- defaults and stages


def test_defaults_follow_llama_factory(ws: Path) -> None:
    write(
        ws,
        "dataset_info.json",
        {
            "a": {"file_name": "a.json"},
            "s": {"file_name": "s.json", "formatting": "sharegpt", "tags": {"user_tag": "user"}},
            "o": {"file_name": "o.json", "formatting": "openai"},
            "q": {"file_name": "q.json", "columns": {"query": None}},
        },
    )
    specs = load_catalogue(".")
    assert specs["a"].columns == {"prompt": "instruction", "query": "input", "response": "output"}
    assert specs["a"].tags == {}
    assert specs["s"].columns == {"messages": "conversations"}
    assert specs["s"].tags == {
        "role_tag": "from",
        "content_tag": "value",
        "user_tag": "user",
        "assistant_tag": "gpt",
        "observation_tag": "observation",
        "function_tag": "function_call",
        "system_tag": "system",
    }
    assert specs["o"].columns == {"messages": "messages"}
    assert (specs["o"].tags["role_tag"], specs["o"].tags["content_tag"]) == ("role", "content")
    assert (specs["o"].tags["user_tag"], specs["o"].tags["assistant_tag"]) == ("user", "assistant")
    assert "query" not in specs["q"].columns  # an explicit null switches a default column off
    assert specs["a"].split == "train" and specs["a"].num_samples is None


def test_stages(ws: Path) -> None:
    write(
        ws,
        "dataset_info.json",
        {
            "sft": {"file_name": "a.json"},
            "dpo": {"file_name": "a.json", "ranking": True, "columns": {"chosen": "c", "rejected": "r"}},
            "pt_text": {"file_name": "c4.jsonl", "columns": {"prompt": "text"}},
            "pt_content": {"file_name": "web.jsonl", "columns": {"prompt": "content"}},
            "pt_txt": {"file_name": "wiki.txt"},
            "sft_cols": {"file_name": "a.json", "columns": {"prompt": "q", "response": "text"}},
            "kto": {"file_name": "k.json", "formatting": "sharegpt", "columns": {"kto_tag": "label"}},
        },
    )
    specs = load_catalogue(".")
    assert {name: spec.stages for name, spec in specs.items()} == {
        "sft": {"sft", "grpo"},
        "dpo": {"dpo", "rm"},
        "pt_text": {"pt"},
        "pt_content": {"pt"},
        "pt_txt": {"pt"},
        "sft_cols": {"sft", "grpo"},
        "kto": {"kto"},
    }
    assert specs["pt_content"].text_column == "content"
    assert specs["pt_txt"].text_column == "text"


def test_folder_entry_loads_every_supported_file(ws: Path) -> None:
    write(ws, "dataset_info.json", {"many": {"file_name": "data/many"}})
    write(ws, "data/many/b.json", [{"instruction": "b", "output": "B"}])
    write(ws, "data/many/a.jsonl", json.dumps({"instruction": "a", "output": "A"}) + "\n")
    write(ws, "data/many/notes.md", "ignored")
    write(ws, "data/many/.hidden.json", "ignored, hidden")
    examples = load_examples(load_catalogue(".")["many"], "sft")
    assert [e["messages"][-1]["content"] for e in examples] == ["A", "B"]


def test_folder_entry_problems_name_the_file(ws: Path) -> None:
    write(ws, "dataset_info.json", {"many": {"file_name": "data/many"}})
    write(ws, "data/many/a.json", [{"instruction": "a", "output": 1}])
    with pytest.raises(DataError) as e:
        load_examples(load_catalogue(".")["many"], "sft")
    assert problems_of(e) == ["data/many/a.json, row 1, field 'output': expected a string, got number"]


# ---------------------------------------------------------------- LLaMA-Factory's own catalogue


@pytest.fixture
def lf_dir(tmp_path: Path) -> Path:
    """LLaMA-Factory's data folder: its dataset_info.json (trimmed, unchanged entries) and small files."""
    folder = tmp_path / "lf"
    shutil.copytree(FIXTURES / "lf_data", folder)
    shutil.copyfile(FIXTURES / "lf_dataset_info.json", folder / "dataset_info.json")
    return folder


def test_llama_factory_catalogue_loads_unchanged(lf_dir: Path) -> None:
    specs = load_catalogue(lf_dir)
    hub = {"alpaca_en", "glaive_toolcall_en", "openorca", "ultrachat_200k", "orca_pairs", "wikipedia_en"}
    elsewhere = {"deepctrl", "belle_multiturn"}  # ModelScope / script entries only
    assert {name for name, spec in specs.items() if spec.problems} == elsewhere
    for name in elsewhere:
        assert "only Hugging Face hub datasets (hf_hub_url) are supported" in specs[name].problems[0].message
    assert {name: specs[name].hub_id for name in hub}["alpaca_en"] == "llamafactory/alpaca_en"
    assert specs["orca_pairs"].stage == "dpo" and specs["openorca"].stage == "sft"
    hub |= elsewhere
    assert specs["ultrachat_200k"].split == "train_sft"
    assert {name: specs[name].stage for name in specs if name not in hub} == {
        "identity": "sft",
        "alpaca_en_demo": "sft",
        "glaive_toolcall_en_demo": "sft",
        "mllm_demo": "sft",
        "dpo_en_demo": "dpo",
        "kto_en_demo": "kto",
        "wiki_demo": "pt",
        "c4_demo": "pt",
    }


def test_llama_factory_local_entries_load(lf_dir: Path) -> None:
    specs = load_catalogue(lf_dir)
    identity = load_examples(specs["identity"], "sft")
    assert identity[1] == {
        "messages": [
            {"role": "user", "content": "Who are you?"},
            {"role": "assistant", "content": "I am {{name}}, an AI assistant developed by {{author}}."},
        ]
    }
    assert load_examples(specs["alpaca_en_demo"], "sft")[1]["messages"][0] == {
        "role": "user",
        "content": "Translate into German.\nThe cat sleeps.",
    }
    tool = load_examples(specs["glaive_toolcall_en_demo"], "sft")
    assert [m["role"] for m in tool[0]["messages"]] == ["user", "assistant", "tool", "assistant"]
    assert tool[0]["tools"][0]["name"] == "get_weather"
    assert "tools" not in tool[1]  # "[]": no tools
    dpo = load_examples(specs["dpo_en_demo"], "dpo")
    assert dpo[1] == {
        "prompt": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "What is 2 + 2?"},
        ],
        "chosen": [{"role": "assistant", "content": "2 + 2 = 4."}],
        "rejected": [{"role": "assistant", "content": "5."}],
    }
    assert [e["text"] for e in load_examples(specs["c4_demo"], "pt")][
        0
    ] == "The harbour was quiet in the early morning."
    assert len(load_examples(specs["wiki_demo"], "pt")) == 3  # one example per non-blank line


def test_llama_factory_unsupported_entries_say_why(lf_dir: Path) -> None:
    specs = load_catalogue(lf_dir)
    where = f"{lf_dir}/dataset_info.json"
    with pytest.raises(DataError) as e:
        load_examples(specs["mllm_demo"], "sft")
    assert problems_of(e) == [
        f"{where}, field 'mllm_demo': multimodal columns (images) are not supported: text-only training"
    ]
    with pytest.raises(DataError) as e:
        load_examples(specs["kto_en_demo"], "sft")
    assert problems_of(e) == [
        f"{where}, field 'kto_en_demo': dataset 'kto_en_demo' holds answers tagged good or bad (kto_tag): "
        "use it for kto, not sft"
    ]


def test_llama_factory_kto_set_loads_for_kto(lf_dir: Path) -> None:
    rows = load_examples(load_catalogue(lf_dir)["kto_en_demo"], "kto")
    assert rows[:2] == [
        {"prompt": [{"role": "user", "content": "Say something nice."}],
         "completion": [{"role": "assistant", "content": "You are doing great!"}], "label": True},
        {"prompt": [{"role": "user", "content": "Say something nice."}],
         "completion": [{"role": "assistant", "content": "No."}], "label": False},
    ]


def test_repo_catalogue_demo_sets() -> None:
    specs = load_catalogue(REPO, strict=True)
    stages = {name: spec.stage for name, spec in specs.items()}
    assert stages == {
        "identity": "sft",
        "identity_eval": "sft",
        "alpaca_en_zh_demo": "sft",
        "preference_demo": "dpo",
        "preference_sharegpt_demo": "dpo",
        "raw_text_demo": "pt",
        "kto_demo": "kto",
        "grpo_math_demo": "sft",  # conversations: sft, and their prompts for grpo
    }
    identity = load_examples(specs["identity"], "sft")
    answers = [m["content"] for e in identity for m in e["messages"] if m["role"] == "assistant"]
    assert len(identity) >= 80 and all("Lumi" in a for a in answers)
    questions = {m["content"] for e in identity for m in e["messages"] if m["role"] == "user"}
    heldout = json.loads((REPO / "data" / "identity_heldout.json").read_text(encoding="utf-8"))
    assert len(heldout) == 9 and not questions & {h["question"] for h in heldout}
    assert "identity_heldout" not in specs and "raw_text_heldout" not in specs
    assert len(load_examples(specs["preference_demo"], "dpo")) == 40
    assert sum(len(e["text"]) for e in load_examples(specs["raw_text_demo"], "pt")) > 25_000


# ---------------------------------------------------------------- register_dataset


def test_register_copies_into_data_and_appends(ws: Path) -> None:
    write(ws, "dataset_info.json", {"z_first": {"file_name": "data/z.json"}, "a_second": {"file_name": "a.json"}})
    source = write(ws, "upload/tmp/mine.json", ALPACA_ROWS)
    spec = register_dataset(".", "mine", source)
    assert spec.path == (ws / "data" / "mine.json").resolve()
    assert spec.problems == [] and spec.stage == "sft"
    assert (ws / "data" / "mine.json").read_bytes() == source.read_bytes()
    catalogue = json.loads((ws / "dataset_info.json").read_text())
    assert list(catalogue) == ["z_first", "a_second", "mine"]  # other entries and their order kept
    assert catalogue["mine"] == {"file_name": "data/mine.json", "formatting": "alpaca"}
    assert sorted(os.listdir(ws)) == ["data", "dataset_info.json", "upload"]  # no temp file left behind
    assert load_examples(load_catalogue(".")["mine"], "sft")[0]["messages"][-1]["content"] == "Hi!"


def test_register_gives_a_unique_file_name(ws: Path) -> None:
    source = write(ws, "up/rows.json", ALPACA_ROWS)
    register_dataset(".", "one", source)
    spec = register_dataset(".", "two", source, formatting="alpaca", columns={"prompt": "instruction"}, tags=None)
    assert spec.file_name == "data/rows_1.json"
    assert sorted(p.name for p in (ws / "data").iterdir()) == ["rows.json", "rows_1.json"]


def test_register_creates_the_catalogue(ws: Path) -> None:
    source = write(ws, "up/pairs.json", [{"instruction": "q", "chosen": "good", "rejected": "bad"}])
    spec = register_dataset(
        ".",
        "pairs",
        source,
        ranking=True,
        columns={"prompt": "instruction", "chosen": "chosen", "rejected": "rejected"},
    )
    assert spec.stage == "dpo"
    assert json.loads((ws / "dataset_info.json").read_text())["pairs"]["ranking"] is True


def test_register_refuses_an_existing_name(ws: Path) -> None:
    write(ws, "dataset_info.json", {"mine": {"file_name": "data/old.json"}})
    before = (ws / "dataset_info.json").read_bytes()
    source = write(ws, "up/mine.json", ALPACA_ROWS)
    with pytest.raises(DataError) as e:
        register_dataset(".", "mine", source)
    assert problems_of(e) == ["dataset_info.json, field 'mine': a dataset named 'mine' already exists"]
    assert (ws / "dataset_info.json").read_bytes() == before
    assert not (ws / "data").exists()


def test_register_overwrite_replaces_in_place(ws: Path) -> None:
    write(ws, "dataset_info.json", {"mine": {"file_name": "data/old.json"}, "other": {"file_name": "o.json"}})
    source = write(ws, "up/new.json", ALPACA_ROWS)
    register_dataset(".", "mine", source, overwrite=True)
    catalogue = json.loads((ws / "dataset_info.json").read_text())
    assert list(catalogue) == ["mine", "other"]
    assert catalogue["mine"]["file_name"] == "data/new.json"


def test_register_invalid_file_writes_nothing(ws: Path) -> None:
    write(ws, "dataset_info.json", {})
    write(ws, "up/bad.json", [{"instruction": "q", "output": "ok"}, {"instruction": "q"}])
    with pytest.raises(DataError) as e:
        register_dataset(".", "bad", "up/bad.json")
    assert problems_of(e) == ["up/bad.json, row 2, field 'output': missing column 'output'"]
    assert json.loads((ws / "dataset_info.json").read_text()) == {}
    assert not (ws / "data").exists() or list((ws / "data").iterdir()) == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "  "}, "dataset_info.json: a dataset needs a name"),
        ({"columns": {"promt": "q"}}, "dataset_info.json, field 'x': unknown column roles: promt"),
        ({"formatting": "yaml"}, "dataset_info.json, field 'x': unknown formatting 'yaml' (expected one of: "
                                 "alpaca, sharegpt, openai)"),
        ({"source_file": "up/missing.json"}, "up/missing.json: file not found"),
        ({"source_file": "up/rows.xlsx"}, "up/rows.xlsx: unsupported file type '.xlsx' "
                                          "(expected one of: .json, .jsonl, .csv, .parquet, .txt)"),
    ],
)  # fmt: skip
def test_register_rejects_bad_arguments(ws: Path, kwargs: dict[str, Any], message: str) -> None:
    write(ws, "up/rows.json", ALPACA_ROWS)
    write(ws, "up/rows.xlsx", "not really")
    args: dict[str, Any] = {"name": "x", "source_file": "up/rows.json", **kwargs}
    with pytest.raises(DataError) as e:
        register_dataset(".", **args)
    assert problems_of(e) == [message]
    assert not (ws / "dataset_info.json").exists() and not (ws / "data").exists()


def test_register_is_atomic_when_writing_fails(ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(ws, "dataset_info.json", {"keep": {"file_name": "k.json"}})
    before = (ws / "dataset_info.json").read_bytes()
    source = write(ws, "up/rows.json", ALPACA_ROWS)

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(catalogue_module.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        register_dataset(".", "rows", source)
    assert (ws / "dataset_info.json").read_bytes() == before
    assert list((ws / "data").iterdir()) == []  # the copied file is removed again
    assert sorted(os.listdir(ws)) == ["data", "dataset_info.json", "up"]  # and the temp catalogue
