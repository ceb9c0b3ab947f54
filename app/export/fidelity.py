"""Does the GGUF compute the same model as the merged HF folder?

Teacher-forced comparison on held-out text: both models read the same token ids (from the HF tokenizer,
so tokenization cannot hide a difference) and we compare, at every position, the top-1 next-token
prediction (agreement) and the perplexity of the actual next token. Greedy continuations are not used:
small models drift apart after one near-tie under quantization even when the weights are right.

Backends for the GGUF side: llama-cpp-python when installed (the runtime users will actually use),
else transformers' own GGUF loader (dequantizes to float32; an independent reading of the file).
"""

from __future__ import annotations

import gc
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from app.export import llamacpp
from app.export.errors import ExportError, Progress, report

# Generic held-out text (not training data): everyday English prose, a little technical text, Chinese.
DEFAULT_TEXTS: list[str] = [
    "The library on the corner of our street opens at nine in the morning. Most days a few people are "
    "already waiting outside: students with laptops, an old man who reads every newspaper, and parents "
    "bringing small children to the story hour. The building is not large, but the windows are tall and "
    "the reading room is quiet and full of light. In winter the radiators make a soft knocking sound, and "
    "the librarian keeps a kettle in the back office for anyone who looks cold.",
    "To make a simple vegetable soup, wash and chop two carrots, one onion, a stick of celery and a "
    "potato. Warm a spoonful of oil in a large pot, add the onion and cook it slowly until it is soft. "
    "Add the other vegetables, cover them with water or stock, and season with salt and pepper. Let the "
    "soup simmer for about twenty minutes, then taste it and adjust the seasoning before serving.",
    "A computer program is a list of instructions that a machine can follow. Programmers write these "
    "instructions in a programming language, which is then translated into the simple operations the "
    "processor understands. Good programs are easy to read as well as correct, because other people "
    "will need to change them later. Testing helps to find mistakes early, when they are cheap to fix.",
    "春天来了，公园里的花都开了。早上有很多人在湖边散步，也有老人在树下打太极拳。孩子们在草地上放风筝，"
    "笑声传得很远。中午的阳光很温暖，人们坐在长椅上聊天、看书或者休息。到了傍晚，天空慢慢变成橙色，"
    "大家三三两两地回家，公园又安静了下来。",
]

# Minimum top-1 agreement per GGUF type. Float types must reproduce the model. q8_0 weights alone
# keep ~98% on the 135M embedded model (transformers backend); llama.cpp's CPU kernels also round the
# activations to 8 bits, which costs a few more near-ties (94-95% measured), hence its own bar.
# K-quants are judged on a loose bar that still catches a broken file (a missing q/k permutation
# scores ~40%): the embedded model measures ~78-80% at q4_k_m/q5_k_m, ~92% at q6_k (see README).
TARGETS: dict[str, float] = {"f32": 0.99, "f16": 0.99, "bf16": 0.99, "q8_0": 0.95}
LLAMA_CPP_TARGETS: dict[str, float] = {"q8_0": 0.92}
K_QUANT_TARGET = 0.70

_FILE_TYPES: dict[int, str] = {0: "f32", 1: "f16", 32: "bf16", 7: "q8_0"}
_FILE_TYPES.update({v: k for k, v in llamacpp.K_QUANTS.items()})


def target_for(quant: str, backend: str = "transformers") -> float:
    if backend == "llama_cpp" and quant in LLAMA_CPP_TARGETS:
        return LLAMA_CPP_TARGETS[quant]
    return TARGETS.get(quant, K_QUANT_TARGET)


def gguf_quant(gguf_path: Path) -> str:
    """The quant name recorded in a GGUF's `general.file_type`."""
    from app.export.gguf_writer import gguf_metadata

    ftype = gguf_metadata(gguf_path).get("general.file_type")
    if ftype is None:
        return "unknown"
    return _FILE_TYPES.get(int(ftype), f"type{int(ftype)}")


def _encode(merged_dir: Path, texts: list[str], max_tokens: int) -> tuple[Any, list[list[int]]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(merged_dir), local_files_only=True)
    seqs = [tokenizer(t).input_ids[:max_tokens] for t in texts]
    return tokenizer, [s for s in seqs if len(s) >= 2]


