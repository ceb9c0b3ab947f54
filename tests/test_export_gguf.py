"""GGUF writer: tiny llama / qwen2 / mistral models round-trip through GGUF with their metadata intact."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_export_helpers import build_spm_tokenizer, build_tiny_model

from app.export import llamacpp
from app.export.errors import ExportError
from app.export.fidelity import DEFAULT_TEXTS, check_fidelity
from app.export.gguf_vocab import detect_pre_tokenizer
from app.export.gguf_writer import gguf_metadata, reverse_hf_permute, write_gguf

HAS_LLAMA_CPP = llamacpp.available()
# GGUF architecture and BPE pre-tokenizer each tiny model must get. The qwen2 folder's tokenizer is
# SmolLM2's vocabulary, but transformers loads it as a Qwen2Tokenizer with Qwen2's split regex.
EXPECTED = {"llama": ("llama", "smollm"), "qwen2": ("qwen2", "qwen2"), "mistral": ("llama", "smollm")}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, smol_tokenizer: Any) -> Any:
    """tiny(arch) -> folder of a small trained model with the SmolLM2 tokenizer (built once per arch)."""
    root = tmp_path_factory.mktemp("tiny-models")
    cache: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in cache:
            cache[arch] = build_tiny_model(root / f"tiny-{arch}", arch, smol_tokenizer)
        return cache[arch]

    return get


@pytest.mark.parametrize("quant", ["f16", "q8_0"])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_gguf_roundtrip(tiny: Any, smol_tokenizer: Any, arch: str, quant: str, tmp_path: Path) -> None:
    model_dir = tiny(arch)
    steps: list[tuple[float, str]] = []
    path = write_gguf(
        model_dir, tmp_path / f"tiny-{arch}-{quant}.gguf", quant, progress=lambda f, m: steps.append((f, m))
    )

    meta = gguf_metadata(path)
    gguf_arch, pre = EXPECTED[arch]
    config = json.loads((model_dir / "config.json").read_text())
    assert meta["general.architecture"] == gguf_arch
    assert meta["general.file_type"] == {"f16": 1, "q8_0": 7}[quant]
    assert meta[f"{gguf_arch}.block_count"] == 2
    assert meta[f"{gguf_arch}.embedding_length"] == 64
    assert meta[f"{gguf_arch}.feed_forward_length"] == 128
    assert meta[f"{gguf_arch}.attention.head_count"] == 4
    assert meta[f"{gguf_arch}.attention.head_count_kv"] == 2
    assert meta[f"{gguf_arch}.context_length"] == 1024
    assert meta[f"{gguf_arch}.vocab_size"] == len(smol_tokenizer)
    assert meta[f"{gguf_arch}.rope.freq_base"] == pytest.approx(config["rope_parameters"]["rope_theta"])
    assert meta[f"{gguf_arch}.attention.layer_norm_rms_epsilon"] == pytest.approx(config["rms_norm_eps"])
    assert meta["tokenizer.ggml.model"] == "gpt2"
    assert meta["tokenizer.ggml.pre"] == pre
    assert meta["tokenizer.ggml.tokens"] == f"[{len(smol_tokenizer)} items]"
    assert meta["tokenizer.ggml.eos_token_id"] == smol_tokenizer.eos_token_id
    assert meta["tokenizer.ggml.bos_token_id"] == smol_tokenizer.bos_token_id
    assert meta["tokenizer.ggml.add_bos_token"] is False  # SmolLM2 adds no BOS to plain text
    assert meta["tokenizer.chat_template"] == smol_tokenizer.chat_template

    tensors = meta["tensor_types"]
    assert ("output.weight" in tensors) == (arch != "llama")  # the llama tiny model ties its embeddings
    assert ("blk.0.attn_q.bias" in tensors) == (arch == "qwen2")
    assert tensors["blk.0.attn_norm.weight"] == "F32"  # norms stay f32 as in llama.cpp
    assert tensors["blk.0.ffn_up.weight"] == quant.upper()
    assert len(tensors) == meta["tensor_count"] == 2 + 9 * 2 + (arch != "llama") + 3 * 2 * (arch == "qwen2")
    assert steps[-1][0] == 1.0 and any("attn_q" in m for _, m in steps)

    result = check_fidelity(model_dir, path)
    assert result["passed"], result
    assert result["agreement"] >= result["target"] >= (0.99 if quant == "f16" else 0.9)
    assert abs(result["ppl_change_pct"]) < (0.5 if quant == "f16" else 3.0)
    if result["backend"] == "llama_cpp":
        assert result["tokenizer_match"] is True  # llama.cpp splits text exactly like the HF tokenizer


@pytest.mark.skipif(not HAS_LLAMA_CPP, reason="the transformers backend already ran in test_gguf_roundtrip")
def test_transformers_backend_agrees(tiny: Any, tmp_path: Path) -> None:
    path = write_gguf(tiny("llama"), tmp_path / "tiny.gguf", "f16")
    result = check_fidelity(tiny("llama"), path, backend="transformers", texts=DEFAULT_TEXTS[:2])
    assert result["backend"] == "transformers" and result["passed"] and result["agreement"] >= 0.99


def test_reverse_hf_permute_interleaves_rope_halves() -> None:
    # One head of dim 4: HF rows [a0, a1, b0, b1] (halves) -> llama.cpp rows [a0, b0, a1, b1] (pairs).
    w = np.arange(8).reshape(4, 2)
    assert reverse_hf_permute(w, 1)[:, 0].tolist() == [0, 4, 2, 6]
    two_heads = np.arange(8).reshape(8, 1)
    assert reverse_hf_permute(two_heads, 2)[:, 0].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


def test_pre_tokenizer_hash_of_smollm2(smol_tokenizer: Any) -> None:
    # Same hash as llama.cpp's converter computes for HuggingFaceTB/SmolLM-135M: the probe text is exact.
    assert detect_pre_tokenizer(smol_tokenizer, None, "llama") == "smollm"


def test_pre_tokenizer_fallbacks_for_unknown_hashes() -> None:
    class Unknown:
        def encode(self, text: str) -> list[int]:
            return [len(text)]

    llama3_split = {"pre_tokenizer": {"type": "Split", "pattern": {"Regex": "\\p{N}{1,3}| ?\\p{L}+"}}}
    assert detect_pre_tokenizer(Unknown(), llama3_split, "llama") == "llama-bpe"
    assert detect_pre_tokenizer(Unknown(), {}, "qwen2") == "qwen2"
    assert detect_pre_tokenizer(Unknown(), None, "llama") == "default"


@pytest.mark.skipif(not HAS_LLAMA_CPP, reason="llama.cpp is the independent check of the rope factors")
def test_llama3_rope_scaling_writes_rope_freqs(smol_tokenizer: Any, tmp_path: Path) -> None:
    rope = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    }  # short, so the test texts use it
    model_dir = build_tiny_model(tmp_path / "tiny-llama31", "llama", smol_tokenizer, rope_parameters=rope)
    path = write_gguf(model_dir, tmp_path / "llama31.gguf", "f16")
    assert gguf_metadata(path)["tensor_types"]["rope_freqs.weight"] == "F32"
    result = check_fidelity(model_dir, path)
    assert result["passed"] and abs(result["ppl_change_pct"]) < 0.1, result


@pytest.mark.parametrize("with_model_file", [True, False], ids=["tokenizer.model", "tokenizer.json"])
def test_sentencepiece_tokenizer(tmp_path: Path, with_model_file: bool) -> None:
    tokenizer, proto = build_spm_tokenizer()
    model_dir = build_tiny_model(tmp_path / "tiny-llama2", "llama", tokenizer, tie=False, train_steps=10)
    if with_model_file:
        (model_dir / "tokenizer.model").write_bytes(proto)
    path = write_gguf(model_dir, tmp_path / "spm.gguf", "f16")
    meta = gguf_metadata(path)
    assert meta["tokenizer.ggml.model"] == "llama"
    assert meta["tokenizer.ggml.add_bos_token"] is True
    assert meta["tokenizer.ggml.add_space_prefix"] is True
    assert (meta["tokenizer.ggml.bos_token_id"], meta["tokenizer.ggml.eos_token_id"]) == (1, 2)
    text = "Hello world, the soup is warm. 春天来了。 ✅ 3.14"
    if HAS_LLAMA_CPP:
        llm = llamacpp.load(path, n_ctx=64)
        try:
            got = llm.tokenize(text.encode(), add_bos=True, special=False)
        finally:
            llm.close()
    else:
        from transformers import AutoTokenizer

        got = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)(text).input_ids
    assert got == tokenizer(text).input_ids
    assert check_fidelity(model_dir, path, texts=DEFAULT_TEXTS[:1])["passed"]


def test_k_quant_without_llama_cpp_says_how_to_install(
    tiny: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(llamacpp, "available", lambda: False)
    with pytest.raises(ExportError) as err:
        write_gguf(tiny("llama"), tmp_path / "x.gguf", "q4_k_m")
    assert 'pip install --no-cache-dir "finetune-studio[gguf-quant]"' in str(err.value)
    assert "-DGGML_NATIVE=OFF" in str(err.value)
    assert not (tmp_path / "x.gguf").exists()


@pytest.mark.skipif(not HAS_LLAMA_CPP, reason="llama-cpp-python not installed (extra: gguf-quant)")
def test_q4_k_m_with_llama_cpp(tiny: Any, tmp_path: Path) -> None:
    path = write_gguf(tiny("qwen2"), tmp_path / "tiny-q4_k_m.gguf", "q4_k_m")
    assert gguf_metadata(path)["general.file_type"] == 15
    assert not list(tmp_path.glob(".f16-*")), "the intermediate f16 file is removed"
    result = check_fidelity(tiny("qwen2"), path)
    assert result["quant"] == "q4_k_m" and result["passed"], result


def test_unsupported_architecture_and_quant(tmp_path: Path, tiny: Any) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ExportError, match="supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM"):
        write_gguf(tmp_path, tmp_path / "x.gguf", "f16")
    with pytest.raises(ExportError, match="unknown GGUF quant type 'q3'"):
        write_gguf(tiny("llama"), tmp_path / "x.gguf", "q3")
