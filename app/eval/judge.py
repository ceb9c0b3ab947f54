"""Pairwise LLM-as-judge: which of two evaluation runs answered each row better, by any OpenAI-compatible model.

Every row is judged twice: once with run A's answer in the first position, once with the positions swapped.
A judge that prefers whatever comes first (a common bias of LLM judges) then cancels itself out: each order
gives +1 to the answer it prefers (0 for a tie or an unreadable verdict), and A's outcome on the row is
win (> 0), tie (0) or loss (< 0) over both orders.

Written into run A's folder: `judge_vs_<B>.jsonl` (both verdicts of every row, raw and parsed) and, in its
predict_results.json, judge_win_rate / judge_tie_rate / judge_loss_rate (0-1), judge_samples, judge_model,
judge_baseline. The API key is read from the environment variable the config names, never written down.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from app.atomic import write_text_atomic
from app.config import JudgeConfig
from app.eval.results import predictions_file, read_predictions, update_results

RUBRICS = {
    "en": "Judge which answer serves the user better. Prefer the answer that is correct, agrees with the reference "
          "answer in substance (names, facts, figures), and answers the question directly and helpfully in the "
          "question's language. Do not prefer an answer for being longer, or for coming first.",
    "zh": "判断哪个回答对用户更有帮助。优先选择内容正确、在实质上（名称、事实、数字）与参考答案一致、"
          "直接而有用地回答问题，并且使用与问题相同语言的回答。不要因为回答更长或排在前面而偏向它。",
}
PROMPTS = {
    "en": ("You are an impartial judge comparing two answers to the same question.\n\n{rubric}\n\n"
           "[Question]\n{question}\n\n[Reference answer]\n{reference}\n\n"
           "[Answer 1]\n{first}\n\n[Answer 2]\n{second}\n\n"
           "Explain briefly, then end with one line: `Verdict: 1`, `Verdict: 2` or `Verdict: tie`."),
    "zh": ("你是一名公正的评审，需要比较同一问题的两个回答。\n\n{rubric}\n\n"
           "【问题】\n{question}\n\n【参考答案】\n{reference}\n\n【回答 1】\n{first}\n\n【回答 2】\n{second}\n\n"
           "请简要说明理由，最后单独一行写出：`Verdict: 1`、`Verdict: 2` 或 `Verdict: tie`。"),
}
OUTCOMES = ("win", "tie", "loss")
_VERDICT = re.compile(r"(?:verdict|结论|判定)\s*[:：]?\s*\**\s*(1|2|tie|平局|平手)", re.IGNORECASE)

Progress = Callable[[int, int], None]


class JudgeError(RuntimeError):
    """The judge cannot run: unreachable endpoint, refused key, runs that do not match; the message says which."""


def rubric_text(config: JudgeConfig) -> str:
    """The config's rubric (text or a file), else the built-in one in judge_language."""
    rubric = (config.rubric or "").strip()
    if not rubric:
        return RUBRICS[config.judge_language]
    path = Path(rubric).expanduser()
    if len(rubric) < 4096 and "\n" not in rubric and path.suffix in (".txt", ".md") and path.is_file():
        return path.read_text(encoding="utf-8").strip()
    return rubric


def parse_verdict(text: str) -> str | None:
    """"1", "2" or "tie" from a judge reply (its last `Verdict:` line wins), None when unreadable."""
    found = _VERDICT.findall(text or "")
    if found:
        last = found[-1].lower()
        return last if last in ("1", "2") else "tie"
    bare = (text or "").strip().strip("`*.").lower()
    return bare if bare in ("1", "2", "tie") else None


def combine(a_first: str | None, b_first: str | None) -> str:
    """A's outcome over both orders: a_first judged (A, B) in that order, b_first judged (B, A)."""
    score = {"1": 1, "2": -1}.get(a_first or "", 0) + {"1": -1, "2": 1}.get(b_first or "", 0)
    return "win" if score > 0 else "loss" if score < 0 else "tie"


def paired_rows(config: JudgeConfig) -> tuple[Path, list[dict[str, Any]]]:
    """(A's folder, rows with question, reference, answer_a, answer_b); the runs must share their rows."""
    try:
        file_a, file_b = predictions_file(config.predictions), predictions_file(config.baseline)
    except FileNotFoundError as exc:
        raise JudgeError(str(exc)) from None
    rows_a, rows_b = read_predictions(file_a), read_predictions(file_b)
    if len(rows_a) != len(rows_b):
        raise JudgeError(f"{file_a} has {len(rows_a)} rows and {file_b} {len(rows_b)}: judge runs on the same set")
    paired = []
    for a, b in zip(rows_a, rows_b):
        if a.get("label") != b.get("label"):
            raise JudgeError(f"row {a.get('index')}: the references differ between {file_a} and {file_b}; "
                             "evaluate both models on the same eval_dataset and max_samples")
        paired.append({"index": a.get("index"), "question": a.get("question") or a.get("prompt", ""),
                       "reference": a.get("label", ""), "answer_a": a.get("predict", ""),
                       "answer_b": b.get("predict", "")})
    limit = config.max_samples or len(paired)
    return file_a.parent, paired[:limit]


