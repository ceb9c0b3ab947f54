"""Dataset insight: the figures of a small fixture equal hand-counted values; a demo set under the real
template has its known row count; the cache answers by content, not by file name or time."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from app.data.catalogue import load_catalogue
from app.data.insight import Insight, clear_memory_cache, dataset_insight, near_duplicate_pairs

FIXTURES = Path(__file__).parent / "fixtures" / "insight"
REPO = Path(__file__).resolve().parent.parent

# One token per whitespace-separated word: every count below can be checked with a finger.
WORD_TEMPLATE = ("{% for m in messages %}<s> {{ m['role'] }} {{ m['content'] }} </s> {% endfor %}"
                 "{% if add_generation_prompt %}<s> assistant {% endif %}")


@pytest.fixture(scope="module")
def word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({"[UNK]": 0, "<s>": 1, "</s>": 2}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", bos_token="<s>", eos_token="</s>")
    tokenizer.chat_template = WORD_TEMPLATE
    return tokenizer


def fixture_spec(folder: Path = FIXTURES):
    return load_catalogue(folder)["insight_demo"]


def test_fixture_statistics_equal_hand_counts(word_tokenizer):
    insight, cached = dataset_insight(fixture_spec(), word_tokenizer, "word-level")
    assert not cached
    assert (insight.rows, insight.valid_rows, insight.n_problems) == (10, 9, 1)
    assert "row 8" in insight.problems[0] and "output" in insight.problems[0]  # the empty answer
    # <s> user WORDS </s> <s> assistant = words + 5 (a system turn adds its words + 3); answer = words + </s>
    assert insight.prompt_tokens == [11, 11, 12, 11, 6, 6, 22, 20, 8]
    assert insight.response_tokens == [7, 7, 8, 10, 2, 2, 9, 16, 13]
    assert insight.total_tokens == [18, 18, 20, 21, 8, 8, 31, 36, 21]
    assert insight.truncated(20) == 4 and insight.truncated(32) == 1 and insight.truncated(36) == 0
    assert insight.suggested_cutoff() == 48  # 9 rows: 99% needs all 9, the longest is 36 -> next multiple of 16
    assert insight.exact_duplicates == 1  # row 2 repeats row 1
    assert insight.repeated_prompts == 1  # row 4: row 1's question, another answer
    assert insight.near_duplicates == 1  # row 3: "capital city of France" ~ "capital of France"
    assert {(row, earlier) for row, earlier, _ in insight.near_duplicate_pairs} == {(3, 1), (3, 2)}
    # input: blank in 6 rows, missing in 3; system: missing in 8, blank in 1; output: row 8
    assert insight.empty_fields == {"input": 9, "output": 1, "system": 9}
    assert insight.languages == {"en": 7, "zh": 2}
    hist = insight.histogram("total", bins=4)
    assert [h[2] for h in hist] == [2, 2, 3, 2] and hist[0][0] == 0 and hist[-1][1] >= 36
    summary = insight.summary(cutoff_len=20)
    assert summary["truncated"] == 4 and summary["suggested_cutoff_len"] == 48
    assert summary["tokens"]["total"]["max"] == 36


def test_cache_by_content_not_by_path(word_tokenizer, tmp_path):
    clear_memory_cache()
    first, cached = dataset_insight(fixture_spec(), word_tokenizer, "word-level", cache_dir=tmp_path / "cache")
    assert not cached and len(list((tmp_path / "cache").glob("*.json"))) == 1
    clear_memory_cache()  # a new process: the disk copy answers
    again, cached = dataset_insight(fixture_spec(), word_tokenizer, "word-level", cache_dir=tmp_path / "cache")
    assert cached and again.total_tokens == first.total_tokens
    copy = tmp_path / "copy"
    shutil.copytree(FIXTURES, copy)
    _, cached = dataset_insight(fixture_spec(copy), word_tokenizer, "word-level", cache_dir=tmp_path / "cache")
    assert cached  # same bytes elsewhere: same fingerprint
    data = copy / "insight_demo.jsonl"
    data.write_text(data.read_text(encoding="utf-8").replace("Paris.", "Paris!", 1), encoding="utf-8")
    changed, cached = dataset_insight(fixture_spec(copy), word_tokenizer, "word-level", cache_dir=tmp_path / "cache")
    assert not cached and changed.fingerprint != first.fingerprint
    _, cached = dataset_insight(fixture_spec(), word_tokenizer, "another-model", cache_dir=tmp_path / "cache")
    assert not cached
    stored = json.loads(next((tmp_path / "cache").glob("*.json")).read_text(encoding="utf-8"))
    assert Insight.from_json(stored).rows == 10


def test_near_duplicates_on_fixed_strings():
    texts = ["what is the capital of france?", "how do i boil an egg?", "which is the capital of france?",
             "tell me the capital of france."]
    pairs = near_duplicate_pairs(texts, 0.9)
    assert [(i, j) for i, j, _ in pairs] == [(2, 0)] and 0.9 <= pairs[0][2] < 1


def test_demo_set_under_the_embedded_template(smol_tokenizer):
    spec = load_catalogue(REPO)["alpaca_en_zh_demo"]
    insight, _ = dataset_insight(spec, smol_tokenizer, "SmolLM2-135M-Instruct")
    assert insight.rows == insight.valid_rows == 80  # the README's count
    # 40 English and 40 Chinese rows; the detector may misread a row made mostly of numbers
    assert insight.languages.get("zh", 0) >= 39 and insight.languages.get("en", 0) >= 38
    assert all(p > 0 and r > 0 for p, r in zip(insight.prompt_tokens, insight.response_tokens))
    cutoff = insight.suggested_cutoff()
    assert cutoff % 16 == 0 and insight.truncated(cutoff) <= 0.01 * 80


@pytest.mark.slow
def test_cli_stats_of_a_demo_set(capsys):
    from app.cli import main

    assert main(["data", "stats", "identity", "--dataset-dir", str(REPO), "--cutoff_len", "64", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows"] == report["valid_rows"] == 84 and report["cutoff_len"] == 64
    assert report["languages"] == {"en": 53, "zh": 31}  # the set's 53 English and 31 Chinese rows
    assert 0 < report["truncated"] < 84 and report["suggested_cutoff_len"] % 16 == 0
    assert sum(n for _, _, n in report["histograms"]["prompt"]) == 84
    assert main(["data", "stats", "no_such_set", "--dataset-dir", str(REPO)]) == 1
    assert "unknown dataset 'no_such_set'" in capsys.readouterr().err