def _stats(logits: np.ndarray, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 predictions and negative log-likelihoods of the true next tokens (positions 0..T-2)."""
    x = logits[:-1].astype(np.float64)
    target = np.asarray(ids[1:])
    log_z = np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1)) + x.max(-1)
    nll = log_z - x[np.arange(len(target)), target]
    return x.argmax(-1), nll


def _torch_stats(model: Any, seqs: list[list[int]]) -> list[tuple[np.ndarray, np.ndarray]]:
    import torch

    out = []
    with torch.no_grad():
        for ids in seqs:
            logits = model(torch.tensor([ids])).logits[0].float().numpy()
            out.append(_stats(logits, ids))
    return out


def _reference(merged_dir: Path, seqs: list[list[int]]) -> list[tuple[np.ndarray, np.ndarray]]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=torch.float32, local_files_only=True)
    stats = _torch_stats(model.eval(), seqs)
    del model
    gc.collect()
    return stats


def _transformers_gguf(gguf_path: Path, merged_dir: Path, seqs: list[list[int]]) -> list[Any]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
    # transformers' GGUF config reader ignores rope scaling; take it from the reference config.
    rope = dict(getattr(AutoConfig.from_pretrained(str(merged_dir)), "rope_parameters", None) or {})
    if rope.get("rope_type", "default") != "default":
        config = model.config
        config.rope_parameters = rope
        rebuilt = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        rebuilt.load_state_dict(model.state_dict())
        model = rebuilt
    stats = _torch_stats(model.eval(), seqs)
    del model
    gc.collect()
    return stats


def _llama_cpp_gguf(gguf_path: Path, seqs: list[list[int]], texts: list[str], tokenizer: Any) -> tuple[list, bool]:
    llm = llamacpp.load(gguf_path, n_ctx=max(len(s) for s in seqs) + 8)
    try:
        stats = [_stats(llamacpp.logits(llm, ids), ids) for ids in seqs]
        # The GGUF's own tokenizer must split text the way the HF one does (pre-tokenizer, BOS flag).
        same = all(
            llm.tokenize(t.encode("utf-8"), add_bos=True, special=False) == tokenizer(t).input_ids for t in texts
        )
    finally:
        llm.close()
    return stats, same


def check_fidelity(
    merged_dir: str | Path,
    gguf_path: str | Path,
    texts: list[str] | None = None,
    max_tokens: int = 512,
    backend: str = "auto",
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Compare a GGUF against the HF model it was made from; `backend` is auto|llama_cpp|transformers.

    Returns {agreement, ppl_reference, ppl_gguf, ppl_change_pct, target, passed, backend, n_tokens,
    quant, tokenizer_match, seconds}; `tokenizer_match` is None unless llama.cpp ran.
    """
    start = time.time()
    merged_dir, gguf_path = Path(merged_dir), Path(gguf_path)
    if backend == "auto":
        backend = "llama_cpp" if llamacpp.available() else "transformers"
    if backend not in ("llama_cpp", "transformers"):
        raise ExportError(f"unknown fidelity backend {backend!r}: use auto, llama_cpp or transformers")
    texts = list(texts or DEFAULT_TEXTS)
    tokenizer, seqs = _encode(merged_dir, texts, max_tokens)
    if not seqs:
        raise ExportError("fidelity check needs at least one text of two tokens or more")

    report(progress, 0.05, "reference model: computing logits")
    ref = _reference(merged_dir, seqs)
    report(progress, 0.5, f"GGUF via {backend}: computing logits")
    tokenizer_match: bool | None = None
    if backend == "llama_cpp":
        got, tokenizer_match = _llama_cpp_gguf(gguf_path, seqs, texts, tokenizer)
    else:
        got = _transformers_gguf(gguf_path, merged_dir, seqs)

    agree = np.concatenate([r[0] == g[0] for r, g in zip(ref, got)])
    nll_ref = np.concatenate([r[1] for r in ref])
    nll_gguf = np.concatenate([g[1] for g in got])
    ppl_ref, ppl_gguf = math.exp(float(nll_ref.mean())), math.exp(float(nll_gguf.mean()))
    quant = gguf_quant(gguf_path)
    target = target_for(quant, backend)
    agreement = float(agree.mean())
    report(progress, 1.0, f"agreement {agreement:.2%}")
    return {
        "agreement": round(agreement, 5),
        "ppl_reference": round(ppl_ref, 4),
        "ppl_gguf": round(ppl_gguf, 4),
        "ppl_change_pct": round((ppl_gguf / ppl_ref - 1.0) * 100.0, 3),
        "target": target,
        "passed": bool(agreement >= target),
        "backend": backend,
        "n_tokens": int(agree.size),
        "quant": quant,
        "tokenizer_match": tokenizer_match,
        "seconds": round(time.time() - start, 2),
    }
