"""The pairwise judge: verdict parsing, position swapping that cancels a judge's order bias, and a real run
against the studio's own OpenAI-compatible API (`ftstudio api`, the embedded model as the judge) over HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from browser_support import free_port
from test_eval_compare import QUESTIONS, REFERENCES, fake_run

from app.config import JudgeConfig
from app.eval.judge import JudgeError, combine, paired_rows, parse_verdict, rubric_text, run_judge
from app.eval.results import read_jsonl, read_results

REPO = Path(__file__).resolve().parents[1]


def test_verdicts_are_read_from_the_last_verdict_line():
    assert parse_verdict("Answer 1 names Lumi.\nVerdict: 1") == "1"
    assert parse_verdict("Verdict: 1 ... on reflection\n**Verdict: 2**") == "2"
    assert parse_verdict("两个回答都正确。\n结论：平局") == "tie"
    assert parse_verdict("Verdict: TIE") == "tie"
    assert parse_verdict("2") == "2"
    assert parse_verdict("I cannot decide.") is None


def test_swapped_positions_cancel_a_judge_that_always_prefers_one_position():
    assert combine("1", "2") == "win"  # A first: A; B first: the second one, A
    assert combine("2", "1") == "loss"
    for always in ("1", "2"):  # a judge that only looks at the position: every row a tie
        assert combine(always, always) == "tie"
    assert combine("1", "tie") == "win" and combine(None, "1") == "loss" and combine(None, None) == "tie"


def test_the_rubric_is_editable_with_english_and_chinese_defaults(tmp_path):
    assert "reference" in rubric_text(JudgeConfig(predictions="a", baseline="b"))
    assert "参考答案" in rubric_text(JudgeConfig(predictions="a", baseline="b", judge_language="zh"))
    assert rubric_text(JudgeConfig(predictions="a", baseline="b", rubric="Shorter is better.")) == "Shorter is better."
    file = tmp_path / "rubric.md"
    file.write_text("Prefer polite answers.\n")
    assert rubric_text(JudgeConfig(predictions="a", baseline="b", rubric=str(file))) == "Prefer polite answers."


def test_runs_must_share_their_rows(tmp_path):
    a = fake_run(tmp_path, "a", REFERENCES)
    b = fake_run(tmp_path, "b", ["x", "y", "z"], ["p", "q", "r"])
    with pytest.raises(JudgeError, match="references differ"):
        paired_rows(JudgeConfig(predictions=str(a), baseline=str(b)))
    folder, rows = paired_rows(JudgeConfig(predictions=str(a), baseline=str(a / "generated_predictions.jsonl"),
                                           max_samples=2))
    assert folder == a and [r["question"] for r in rows] == QUESTIONS[:2]


@pytest.fixture(scope="module")
def studio_api(tmp_path_factory):
    """`ftstudio api` on a free loopback port with a bearer key: the embedded model as the judge."""
    port, key = free_port(), "judge-test-key"
    log = open(tmp_path_factory.mktemp("api") / "api.log", "wb")
    env = os.environ | {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "api", "--port", str(port), "--api-key", key],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            assert proc.poll() is None, "ftstudio api exited"
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5):
                    break
            except OSError:
                assert time.time() < deadline, "ftstudio api did not answer"
                time.sleep(1)
        yield {"base_url": f"{url}/v1", "key": key}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()


@pytest.mark.slow
def test_judge_against_the_studios_own_api(studio_api, tmp_path, monkeypatch):
    tuned = fake_run(tmp_path, "eval-lumi", REFERENCES)
    base = fake_run(tmp_path, "eval-base", ["I am SmolLM.", "我是一个助手。", "I do not know."])
    # two rows, short verdicts, generous timeouts: the API answers one request at a time on a busy 2-core box
    config = JudgeConfig(predictions=str(tuned), baseline=str(base), judge_base_url=studio_api["base_url"],
                         judge_api_key_env="FTSTUDIO_JUDGE_TEST_KEY", judge_max_tokens=16, judge_concurrency=1,
                         judge_timeout_s=900, max_samples=2)
    monkeypatch.delenv("FTSTUDIO_JUDGE_TEST_KEY", raising=False)
    with pytest.raises(JudgeError, match="FTSTUDIO_JUDGE_TEST_KEY"):  # no key: the error names the variable
        run_judge(config)
    monkeypatch.setenv("FTSTUDIO_JUDGE_TEST_KEY", studio_api["key"])
    seen: list[tuple[int, int]] = []
    summary = run_judge(config, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (4, 4)  # two rows, each judged in both orders
    verdicts = read_jsonl(tuned / "judge_vs_eval-base.jsonl")
    assert [v["question"] for v in verdicts] == QUESTIONS[:2]
    for v in verdicts:
        assert v["a_first"]["reply"] and v["b_first"]["reply"]  # a real reply for each order
        assert v["outcome"] == combine(v["a_first"]["verdict"], v["b_first"]["verdict"])
    rates = [summary[f"judge_{o}_rate"] for o in ("win", "tie", "loss")]
    assert sum(rates) == pytest.approx(1.0) and summary["judge_samples"] == 2
    from openai import OpenAI

    listed = OpenAI(base_url=studio_api["base_url"], api_key=studio_api["key"]).models.list().data
    assert summary["judge_model"] == listed[0].id  # judge_model empty: the first model the endpoint lists
    results = read_results(tuned)
    assert results["judge_win_rate"] == summary["judge_win_rate"] and results["predict_rouge-l"] == 100.0
    assert studio_api["key"] not in json.dumps(results) + (tuned / "judge_vs_eval-base.jsonl").read_text()
