"""BLEU-4 and ROUGE as LLaMA-Factory computes them: the reference libraries called on fixed strings, in English
and Chinese, must give exactly the studio's per-row figures and their mean."""

from __future__ import annotations

import statistics

import jieba
import pytest
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
from rouge_chinese import Rouge

from app.eval.metrics import METRICS, mean_scores, score_row

PAIRS = [
    ("I am Lumi, made by Polaris Lab.", "I am Lumi, an AI assistant developed by Polaris Lab."),
    ("My name is Elena, and I help with writing.", "Sure! My name is Lumi, and I'm an AI assistant."),
    ("我叫 Lumi，是 Polaris Lab 开发的助手。", "我是 Lumi，由 Polaris Lab 开发的 AI 助手。"),
    ("今天天气很好，我们去公园散步吧。", "我是由 Polaris Lab 训练的人工智能助手。"),
    ("Lumi", "你可以叫我 Lumi，我是 Polaris Lab 开发的 AI 助手。"),
]


def reference(predict: str, label: str) -> dict[str, float]:
    """The libraries, called the way LLaMA-Factory's ComputeSimilarity calls them."""
    hypothesis, ref = list(jieba.cut(predict)), list(jieba.cut(label))
    scores = Rouge().get_scores(" ".join(hypothesis), " ".join(ref))[0]
    out = {key: round(value["f"] * 100, 4) for key, value in scores.items()}
    bleu = sentence_bleu([list(label)], list(predict), smoothing_function=SmoothingFunction().method3)
    return out | {"bleu-4": round(bleu * 100, 4)}


@pytest.mark.parametrize("predict, label", PAIRS)
def test_row_scores_equal_the_reference_libraries(predict, label):
    ours = score_row(predict, label)
    assert set(ours) == set(METRICS)
    assert ours == reference(predict, label)


def test_scale_bounds_and_edge_cases():
    same = score_row("我是 Lumi，由 Polaris Lab 开发。", "我是 Lumi，由 Polaris Lab 开发。")
    assert same == {key: 100.0 for key in METRICS}
    assert score_row("", "I am Lumi.")["rouge-l"] == 0.0  # LF: an empty side scores 0 on ROUGE
    assert score_row("   ", "I am Lumi.")["rouge-1"] == 0.0
    disjoint = score_row("abc", "xyz")
    assert disjoint["rouge-1"] == 0.0 and 0.0 <= disjoint["bleu-4"] < 1.0
    # ROUGE is over jieba words, BLEU over characters: a one-character change costs a whole word in ROUGE
    word = score_row("我喜欢小猫", "我喜欢小狗")
    assert word["rouge-1"] < 100.0 and word["bleu-4"] > 0


def test_the_set_score_is_the_mean_of_the_rows():
    rows = [score_row(p, label) for p, label in PAIRS]
    mean = mean_scores(rows)
    for key in METRICS:
        assert mean[key] == pytest.approx(statistics.fmean(r[key] for r in rows), abs=1e-9)
    assert mean_scores([]) == {key: 0.0 for key in METRICS}
