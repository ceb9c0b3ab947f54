"""Rendering through the chat template: assistant-only masks, built-in templates, truncation, packing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.data.errors import DataError
from app.data.render import (
    BUILTIN_TEMPLATES,
    RenderStats,
    render_segments,
    resolve_template,
    to_dpo_rows,
    tokenize_pt,
    tokenize_sft,
)

SMOL_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
END_OF_TURN = {"chatml": "<|im_end|>", "qwen": "<|im_end|>", "qwen2_5": "<|im_end|>", "llama3": "<|eot_id|>",
               "gemma": "<end_of_turn>", "gemma2": "<end_of_turn>", "gemma3": "<end_of_turn>",
               "phi4": "<|im_end|>"}
# Templates that put an empty think block before the last answer (it is part of what is trained).
THINK_PREFIX = {"qwen3": "<think>\n\n</think>\n\n", "qwen3_nothink": ""}  # thinking off: it is in the prompt

MULTI_TURN = [
    {"role": "system", "content": "You are Lumi, made by Polaris Lab."},
    {"role": "user", "content": "Who are you?"},
    {"role": "assistant", "content": "I am Lumi, an assistant made by Polaris Lab."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "2 + 2 = 4."},
    {"role": "user", "content": "Say goodbye in French."},
    {"role": "assistant", "content": "Au revoir !"},
]


@pytest.fixture
def tok(smol_tokenizer: Any) -> Iterator[Any]:
    """The session tokenizer, with its own chat template restored after each test."""
    own = smol_tokenizer.chat_template
    yield smol_tokenizer
    smol_tokenizer.chat_template = own


def masked(tokenizer: Any, row: dict[str, list[int]], value: int) -> str:
    return tokenizer.decode([t for t, m in zip(row["input_ids"], row["completion_mask"]) if m == value])


def assistant_text(messages: list[dict[str, str]], end: str) -> str:
    return "".join(m["content"] + end for m in messages if m["role"] == "assistant")


def test_embedded_tokenizer_has_a_chat_template(tok: Any) -> None:
    assert "<|im_start|>" in tok.chat_template
    assert resolve_template(tok, None) == tok.chat_template


def test_mask_covers_exactly_the_assistant_turns(tok: Any) -> None:
    rows, stats = tokenize_sft([{"messages": MULTI_TURN}], tok, cutoff_len=1024)
    assert stats == RenderStats(n_rows=1, n_truncated=0, n_dropped=0, n_tokens=len(rows[0]["input_ids"]))
    row = rows[0]
    assert len(row["input_ids"]) == len(row["completion_mask"])
    assert masked(tok, row, 1) == assistant_text(MULTI_TURN, "<|im_end|>")
    prompt_side = masked(tok, row, 0)
    for message in MULTI_TURN:
        if message["role"] != "assistant":
            assert message["content"] in prompt_side
    assert "<|im_start|>assistant\n" in prompt_side  # the generation prompt is not trained on
    assert tok.decode(row["input_ids"]) == tok.apply_chat_template(MULTI_TURN, tokenize=False)


def test_mask_with_the_templates_default_system(tok: Any) -> None:
    messages = MULTI_TURN[1:]  # no system turn: SmolLM's template adds its own
    rows, _ = tokenize_sft([{"messages": messages}], tok, cutoff_len=1024)
    assert masked(tok, rows[0], 1) == assistant_text(messages, "<|im_end|>")
    assert SMOL_SYSTEM in masked(tok, rows[0], 0)


@pytest.mark.parametrize("name", sorted(BUILTIN_TEMPLATES))
def test_builtin_templates(tok: Any, name: str) -> None:
    resolve_template(tok, name)
    assert tok.chat_template == BUILTIN_TEMPLATES[name]
    rows, _ = tokenize_sft([{"messages": MULTI_TURN}], tok, cutoff_len=1024)
    trained = masked(tok, rows[0], 1)
    answers = [m["content"] for m in MULTI_TURN if m["role"] == "assistant"]
    if name == "default":  # a space before each answer, the model's EOS after it
        assert trained == "".join(" " + a + tok.eos_token for a in answers)
    elif name in ("alpaca", "mistral"):
        assert trained == assistant_text(MULTI_TURN, tok.eos_token)
    elif name in ("deepseek3", "deepseekr1"):  # rewrites history; its end token is no special token of SmolLM2's
        assert trained == "".join(answers)
    elif name in ("phi", "phi3"):  # the closing EOS rewrites the end; <|end|> is no special token of SmolLM2's
        assert all(a in trained for a in answers) and "<|user|>" not in trained
    elif name in THINK_PREFIX:  # history answers plain, the last one after the (empty) think block
        last = THINK_PREFIX[name] + answers[-1] + "<|im_end|>"
        assert trained == "".join(a + "<|im_end|>" for a in answers[:-1]) + last
    else:
        assert trained == assistant_text(MULTI_TURN, END_OF_TURN[name])
    untrained = masked(tok, rows[0], 0)
    assert "Who are you?" in untrained and "Au revoir" not in untrained


def test_qwen_adds_its_default_system(tok: Any) -> None:
    resolve_template(tok, "qwen")
    text = tok.apply_chat_template(MULTI_TURN[1:3], tokenize=False)
    assert text.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")


def test_template_from_a_jinja_file(tok: Any, tmp_path: Path) -> None:
    path = tmp_path / "plain.jinja"
    path.write_text("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                    "{% if add_generation_prompt %}assistant: {% endif %}")  # fmt: skip
    resolve_template(tok, str(path))
    rows, _ = tokenize_sft([{"messages": MULTI_TURN[1:3]}], tok, cutoff_len=1024)
    assert masked(tok, rows[0], 1) == "I am Lumi, an assistant made by Polaris Lab."


def test_template_problems(tok: Any, tmp_path: Path) -> None:
    tok.chat_template = None
    with pytest.raises(DataError) as e:
        resolve_template(tok, None)
    message = str(e.value)
    assert message.startswith(f"{tok.name_or_path}, field 'template': the tokenizer has no chat template")
    assert "`template: chatml`" in message
    with pytest.raises(DataError, match="unknown template 'vicuna' \\(built-ins: qwen3, qwen3_nothink, qwen, "):
        resolve_template(tok, "vicuna")
    missing = tmp_path / "nope.jinja"
    with pytest.raises(DataError) as e:
        resolve_template(tok, str(missing))
    assert str(e.value) == f"{missing}, field 'template': template file not found"


def test_template_errors_name_the_example(tok: Any) -> None:
    tok.chat_template = "{% if messages|length > 2 %}{{ raise_exception('only one turn, please') }}{% endif %}x"
    good = {"messages": MULTI_TURN[1:3]}
    with pytest.raises(DataError) as e:
        tokenize_sft([good, {"messages": MULTI_TURN}], tok, cutoff_len=64)
    assert [p.row for p in e.value.problems] == [2]
    assert "only one turn, please" in str(e.value)


def test_template_that_rewrites_history_falls_back(tok: Any) -> None:
    # Only the last assistant turn is written with its end marker: a prefix render is no prefix of the whole.
    tok.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}"
        "{% if loop.last and m['role'] == 'assistant' %}<|im_end|>{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    messages = MULTI_TURN[1:]
    rows, _ = tokenize_sft([{"messages": messages}], tok, cutoff_len=1024)
    assert masked(tok, rows[0], 1) == "I am Lumi, an assistant made by Polaris Lab.2 + 2 = 4.Au revoir !<|im_end|>"


def test_truncation_and_dropping(tok: Any) -> None:
    short = {"messages": MULTI_TURN[1:3]}
    full_len = len(tokenize_sft([short], tok, cutoff_len=4096)[0][0]["input_ids"])
    prompt_len = len(tok(tok.apply_chat_template(MULTI_TURN[1:2], tokenize=False, add_generation_prompt=True),
                         add_special_tokens=False)["input_ids"])  # fmt: skip
    rows, stats = tokenize_sft([short, short], tok, cutoff_len=prompt_len + 3)
    assert stats == RenderStats(n_rows=2, n_truncated=2, n_dropped=0, n_tokens=2 * (prompt_len + 3))
    assert all(sum(r["completion_mask"]) == 3 for r in rows) and full_len > prompt_len + 3
    rows, stats = tokenize_sft([short], tok, cutoff_len=prompt_len)  # no assistant token left
    assert rows == [] and stats == RenderStats(n_rows=1, n_truncated=1, n_dropped=1, n_tokens=0)


def test_tools_reach_the_template(tok: Any) -> None:
    tok.chat_template = (
        "{% if tools %}TOOLS:{{ tools | map(attribute='name') | join(',') }}\n{% endif %}"
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    example = {"messages": MULTI_TURN[1:3], "tools": [{"name": "get_weather"}]}
    rows, _ = tokenize_sft([example], tok, cutoff_len=1024)
    assert tok.decode(rows[0]["input_ids"]).startswith("TOOLS:get_weather\n")


def test_render_segments_marks_trained_text(tok: Any) -> None:
    pieces = render_segments(tok, MULTI_TURN[1:3])
    assert [text for text, trained in pieces if trained] == [MULTI_TURN[2]["content"] + "<|im_end|>"]
    assert "".join(text for text, _ in pieces) == tok.apply_chat_template(MULTI_TURN[1:3], tokenize=False)


def test_tokenize_pt_packs_with_eos(tok: Any) -> None:
    texts = [{"text": "The island has a lighthouse."}, {"text": "Seals rest on the skerries."}] * 20
    per_text = [len(tok(t["text"], add_special_tokens=False)["input_ids"]) + 1 for t in texts]
    rows, stats = tokenize_pt(texts, tok, cutoff_len=64)
    assert stats.n_rows == 40 and stats.n_tokens == sum(per_text) and stats.n_dropped == 0
    assert all(len(r["input_ids"]) == 64 for r in rows[:-1]) and 2 <= len(rows[-1]["input_ids"]) <= 64
    stream = [t for r in rows for t in r["input_ids"]]
    assert stream.count(tok.eos_token_id) == 40
    assert tok.decode(stream[: per_text[0]]) == "The island has a lighthouse." + tok.eos_token


def test_to_dpo_rows_keeps_conversational_rows() -> None:
    example = {
        "prompt": [{"role": "user", "content": "2+2?"}],
        "chosen": [{"role": "assistant", "content": "4"}],
        "rejected": [{"role": "assistant", "content": "5"}],
    }
    assert to_dpo_rows([example]) == [example]


def test_family_names_keep_the_tokenizers_own_template_of_that_family(tok: Any) -> None:
    own = BUILTIN_TEMPLATES["qwen3"].replace("<|im_start|>system", "<|im_start|>system ")  # a newer own version
    tok.chat_template = own
    assert resolve_template(tok, "qwen3") == own  # same family: the tokenizer's own
    tok.chat_template = own
    assert resolve_template(tok, "llama3") == BUILTIN_TEMPLATES["llama3"]  # another family: bundled
    tok.chat_template = own
    assert resolve_template(tok, "chatml") == BUILTIN_TEMPLATES["chatml"]  # a generic format: always bundled


def test_thinking_off_is_written_into_the_template(tok: Any) -> None:
    resolve_template(tok, "qwen3", enable_thinking=False)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    resolve_template(tok, "qwen3", enable_thinking=True)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    resolve_template(tok, "llama3", enable_thinking=False)  # no thinking switch: unchanged
    assert tok.chat_template == BUILTIN_TEMPLATES["llama3"]


def test_a_datasets_system_column_reaches_the_prompt(tok: Any, tmp_path: Path) -> None:
    import json

    from app.data.catalogue import load_catalogue
    from app.data.formats import load_examples

    (tmp_path / "d.json").write_text(json.dumps([{"instruction": "Hi", "output": "Hello", "sys": "Be brief."}]))
    (tmp_path / "dataset_info.json").write_text(json.dumps(
        {"d": {"file_name": "d.json", "columns": {"prompt": "instruction", "response": "output", "system": "sys"}}}))
    example = load_examples(load_catalogue(tmp_path)["d"], "sft")[0]
    resolve_template(tok, "llama3")
    rows, _ = tokenize_sft([example], tok, cutoff_len=1024)
    assert "<|start_header_id|>system<|end_header_id|>\n\n" in masked(tok, rows[0], 0)
    assert "Be brief.<|eot_id|>" in masked(tok, rows[0], 0)
