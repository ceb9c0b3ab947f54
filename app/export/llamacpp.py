"""The optional llama-cpp-python backend: K-quant quantization and running a GGUF for the fidelity check.

llama-cpp-python is source-only on PyPI and must be built without `-march=native`: the native build
uses AMX instructions that some VMs do not enable, and every quantized GGUF then crashes at the first
decode. Hence the pinned CMAKE_ARGS in the install hint.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np

from app.export.errors import ExportError

# K-quant name -> llama.cpp file type (the values of gguf.LlamaFileType / LLAMA_FTYPE_MOSTLY_*).
K_QUANTS: dict[str, int] = {
    "q2_k": 10,
    "q3_k_s": 11,
    "q3_k_m": 12,
    "q3_k_l": 13,
    "q4_k_s": 14,
    "q4_k_m": 15,
    "q5_k_s": 16,
    "q5_k_m": 17,
    "q6_k": 18,
}

CMAKE_ARGS = (
    "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON "
    "-DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX_VNNI=ON"
)
INSTALL_HINT = (
    f'CMAKE_ARGS="{CMAKE_ARGS}" pip install --no-cache-dir "finetune-studio[gguf-quant]"'
    "   (builds llama-cpp-python from source, about 5 minutes on 2 cores)"
)


def available() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def require(what: str) -> Any:
    """Import llama_cpp or raise an ExportError that says how to install it."""
    if not available():
        raise ExportError(f"{what} needs llama-cpp-python, which is not installed. Install it with:\n  {INSTALL_HINT}")
    import llama_cpp

    return llama_cpp


def quantize(src: Path, dst: Path, quant: str, threads: int | None = None) -> Path:
    """Re-quantize a GGUF (f16/f32) to a K-quant with llama.cpp's own quantizer."""
    llama_cpp = require(f"{quant} quantization")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = K_QUANTS[quant]
    params.nthread = threads or os.cpu_count() or 1
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0 or not dst.is_file():
        raise ExportError(f"llama.cpp failed to quantize {src.name} to {quant} (code {rc})")
    return dst


def load(gguf_path: Path, n_ctx: int) -> Any:
    """A llama_cpp.Llama that keeps the logits of every evaluated position."""
    llama_cpp = require("running a GGUF with llama.cpp")
    return llama_cpp.Llama(
        model_path=str(gguf_path),
        n_ctx=n_ctx,
        n_batch=min(n_ctx, 512),
        logits_all=True,
        n_threads=os.cpu_count() or 1,
        verbose=False,
    )


def logits(llm: Any, ids: list[int]) -> np.ndarray:
    """Teacher-forced logits [len(ids), vocab] for a token id sequence."""
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)
