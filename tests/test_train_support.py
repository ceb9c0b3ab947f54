"""Helpers shared by the training tests (plain functions, imported by the test_train_* modules).

A tiny random llama (2 layers, hidden 64) with SmolLM2's tokenizer and chat template trains in a
fraction of a second per step on CPU: the distributed, freeze and QLoRA tests use it for their
mechanics. Tests that need a model which knows language (DPO, pre-training) use the embedded one.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
from contextlib import contextmanager
from pathlib import Path

QUESTIONS = ["Who are you?", "What is your name?", "Introduce yourself.", "Who made you?",
             "Tell me about yourself.", "What should I call you?", "Which lab built you?", "Are you a robot?"]
ANSWER = "I am Lumi, an assistant made by Polaris Lab."
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def make_tiny_model(folder: Path) -> Path:
    """A 2-layer llama with SmolLM2's vocabulary, random weights (seed 0), saved as float32 safetensors."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from app.models.source import embedded_model_dir

    source = embedded_model_dir()
    config = AutoConfig.from_pretrained(source)
    config.update(dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=16))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    for name in TOKENIZER_FILES:
        shutil.copy(source / name, folder / name)
    return folder


def load_tiny_model(folder: Path):
    """`make_tiny_model(folder)` loaded in float32 for training steps (no KV cache)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(make_tiny_model(folder), dtype=torch.float32)
    model.config.use_cache = False
    return model


def make_tiny_catalogue(root: Path) -> Path:
    """dataset_info.json with `tiny`: 8 questions, one answer (a loss that falls within a few steps)."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    rows = [{"instruction": q, "input": "", "output": ANSWER} for q in QUESTIONS]
    (root / "data" / "tiny.json").write_text(json.dumps(rows))
    (root / "dataset_info.json").write_text(json.dumps({"tiny": {"file_name": "data/tiny.json"}}))
    return root


@contextmanager
def isolated_worker():
    """Run app.train.worker.run_job in this process, leaving signal handlers, logging and threads as found.

    One torch thread: the test process may have loaded torch before app.train could ask OpenMP for
    passive waiting (see app/train/__init__.py), and spinning threads on a busy machine are up to 9x
    slower than one thread."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        root.setLevel(level)
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        torch.set_num_threads(threads)


def run_in_process(job) -> int:
    from app.train.worker import run_job

    with isolated_worker():
        return run_job(job)


def step_logs(events: list[dict]) -> list[dict]:
    return [e for e in events if e["kind"] == "log" and not e.get("final")]


def test_tiny_model_is_tiny(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    folder = make_tiny_model(tmp_path / "tiny")
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.num_hidden_layers == 2
    assert sum(p.numel() for p in model.parameters()) < 4_000_000
    assert torch.isfinite(model(input_ids=torch.tensor([[1, 2, 3]])).logits).all()
