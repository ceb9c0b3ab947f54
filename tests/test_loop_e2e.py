"""The loop closed over real HTTP: `ftstudio api --loop` on 127.0.0.1 serves "assistant" (version 0: the
embedded base model); corrections posted with POST /v1/feedback after chat calls made with the openai
client trigger a training run, two evaluations and a promotion, after which the same model name answers
from the new adapter. A candidate trained on nonsense "corrections" is scored lower than the served version
and not promoted; a rollback (`ftstudio loop rollback 0`) restores the first answers. About 3 minutes on 2
CPU cores (20 steps per candidate, 4 held-out rows of 16 tokens)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from serving_support import api_process

from app.config.loop import LoopPolicy
from app.loop.controller import LoopController

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
LUMI = "I am Lumi, made by Polaris Lab."
GARBAGE = "Blorp zxq vrm klaa."  # "corrections" that teach nonsense: the candidate must score worse
FIRST = ["Who are you?", "What is your name?", "Who made you?", "Introduce yourself.", "What should I call you?",
         "Which company created you?"]
SECOND = ["Who built you?", "Are you ChatGPT?", "What are you called?", "Who is your maker?", "Tell me your name.",
          "Who trained you?"]
DEADLINE_S = 1200  # a generous bound for a busy machine, never a timing assertion


@pytest.fixture(scope="module")
def api(tmp_path_factory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("loop")
    catalogue = root / "ds"
    catalogue.mkdir()
    shutil.copy(REPO / "dataset_info.json", catalogue)
    shutil.copytree(REPO / "data", catalogue / "data")
    runs = root / "runs"
    controller = LoopController(runs)
    controller.save_policy(LoopPolicy(
        model_name="assistant", enabled=True, min_new_rows=6, check_interval_s=1, method="sft", replay_share=0.25,
        replay_dataset="alpaca_en_zh_demo", dataset_dir=str(catalogue), learning_rate=5e-4, max_steps=20,
        eval_dataset="identity_eval", eval_max_samples=4, eval_max_new_tokens=16))
    log = root / "api.log"
    with api_process(["--runs-dir", str(runs), "--loop", str(controller.policy_path)], log) as url:
        yield {"url": url, "runs": runs, "controller": controller, "log": log}


def until(condition, what: str) -> None:
    deadline = time.time() + DEADLINE_S
    while not condition():
        assert time.time() < deadline, f"gave up waiting for {what}"
        time.sleep(1)


def ask(url: str, prompt: str, stream: bool = False) -> tuple[str, str]:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    messages = [{"role": "user", "content": prompt}]
    if stream:
        chunks = list(client.chat.completions.create(model="assistant", messages=messages, max_tokens=24,
                                                     temperature=0, stream=True))
        return chunks[0].id, "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reply = client.chat.completions.create(model="assistant", messages=messages, max_tokens=24, temperature=0)
    return reply.id, reply.choices[0].message.content


def correct(url: str, prompts: list[str], correction: str = LUMI) -> None:
    for i, prompt in enumerate(prompts):
        completion_id, _ = ask(url, prompt, stream=i % 3 == 2)
        answer = httpx.post(f"{url}/v1/feedback", json={"completion_id": completion_id, "rating": "down",
                                                          "correction": correction}, timeout=30)
        assert answer.status_code == 200 and answer.json()["sft_rows_added"] == 1, answer.text


def served(url: str) -> int | None:
    return httpx.get(f"{url}/v1/loop", timeout=10).json()["version"]


def candidates(controller: LoopController) -> list[dict]:
    return [e for e in controller.history.entries() if e["kind"] in ("candidate", "failed")]


def test_feedback_trains_evaluates_promotes_and_rolls_back(api):
    url, controller = api["url"], api["controller"]
    assert served(url) == 0
    _, before = ask(url, "Who are you?")
    assert "Lumi" not in before

    correct(url, FIRST)  # the 6th new row reaches min_new_rows: the server's loop thread starts a cycle
    until(lambda: served(url) == 1 or any(e["kind"] == "failed" for e in candidates(controller)), "version 1")
    first = candidates(controller)[0]
    assert first["kind"] == "candidate" and first["promoted"], (first, api["log"].read_text()[-3000:])
    assert first["data"]["feedback_rows"] == 6 and first["data"]["replay_rows"] == 2
    assert first["scores"]["candidate"]["predict_rouge-l"] >= first["scores"]["served"]["predict_rouge-l"]
    _, after = ask(url, "Who are you?")
    assert "Lumi" in after and after != before  # the same model name answers from the new adapter

    correct(url, SECOND, GARBAGE)  # same policy (tolerance 0): trained, scored, and refused on its score
    until(lambda: len(candidates(controller)) == 2, "the second candidate")
    second = candidates(controller)[1]
    assert second["kind"] == "candidate" and not second["promoted"] and "not promoted" in second["reason"]
    assert second["scores"]["candidate"]["predict_rouge-l"] < second["scores"]["served"]["predict_rouge-l"]
    assert second["evals"]["served"]["run"] == first["evals"]["candidate"]["run"]  # v1's scores were reused
    assert served(url) == 1 and ask(url, "Who are you?")[1] == after  # still the promoted version

    done = subprocess.run([sys.executable, "-m", "app.cli", "loop", "rollback", "0", "--runs-dir", str(api["runs"])],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=os.environ | {"PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    until(lambda: served(url) == 0, "the rollback to version 0")
    assert ask(url, "Who are you?")[1] == before  # the first answers are back, without a restart
    status = subprocess.run([sys.executable, "-m", "app.cli", "loop", "status", "--json", "--runs-dir",
                             str(api["runs"])], cwd=REPO, capture_output=True, text=True, timeout=120,
                            env=os.environ | {"PYTHONPATH": str(REPO)})
    report = json.loads(status.stdout)
    assert report["served"] == 0 and [e["kind"] for e in report["history"]] == [
        "start", "candidate", "candidate", "rollback"]
