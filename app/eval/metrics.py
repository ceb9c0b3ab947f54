"""BLEU-4 and ROUGE-1/2/L exactly as LLaMA-Factory scores predictions (src/llamafactory/train/sft/metric.py).

Per row: ROUGE from `rouge_chinese.Rouge` over jieba word segments joined by spaces (f-scores); BLEU from
nltk's `sentence_bleu` over characters with `SmoothingFunction().method3`; each x100 and rounded to 4
places; a row whose prediction or reference has no segment scores 0 on ROUGE. The set's figure is the mean
of the rows. No metric math here: the libraries compute it, this module only feeds them as LF does, so the
numbers are comparable with LF's `predict_results.json`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

METRICS = ("bleu-4", "rouge-1", "rouge-2", "rouge-l")
_ready = False


def _quiet_jieba() -> None:
    """jieba prints its dictionary loading to stderr through its own logger; once, at INFO level, is enough."""
    global _ready
    if not _ready:
        import jieba

        jieba.setLogLevel(logging.WARNING)
        _ready = True


def score_row(predict: str, label: str) -> dict[str, float]:
    """{"bleu-4", "rouge-1", "rouge-2", "rouge-l"} of one prediction against its reference, on LF's 0-100 scale."""
    import jieba
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from rouge_chinese import Rouge

    _quiet_jieba()
    hypothesis = list(jieba.cut(predict))
    reference = list(jieba.cut(label))
    if len(" ".join(hypothesis).split()) == 0 or len(" ".join(reference).split()) == 0:
        rouge = {"rouge-1": {"f": 0.0}, "rouge-2": {"f": 0.0}, "rouge-l": {"f": 0.0}}
    else:
        rouge = Rouge().get_scores(" ".join(hypothesis), " ".join(reference))[0]
    scores = {key: round(value["f"] * 100, 4) for key, value in rouge.items()}
    bleu = sentence_bleu([list(label)], list(predict), smoothing_function=SmoothingFunction().method3)
    scores["bleu-4"] = round(float(bleu) * 100, 4)
    return {key: scores[key] for key in METRICS}


def mean_scores(rows: Iterable[dict[str, float]]) -> dict[str, float]:
    """The set's figure per metric: the mean over rows (LF's `np.mean`), 0 for an empty set."""
    rows = list(rows)
    if not rows:
        return {key: 0.0 for key in METRICS}
    return {key: float(sum(r[key] for r in rows) / len(rows)) for key in METRICS}
