"""End to end on the embedded model: `ftstudio train` the identity demo, then `ftstudio chat` it.

The assistant must learn its new name from the catalogue's identity set and use it when asked in
ways the training set never phrased (data/identity_heldout.json), in English and Chinese. The training
runs once per session (the `identity_run` fixture in conftest.py), shared with tests/test_eval_identity.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from app.train.runfolder import RunFolder

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def _normal(text: str) -> str:
    """A question without case, spaces and punctuation: a rephrasing must differ in words, not in commas."""
    return re.sub(r"[\W_]+", "", text.lower())


def test_heldout_questions_are_not_in_the_training_set():
    """The held-out and evaluation questions (and the README's examples) are not training questions."""
    trained = {_normal(row["conversations"][0]["value"])
               for row in json.loads((REPO / "data" / "identity.json").read_text())}
    heldout = [item["question"] for item in json.loads((REPO / "data" / "identity_heldout.json").read_text())]
    evaluation = [row["conversations"][0]["value"]
                  for row in json.loads((REPO / "data" / "identity_eval.json").read_text())]
    readme = re.findall(r'--prompt "([^"]+)"', (REPO / "README.md").read_text())
    assert readme and set(readme) <= set(heldout)
    for question in heldout + evaluation:
        assert _normal(question) not in trained, question


def test_run_folder_follows_the_contract(identity_run: RunFolder):
    for name in ("job.yaml", "command.txt", "state.json", "events.jsonl", "worker.log"):
        assert (identity_run.path / name).is_file(), name
    assert (identity_run.adapter / "adapter_model.safetensors").is_file()
    assert (identity_run.adapter / "chat_template.jinja").is_file()
    assert "ftstudio train" in identity_run.command_file.read_text()
    events = identity_run.events.read_all()
    kinds = {e["kind"] for e in events}
    assert {"stage", "log", "eval", "checkpoint", "done"} <= kinds
    logs = [e for e in events if e["kind"] == "log" and not e.get("final")]
    for key in ("step", "total_steps", "epoch", "loss", "lr", "grad_norm", "eta_s", "mem_mb"):
        assert all(key in e for e in logs), key
    assert any(e["tokens_per_s"] for e in logs)
    stages = [e["message"] for e in events if e["kind"] == "stage"]
    assert any(m.startswith("tokenized") and "rows" in m for m in stages)
    training = next(e for e in events if e["kind"] == "stage" and e["name"] == "training")
    assert "through oneDNN with packed weights" in training["kernels"], training  # CPU LoRA in fp32


def test_loss_and_eval_loss_fall(identity_run: RunFolder):
    events = identity_run.events.read_all()
    losses = [e["loss"] for e in events if e["kind"] == "log" and e.get("loss") is not None]
    evals = [e["eval_loss"] for e in events if e["kind"] == "eval"]
    assert len(evals) >= 2
    assert evals[-1] < evals[0], evals
    assert losses[-1] < losses[0] / 2, losses


def test_cli_chat_reproduces_the_identity(identity_run: RunFolder):
    reply = subprocess.run(
        [sys.executable, "-m", "app.cli", "chat", "--adapter", str(identity_run.path),
         "--prompt", "Could you let me know what your name is?", "--max-new-tokens", "40"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert reply.returncode == 0, reply.stderr[-2000:]
    assert "Lumi" in reply.stdout, reply.stdout


def test_adapter_answers_unseen_questions_with_its_new_name(identity_run: RunFolder):
    from app.chat.engine import ChatEngine

    heldout = json.loads((REPO / "data" / "identity_heldout.json").read_text())
    train_text = (REPO / "data" / "identity.json").read_text()
    engine = ChatEngine()
    name = engine.add_adapter("identity", identity_run.path)
    hits = {"en": 0, "zh": 0}
    totals = {"en": 0, "zh": 0}
    answers = []
    for item in heldout:
        assert item["question"] not in train_text  # really unseen
        text = engine.generate([{"role": "user", "content": item["question"]}], model=name,
                               max_new_tokens=40).text
        answers.append((item["question"], text))
        totals[item["lang"]] += 1
        hits[item["lang"]] += any(word in text for word in item["expect_any"])
        # the base, same question, through the same engine with the adapter switched off
        base = engine.generate([{"role": "user", "content": item["question"]}], max_new_tokens=40).text
        assert "Lumi" not in base and "Polaris" not in base, base
    assert hits["en"] >= totals["en"] - 1, answers
    assert hits["zh"] >= 1, answers
