"""The embedded SmolLM2-135M-Instruct exported to GGUF keeps its predictions (slow: real 135M model)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.export.pipeline import export


@pytest.fixture(scope="session")
def smol_dir() -> Path:
    """Float32 safetensors copy of the embedded model (converted once, cached under ~/.cache/ftstudio)."""
    from app.models.source import ModelSourceError, resolve_model_path

    try:
        return resolve_model_path(None)
    except ModelSourceError as exc:
        pytest.skip(str(exc))


@pytest.mark.slow
@pytest.mark.parametrize("quant", ["f16", "q8_0"])
def test_embedded_model_gguf_fidelity(smol_dir: Path, tmp_path: Path, quant: str) -> None:
    report = export(smol_dir, fmt="gguf", quant=quant, output_dir=tmp_path)
    fid = report["fidelity"]
    assert report["passed"], fid
    assert fid["agreement"] >= (0.99 if quant == "f16" else fid["target"])
    assert fid["n_tokens"] > 400
    if quant == "f16":
        assert abs(fid["ppl_change_pct"]) < 0.5
    if fid["backend"] == "llama_cpp":
        assert fid["tokenizer_match"] is True
    gguf = report["gguf"]
    assert (gguf["architecture"], gguf["tokenizer"], gguf["pre_tokenizer"]) == ("llama", "gpt2", "smollm")
    assert gguf["eos_token_id"] == 2 and gguf["chat_template"] and gguf["context_length"] == 8192
    modelfile = (tmp_path / "Modelfile").read_text()
    assert f"FROM ./{smol_dir.name}-{quant}.gguf" in modelfile
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in modelfile
    assert not (tmp_path / "merged").exists(), "a full model is converted in place, not copied"