def _client(config: JudgeConfig) -> Any:
    from openai import OpenAI

    key = os.environ.get(config.judge_api_key_env) or "EMPTY"  # local servers accept any key
    return OpenAI(base_url=config.judge_base_url, api_key=key, timeout=config.judge_timeout_s, max_retries=1)


def _model(config: JudgeConfig, client: Any) -> str:
    if config.judge_model:
        return config.judge_model
    listed = client.models.list().data
    if not listed:
        raise JudgeError(f"{config.judge_base_url} lists no model: set judge_model")
    return listed[0].id


def _ask(client: Any, model: str, config: JudgeConfig, rubric: str, row: dict[str, Any], swapped: bool) -> str:
    first, second = (row["answer_b"], row["answer_a"]) if swapped else (row["answer_a"], row["answer_b"])
    prompt = PROMPTS[config.judge_language].format(rubric=rubric, question=row["question"],
                                                   reference=row["reference"], first=first, second=second)
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                           temperature=0.0, max_tokens=config.judge_max_tokens)
    return reply.choices[0].message.content or ""


def _explain(exc: Exception, config: JudgeConfig) -> JudgeError:
    import openai

    if isinstance(exc, openai.AuthenticationError):
        return JudgeError(f"{config.judge_base_url} refused the API key: put it in the environment variable "
                          f"{config.judge_api_key_env} (judge_api_key_env names the variable)")
    if isinstance(exc, openai.APITimeoutError):
        return JudgeError(f"the judge at {config.judge_base_url} gave no reply within {config.judge_timeout_s:g} s: "
                          "raise judge_timeout_s, or lower judge_concurrency for a server that answers one at a time")
    if isinstance(exc, openai.APIConnectionError):
        return JudgeError(f"cannot reach the judge at {config.judge_base_url} ({exc}); start it, e.g. `ftstudio api`")
    if isinstance(exc, openai.APIStatusError):
        return JudgeError(f"the judge at {config.judge_base_url} answered {exc.status_code}: {exc.message}")
    return JudgeError(f"{type(exc).__name__}: {exc}")


def run_judge(config: JudgeConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Judge every row in both orders; write the verdicts and A's rates; return the summary."""
    folder, rows = paired_rows(config)
    if not rows:
        raise JudgeError(f"{folder}: no rows to judge")
    rubric = rubric_text(config)
    client = _client(config)
    try:
        model = _model(config, client)
    except JudgeError:
        raise
    except Exception as exc:  # noqa: BLE001 - openai's errors, as one readable line
        raise _explain(exc, config) from None
    jobs = [(row, swapped) for row in rows for swapped in (False, True)]
    replies: dict[tuple[int, bool], str] = {}
    with ThreadPoolExecutor(max_workers=config.judge_concurrency) as pool:
        futures = {pool.submit(_ask, client, model, config, rubric, row, swapped): (i, swapped)
                   for i, (row, swapped) in enumerate((r, s) for r, s in jobs)}
        for done, future in enumerate(futures, 1):
            try:
                replies[futures[future]] = future.result()
            except Exception as exc:  # noqa: BLE001
                pool.shutdown(cancel_futures=True)
                raise _explain(exc, config) from None
            if progress:
                progress(done, len(futures))
    verdicts = []
    for k, row in enumerate(rows):
        a_first, b_first = replies[(2 * k, False)], replies[(2 * k + 1, True)]
        parsed = (parse_verdict(a_first), parse_verdict(b_first))
        verdicts.append(row | {"a_first": {"reply": a_first, "verdict": parsed[0]},
                               "b_first": {"reply": b_first, "verdict": parsed[1]}, "outcome": combine(*parsed)})
    return _save(config, folder, model, verdicts)


def _save(config: JudgeConfig, folder: Path, model: str, verdicts: list[dict[str, Any]]) -> dict[str, Any]:
    import json

    baseline = Path(config.baseline).expanduser()
    name = (baseline.parent.name if baseline.is_file() else baseline.name) or "baseline"
    file = folder / f"judge_vs_{re.sub(r'[^A-Za-z0-9_.@-]+', '-', name)}.jsonl"
    write_text_atomic(file, "".join(json.dumps(v, ensure_ascii=False) + "\n" for v in verdicts))
    n = len(verdicts)
    rates = {f"judge_{o}_rate": round(sum(v["outcome"] == o for v in verdicts) / n, 4) for o in OUTCOMES}
    unread = sum((v["a_first"]["verdict"] is None) + (v["b_first"]["verdict"] is None) for v in verdicts)
    summary = rates | {"judge_samples": n, "judge_unreadable_rate": round(unread / (2 * n), 4), "judge_model": model,
                       "judge_base_url": config.judge_base_url, "judge_baseline": str(baseline),
                       "judge_file": file.name}
    update_results(folder, summary)
    return summary
