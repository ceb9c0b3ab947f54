"""Reading files and normalising rows into sft / dpo / pt examples, with every problem named precisely."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from app.data.catalogue import load_catalogue
from app.data.errors import DataError
from app.data.formats import load_examples

SHAREGPT = {"formatting": "sharegpt"}
PAIR = {"chosen": "chosen", "rejected": "rejected"}
DPO_ALPACA = {"ranking": True, "columns": {"prompt": "instruction", "query": "input", **PAIR}}
DPO_SHAREGPT = {"formatting": "sharegpt", "ranking": True, "columns": {"messages": "conversations", **PAIR}}


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def dataset(ws: Path, file: str, content: Any, **entry: Any) -> str:
    """Write `data/<file>` and a catalogue with one entry `d` for it; returns the dataset name."""
    path = ws / "data" / file
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, pd.DataFrame):
        content.to_parquet(path) if file.endswith(".parquet") else content.to_csv(path, index=False)
    elif isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_text(json.dumps(content, ensure_ascii=False), encoding="utf-8")
    (ws / "dataset_info.json").write_text(json.dumps({"d": {"file_name": f"data/{file}", **entry}}))
    return "d"


def load(stage: str = "sft", **kwargs: Any) -> list[dict[str, Any]]:
    return load_examples(load_catalogue(".")["d"], stage, **kwargs)


def problems(stage: str = "sft") -> list[str]:
    with pytest.raises(DataError) as e:
        load(stage)
    return [str(p) for p in e.value.problems]


def conv(*turns: tuple[str, Any]) -> dict[str, Any]:
    return {"conversations": [{"from": role, "value": value} for role, value in turns]}


# ---------------------------------------------------------------- alpaca


def test_alpaca_full_conversion(ws: Path) -> None:
    row = {
        "instruction": "Translate",
        "input": "bonjour",
        "output": "hello",
        "sys": "Be brief.",
        "hist": [["Hi", "Hello!"], ["How are you?", "Fine."]],
    }
    dataset(ws, "a.json", [row], columns={"system": "sys", "history": "hist"})
    assert load() == [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "How are you?"},
                {"role": "assistant", "content": "Fine."},
                {"role": "user", "content": "Translate\nbonjour"},
                {"role": "assistant", "content": "hello"},
            ]
        }
    ]


def test_alpaca_optional_columns_may_be_absent_or_null(ws: Path) -> None:
    dataset(
        ws, "a.json", [{"instruction": "Say hi", "output": "Hi"}, {"instruction": "x", "input": None, "output": "y"}]
    )
    assert [e["messages"][0]["content"] for e in load()] == ["Say hi", "x"]


def test_alpaca_dpo(ws: Path) -> None:
    dataset(ws, "p.json", [{"instruction": "2+2?", "input": "", "chosen": "4", "rejected": "5"}], **DPO_ALPACA)
    assert load("dpo") == [
        {
            "prompt": [{"role": "user", "content": "2+2?"}],
            "chosen": [{"role": "assistant", "content": "4"}],
            "rejected": [{"role": "assistant", "content": "5"}],
        }
    ]


@pytest.mark.parametrize(
    ("rows", "where", "message"),
    [
        ([{"instruction": "q", "output": 5}], "row 1, field 'output'", "expected a string, got number"),
        ([{"instruction": ["q"], "output": "a"}], "row 1, field 'instruction'", "expected a string, got list"),
        ([{"instruction": "", "input": "", "output": "a"}], "row 1, field 'instruction'", "empty instruction"),
        ([{"instruction": "q", "output": "  "}], "row 1, field 'output'", "empty response"),
        ([{"instruction": "q", "output": None}], "row 1, field 'output'", "expected a string, got null"),
        (
            [{"instruction": "q", "output": "a"}, {"instruction": "q"}],
            "row 2, field 'output'",
            "missing column 'output'",
        ),
        ([{"instruction": "q", "output": "a"}, ["q"]], "row 2", "expected an object with named columns, got list"),
        ([{"output": "a"}], "field 'instruction'", "missing column 'instruction' (the file has: output)"),
    ],
)
def test_alpaca_row_problems(ws: Path, rows: list[Any], where: str, message: str) -> None:
    dataset(ws, "a.json", rows)
    assert problems() == [f"data/a.json, {where}: {message}"]


def test_alpaca_bad_history(ws: Path) -> None:
    rows = [
        {"instruction": "q", "output": "a", "h": "not a list"},
        {"instruction": "q", "output": "a", "h": [["only one"]]},
        {"instruction": "q", "output": "a", "h": [["x", 3]]},
    ]
    dataset(ws, "a.json", rows, columns={"history": "h"})
    assert problems() == [
        "data/a.json, row 1, field 'h': expected a list of [instruction, response] pairs, got string",
        "data/a.json, row 2, field 'h[0]': expected an [instruction, response] pair",
        "data/a.json, row 3, field 'h[0][1]': expected a string, got number",
    ]


def test_preference_rows_without_chosen_or_rejected(ws: Path) -> None:
    rows = [
        {"instruction": "q", "chosen": "good"},
        {"instruction": "q", "rejected": "bad"},
        {"instruction": "q", "chosen": "good", "rejected": {"text": "bad"}},
    ]
    dataset(ws, "p.json", rows, **DPO_ALPACA)
    assert problems("dpo") == [
        "data/p.json, row 1, field 'rejected': missing column 'rejected'",
        "data/p.json, row 2, field 'chosen': missing column 'chosen'",
        "data/p.json, row 3, field 'rejected': expected a string, got object",
    ]


def test_ranking_entry_without_pair_columns(ws: Path) -> None:
    dataset(ws, "p.json", [{"instruction": "q", "output": "a"}], ranking=True)
    assert problems("dpo") == [
        "dataset_info.json, field 'd': a ranking dataset needs 'chosen' and 'rejected' in its columns"
    ]


# ---------------------------------------------------------------- sharegpt / openai


def test_sharegpt_system_turn_and_tools(ws: Path) -> None:
    rows = [
        {
            "conversations": [
                {"from": "system", "value": "You are terse."},
                {"from": "human", "value": "Weather?"},
                {"from": "function_call", "value": '{"name": "w"}'},
                {"from": "observation", "value": "sunny"},
                {"from": "gpt", "value": "Sunny."},
            ],
            "tools": '[{"name": "w"}]',
        },
        {**conv(("human", "hi"), ("gpt", "hello")), "sys": "From the column."},
    ]
    dataset(ws, "s.json", rows, formatting="sharegpt", columns={"tools": "tools", "system": "sys"})
    first, second = load()
    assert first["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": '{"name": "w"}'},
        {"role": "tool", "content": "sunny"},
        {"role": "assistant", "content": "Sunny."},
    ]
    assert first["tools"] == [{"name": "w"}]
    assert second["messages"][0] == {"role": "system", "content": "From the column."}


def test_openai_defaults_and_tool_calls(ws: Path) -> None:
    call = {"type": "function", "function": {"name": "w", "arguments": "{}"}}
    rows = [
        {
            "messages": [
                {"role": "system", "content": "S"},
                {"role": "user", "content": "U"},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "content": "sunny"},
                {"role": "assistant", "content": "A"},
            ]
        }
    ]
    dataset(ws, "o.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n", formatting="openai")
    assert load()[0]["messages"] == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U"},
        {"role": "assistant", "content": '[{"name": "w", "arguments": "{}"}]'},
        {"role": "tool", "content": "sunny"},
        {"role": "assistant", "content": "A"},
    ]


def turns(*items: Any) -> dict[str, Any]:
    return {"conversations": list(items)}


@pytest.mark.parametrize(
    ("row", "field", "message"),
    [
        (conv(("human", "hi"), ("human", "again")), "[1].from", "expected role 'gpt' after 'human', got 'human'"),
        (conv(("gpt", "hello")), "[0].from", "expected role 'human' first, got 'gpt'"),
        (conv(("system", "s"), ("gpt", "hi")), "[1].from", "expected role 'human' first, got 'gpt'"),
        (
            conv(("human", "hi"), ("gpt", "a"), ("human", "b")),
            "[2].from",
            "the last turn must be the assistant's ('gpt'), got 'human'",
        ),
        (
            conv(("human", "hi"), ("bot", "a")),
            "[1].from",
            "unknown role 'bot' (expected one of: human, gpt, observation, function_call, system)",
        ),
        (conv(("human", "hi"), ("system", "a")), "[1].from", "a system turn may only come first"),
        (conv(("human", "hi"), ("gpt", 42)), "[1].value", "expected a string, got number"),
        (conv(("human", None), ("gpt", "a")), "[0].value", "expected a string, got null"),
        (conv(), "", "empty conversation"),
        (conv(("system", "only a system prompt")), "", "empty conversation"),
        ({"conversations": "hi"}, "", "expected a list of messages, got string"),
        (turns("hi", {"from": "gpt", "value": "a"}), "[0]", "expected a message object, got string"),
        (turns({"from": "human"}, {"from": "gpt", "value": "a"}), "[0]", "missing key 'value'"),
        (turns({"value": "x"}, {"from": "gpt", "value": "a"}), "[0]", "missing key 'from'"),
        (
            conv(("human", "hi"), ("observation", "a")),
            "[1].from",
            "expected role 'gpt' after 'human', got 'observation'",
        ),
    ],
)
def test_sharegpt_row_problems(ws: Path, row: dict[str, Any], field: str, message: str) -> None:
    dataset(ws, "s.json", [conv(("human", "fine"), ("gpt", "ok")), row], **SHAREGPT)
    assert problems() == [f"data/s.json, row 2, field 'conversations{field}': {message}"]


def test_sharegpt_problems_use_the_entry_tags(ws: Path) -> None:
    rows = [{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}]
    tags = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}
    dataset(ws, "m.json", rows, formatting="sharegpt", columns={"messages": "messages"}, tags=tags)
    assert problems() == [
        "data/m.json, row 1, field 'messages[1].role': expected role 'assistant' after 'user', got 'user'"
    ]


def test_sharegpt_dpo(ws: Path) -> None:
    row = {
        **conv(("human", "2+2?")),
        "chosen": {"from": "gpt", "value": "4"},
        "rejected": {"from": "gpt", "value": "5"},
    }
    dataset(ws, "p.json", [row], **DPO_SHAREGPT)
    assert load("dpo") == [
        {
            "prompt": [{"role": "user", "content": "2+2?"}],
            "chosen": [{"role": "assistant", "content": "4"}],
            "rejected": [{"role": "assistant", "content": "5"}],
        }
    ]


def test_sharegpt_dpo_problems(ws: Path) -> None:
    good = {"from": "gpt", "value": "ok"}
    rows = [
        {**conv(("human", "q"), ("gpt", "a")), "chosen": good, "rejected": good},
        {**conv(("human", "q")), "chosen": "a plain string", "rejected": good},
        {**conv(("human", "q")), "chosen": {"from": "human", "value": "x"}, "rejected": good},
        {**conv(("human", "q")), "chosen": good},
        {**conv(("human", "q")), "chosen": good, "rejected": {"from": "gpt", "value": ""}},
    ]
    dataset(ws, "p.json", rows, **DPO_SHAREGPT)
    assert problems("dpo") == [
        "data/p.json, row 1, field 'conversations[1].from': a preference prompt must end with a user turn "
        "('human'), got 'gpt'",
        "data/p.json, row 2, field 'chosen': expected a message object like {'from': 'gpt', 'value': ...}, got string",
        "data/p.json, row 3, field 'chosen.from': expected role 'gpt', got 'human'",
        "data/p.json, row 4, field 'rejected': missing column 'rejected'",
        "data/p.json, row 5, field 'rejected.value': empty response",
    ]


def test_broken_tools_json(ws: Path) -> None:
    dataset(
        ws,
        "s.json",
        [{**conv(("human", "q"), ("gpt", "a")), "tools": "[{"}],
        formatting="sharegpt",
        columns={"tools": "tools"},
    )
    assert problems() == [
        "data/s.json, row 1, field 'tools': broken JSON in tools at column 3: "
        "Expecting property name enclosed in double quotes"
    ]


# ---------------------------------------------------------------- files


def test_broken_json_array(ws: Path) -> None:
    dataset(ws, "a.json", '[\n  {"instruction": "q", "output": "a"}\n  {"instruction": "q2"}\n]')
    assert problems() == ["data/a.json: broken JSON at line 3, column 3: Expecting ',' delimiter"]


def test_broken_jsonl_line_names_row_and_line(ws: Path) -> None:
    lines = [
        '{"instruction": "q", "output": "a"}',
        "",
        '{"instruction": "q", "output": "a",}',
        '{"instruction": 1, "output": "a"}',
    ]
    dataset(ws, "a.jsonl", "\n".join(lines) + "\n")
    assert problems() == [
        "data/a.jsonl, row 2: broken JSON on line 3, column 36: Expecting property name enclosed in double quotes",
        "data/a.jsonl, row 3, field 'instruction': expected a string, got number",
    ]  # fmt: skip


def test_json_file_holding_object_lines(ws: Path) -> None:
    dataset(ws, "a.json", '{"instruction": "q1", "output": "a"}\n{"instruction": "q2", "output": "b"}\n')
    assert [e["messages"][0]["content"] for e in load()] == ["q1", "q2"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "data/a.json: empty file"),
        ("42", "data/a.json: expected a JSON array of rows or one JSON object per line, got number"),
        ("[]", "data/a.json: no rows"),
    ],
)
def test_json_file_level_problems(ws: Path, content: str, message: str) -> None:
    dataset(ws, "a.json", content)
    assert problems() == [message]


def test_missing_file(ws: Path) -> None:
    (ws / "dataset_info.json").write_text(json.dumps({"d": {"file_name": "data/nope.json"}}))
    assert problems() == ["data/nope.json: file not found"]


def test_not_utf8(ws: Path) -> None:
    (ws / "data").mkdir()
    (ws / "data" / "a.json").write_bytes(b'[{"instruction": "caf\xe9", "output": "a"}]')
    (ws / "dataset_info.json").write_text(json.dumps({"d": {"file_name": "data/a.json"}}))
    assert problems() == ["data/a.json: not UTF-8 text (invalid continuation byte)"]


def test_csv(ws: Path) -> None:
    frame = pd.DataFrame({"question": ["2+2?", "Capital of France?"], "answer": ["4", "Paris"]})
    dataset(ws, "a.csv", frame, columns={"prompt": "question", "response": "answer"})
    assert [e["messages"] for e in load()][1] == [
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris"},
    ]


def test_bad_csv_column(ws: Path) -> None:
    frame = pd.DataFrame({"question": ["2+2?"], "answer": ["4"]})
    dataset(ws, "a.csv", frame)
    assert problems() == [
        "data/a.csv, field 'instruction': missing column 'instruction' (the file has: answer, question)",
        "data/a.csv, field 'output': missing column 'output' (the file has: answer, question)",
    ]


def test_csv_empty_cell_and_unnamed_header(ws: Path) -> None:
    dataset(ws, "a.csv", "instruction,output\nq,\n", columns={})
    assert problems() == ["data/a.csv, row 1, field 'output': empty response"]
    dataset(ws, "b.csv", "instruction,\nq,a\n")
    assert problems() == ["data/b.csv: the header has 1 empty column name(s); name every column in the first line"]


def test_parquet_sharegpt(ws: Path) -> None:
    frame = pd.DataFrame([conv(("human", "hi"), ("gpt", "hello")), conv(("human", "a"), ("gpt", "b"))])
    dataset(ws, "s.parquet", frame, formatting="sharegpt")
    assert load()[0]["messages"] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


def test_unsupported_file_type(ws: Path) -> None:
    dataset(ws, "a.xml", "<rows/>")
    assert problems() == ["data/a.xml: unsupported file type '.xml' (.json, .jsonl, .csv, .parquet, .txt)"]


# ---------------------------------------------------------------- pre-training text


def test_txt_one_example_per_non_blank_line(ws: Path) -> None:
    dataset(ws, "t.txt", "First line.\n\n   \nSecond line.\n")
    assert load("pt") == [{"text": "First line."}, {"text": "Second line."}]


def test_text_column_problems(ws: Path) -> None:
    lines = [{"text": "ok"}, {"text": ""}, {"body": "x"}, {"text": 3}]
    dataset(ws, "c.jsonl", "\n".join(json.dumps(x) for x in lines), columns={"prompt": "text"})
    assert problems("pt") == [
        "data/c.jsonl, row 2, field 'text': empty text",
        "data/c.jsonl, row 3, field 'text': missing column 'text'",
        "data/c.jsonl, row 4, field 'text': expected a string, got number",
    ]


# ---------------------------------------------------------------- stages


@pytest.mark.parametrize(
    ("entry", "stage", "message"),
    [
        (DPO_ALPACA, "sft", "dataset 'd' holds preference pairs (ranking: true): use it for dpo or rm, not sft"),
        ({}, "dpo", "dataset 'd' has no preference pairs (needs ranking: true with chosen/rejected columns): "
                    "it cannot be used for dpo"),
        ({}, "pt", "dataset 'd' is an sft dataset: it cannot be used for pt"),
        ({"columns": {"prompt": "text"}}, "sft", "dataset 'd' is a plain-text (pt) dataset: it cannot be used for sft"),
        ({}, "ppo", "unknown stage 'ppo' (expected one of: sft, dpo, pt, kto, rm, grpo)"),
    ],
)  # fmt: skip
def test_stage_mismatch_names_the_dataset(ws: Path, entry: dict[str, Any], stage: str, message: str) -> None:
    dataset(ws, "a.json", [{"instruction": "q", "output": "a"}], **entry)
    assert problems(stage) == [f"dataset_info.json, field 'd': {message}"]


# ---------------------------------------------------------------- many problems, sampling


def test_problem_list_is_capped(ws: Path) -> None:
    dataset(ws, "a.json", [{"instruction": "q", "output": i} for i in range(60)])
    found = problems()
    assert len(found) == 51
    assert found[0] == "data/a.json, row 1, field 'output': expected a string, got number"
    assert found[-1] == "data/a.json: ... and 10 more problems"


def test_num_samples_and_max_samples(ws: Path) -> None:
    rows = [{"instruction": f"q{i}", "output": "a"} for i in range(10)]
    dataset(ws, "a.json", rows, num_samples=4)
    picked = [e["messages"][0]["content"] for e in load()]
    assert len(picked) == 4 and picked == sorted(picked, key=lambda q: int(q[1:]))  # file order kept
    assert picked == [e["messages"][0]["content"] for e in load()]  # and the same every time
    dataset(ws, "a.json", rows, num_samples=25)
    assert len(load()) == 25
    dataset(ws, "a.json", rows)
    assert [e["messages"][0]["content"] for e in load(max_samples=3)] == ["q0", "q1", "q2"]
