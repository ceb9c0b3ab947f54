"""Hugging Face folder (safetensors + config + tokenizer) -> one GGUF file, with the `gguf` package.

Float types (f32, f16, bf16) and q8_0 are written here in pure Python; K-quants (q4_k_m, q5_k_m, ...)
are made by writing f16 first and re-quantizing it with llama.cpp's own quantizer (`app.export.llamacpp`).
Tensors stream one at a time (tensor infos first, data after), so memory stays at one tensor.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from app.export import llamacpp
from app.export.errors import ExportError, Progress, report, scaled
from app.export.gguf_vocab import add_vocab

# HF architecture -> (GGUF architecture, whether llama.cpp expects q/k rows permuted for its rope layout).
# Mistral is a Llama in llama.cpp. Qwen2 uses NeoX-style rope there, so its q/k stay as they are.
ARCHITECTURES: dict[str, tuple[str, bool]] = {
    "LlamaForCausalLM": ("llama", True),
    "MistralForCausalLM": ("llama", True),
    "Qwen2ForCausalLM": ("qwen2", False),
}

# quant name -> (tensor type for 2-D weights, file type)
FLOAT_QUANTS: dict[str, tuple[gguf.GGMLQuantizationType, gguf.LlamaFileType]] = {
    "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}
QUANTS: tuple[str, ...] = (*FLOAT_QUANTS, *llamacpp.K_QUANTS)

_ARCH_ENUM = {name: arch for arch, name in gguf.MODEL_ARCH_NAMES.items()}


@dataclass
class _Tensor:
    hf_name: str
    name: str
    shape: tuple[int, ...]
    qtype: gguf.GGMLQuantizationType
    load: Callable[[], np.ndarray]

    @property
    def nbytes(self) -> int:
        block, size = gguf.GGML_QUANT_SIZES[self.qtype]
        return math.prod(self.shape[:-1]) * (self.shape[-1] // block) * size


def reverse_hf_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """HF stores each rope head as [first halves | second halves]; llama.cpp's llama rope wants the
    pairs interleaved. Undo the permutation HF's own conversion script applied to the Meta weights."""
    rows = weights.shape[0]
    return weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def _config(model_dir: Path) -> Any:
    from transformers import AutoConfig

    if not (model_dir / "config.json").is_file():
        raise ExportError(f"{model_dir} has no config.json: not a Hugging Face model folder")
    return AutoConfig.from_pretrained(str(model_dir), local_files_only=True)


def in_house(config: Any) -> bool:
    """Whether this writer knows the architecture (else app.export.llamacpp_convert runs llama.cpp's)."""
    return any(arch in ARCHITECTURES for arch in getattr(config, "architectures", None) or [])


def gguf_architecture(config: Any) -> tuple[str, bool]:
    archs = list(getattr(config, "architectures", None) or [])
    for arch in archs:
        if arch in ARCHITECTURES:
            return ARCHITECTURES[arch]
    raise ExportError(
        f"GGUF export does not support architecture {archs or config.model_type!r}; "
        f"supported: {', '.join(sorted(ARCHITECTURES))}"
    )


def _rope_parameters(config: Any) -> dict[str, Any]:
    params = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    if "rope_theta" not in params:
        params["rope_theta"] = getattr(config, "rope_theta", None) or 10000.0
    return params


def llama3_rope_factors(params: dict[str, Any], head_dim: int) -> np.ndarray:
    """Per-frequency divisors for Llama 3.1+ rope scaling, which llama.cpp reads from `rope_freqs`."""
    factor = float(params.get("factor", 8.0))
    low, high = float(params.get("low_freq_factor", 1.0)), float(params.get("high_freq_factor", 4.0))
    old_ctx = float(params.get("original_max_position_embeddings", 8192))
    freqs = 1.0 / (params["rope_theta"] ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old_ctx / high:
            out.append(1.0)
        elif wavelen > old_ctx / low:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


def _add_hparams(writer: gguf.GGUFWriter, config: Any, name: str, ftype: int) -> np.ndarray | None:
    """Model metadata; returns the llama3 rope-factor tensor when the model needs one."""
    n_head = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or n_head)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // n_head:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_file_type(ftype)

    rope = _rope_parameters(config)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    rope_type = rope.get("rope_type") or rope.get("type") or "default"
    if rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif rope_type == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(rope["factor"]))
        orig = rope.get("original_max_position_embeddings") or config.max_position_embeddings
        writer.add_rope_scaling_orig_ctx_len(int(orig))
    elif rope_type == "llama3":
        return llama3_rope_factors(rope, head_dim)
    elif rope_type != "default":
        raise ExportError(f"rope scaling type {rope_type!r} is not supported by the GGUF writer")
    return None


def _checkpoint_tensors(model_dir: Path) -> Iterator[tuple[str, tuple[int, ...], Callable[[], np.ndarray]]]:
    """(name, shape, loader) for every tensor in the folder's safetensors (or .bin) files."""
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if files:
        for path in files:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    shape = tuple(f.get_slice(key).get_shape())

                    def load(path: Path = path, key: str = key) -> np.ndarray:
                        with safe_open(str(path), framework="pt") as g:
                            return g.get_tensor(key).float().numpy()

                    yield key, shape, load
        return
    bins = sorted(model_dir.glob("pytorch_model*.bin"))
    if not bins:
        raise ExportError(f"no *.safetensors or pytorch_model*.bin weights in {model_dir}")
    import torch

    for path in bins:
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        for key, value in state.items():
            yield key, tuple(value.shape), (lambda v=value: v.float().numpy())


def _tensor_type(name: str, shape: tuple[int, ...], weight_type: gguf.GGMLQuantizationType) -> Any:
    # As llama.cpp: 1-D tensors (norms, biases) stay f32; rows not a multiple of the block size fall back to f16.
    if len(shape) < 2 or name.endswith("_norm.weight"):
        return gguf.GGMLQuantizationType.F32
    block, _ = gguf.GGML_QUANT_SIZES[weight_type]
    if shape[-1] % block:
        return gguf.GGMLQuantizationType.F16
    return weight_type


def _plan(model_dir: Path, config: Any, gguf_arch: str, permute: bool, weight_type: Any) -> list[_Tensor]:
    n_layers = config.num_hidden_layers
    name_map = gguf.get_tensor_name_map(_ARCH_ENUM[gguf_arch], n_layers)
    allowed = set(gguf.MODEL_TENSORS[_ARCH_ENUM[gguf_arch]])
    n_head = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_head
    tied = bool(getattr(config, "tie_word_embeddings", False))
    plan: list[_Tensor] = []
    for hf_name, shape, load in _checkpoint_tensors(model_dir):
        if hf_name.endswith("rotary_emb.inv_freq") or (tied and hf_name == "lm_head.weight"):
            continue
        mapped = name_map.get_type_and_name(hf_name, try_suffixes=(".weight", ".bias"))
        if mapped is None or mapped[0] not in allowed:
            raise ExportError(f"tensor {hf_name!r} has no place in a GGUF {gguf_arch!r} model")
        if permute and hf_name.endswith(("q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias")):
            heads = n_head if ".q_proj." in hf_name else n_kv
            load = lambda f=load, h=heads: reverse_hf_permute(f(), h)  # noqa: E731
        name = mapped[1]
        plan.append(_Tensor(hf_name, name, shape, _tensor_type(name, shape, weight_type), load))
    if not any(t.name == "token_embd.weight" for t in plan):
        raise ExportError(f"no token embedding (model.embed_tokens.weight) in {model_dir}")
    return plan


def write_gguf(
    model_dir: str | Path,
    out_path: str | Path,
    quant: str = "f16",
    progress: Progress | None = None,
    name: str | None = None,
) -> Path:
    """Write `model_dir` (a merged HF model folder) as a single GGUF file of type `quant`."""
    model_dir, out_path = Path(model_dir), Path(out_path)
    quant = quant.lower()
    if quant not in QUANTS:
        raise ExportError(f"unknown GGUF quant type {quant!r}; choose one of {', '.join(QUANTS)}")
    if quant in llamacpp.K_QUANTS:
        llamacpp.require("K-quant GGUF export (" + quant + ")")
        out_path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".f16-") as tmp:
            f16 = write_gguf(model_dir, Path(tmp) / "model-f16.gguf", "f16", scaled(progress, 0.0, 0.7), name)
            report(progress, 0.7, f"quantizing to {quant} with llama.cpp")
            llamacpp.quantize(f16, out_path, quant)
        report(progress, 1.0, f"wrote {out_path.name}")
        return out_path

    config = _config(model_dir)
    gguf_arch, permute = gguf_architecture(config)
    weight_type, ftype = FLOAT_QUANTS[quant]
    report(progress, 0.0, "reading model")
    plan = _plan(model_dir, config, gguf_arch, permute, weight_type)

    writer = gguf.GGUFWriter(path=None, arch=gguf_arch)
    rope_factors = _add_hparams(writer, config, name or model_dir.name, int(ftype))
    if rope_factors is not None:
        factors = rope_factors
        plan.append(
            _Tensor("rope_freqs", "rope_freqs.weight", factors.shape, gguf.GGMLQuantizationType.F32, lambda: factors)
        )
    add_vocab(writer, model_dir, config.vocab_size, gguf_arch)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    for t in plan:
        writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=t.qtype)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(out_path.name + ".partial")
    try:
        writer.write_header_to_file(path=partial)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for i, t in enumerate(plan):
            report(progress, i / len(plan), f"{t.name} -> {t.qtype.name}")
            data = t.load()
            if data.shape != t.shape:
                raise ExportError(f"tensor {t.hf_name}: shape {data.shape} != declared {t.shape}")
            writer.write_tensor_data(gguf.quants.quantize(np.ascontiguousarray(data, dtype=np.float32), t.qtype))
        writer.close()
        partial.replace(out_path)
    finally:
        writer.close()
        partial.unlink(missing_ok=True)
    report(progress, 1.0, f"wrote {out_path.name}")
    return out_path


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def gguf_metadata(path: str | Path) -> dict[str, Any]:
    """A GGUF's key/values (arrays, such as the token list, summarised by length), its tensor count and
    `tensor_types` ({tensor name: GGML type name}).

    A direct header walk: gguf.GGUFReader builds an object per vocabulary string, ~5-10 s per file."""
    import mmap
    import struct

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        pos = 0

        def take(fmt: str) -> Any:
            nonlocal pos
            (value,) = struct.unpack_from(fmt, buf, pos)
            pos += struct.calcsize(fmt)
            return value

        def text() -> str:
            nonlocal pos
            n = take("<Q")
            pos += n
            return bytes(buf[pos - n : pos]).decode("utf-8", errors="replace")

        def value(vtype: int) -> Any:
            if vtype == 8:
                return text()
            if vtype == 9:
                item_type, count = take("<I"), take("<Q")
                for _ in range(count):
                    value(item_type)
                return f"[{count} items]"
            return take(_SCALARS[vtype])

        if bytes(buf[:4]) != b"GGUF":
            raise ExportError(f"{path} is not a GGUF file")
        pos = 4
        take("<I")
        n_tensors, n_kv = take("<Q"), take("<Q")
        out: dict[str, Any] = {}
        for _ in range(n_kv):
            key = text()
            out[key] = value(take("<I"))
        out["tensor_count"] = n_tensors
        types: dict[str, str] = {}
        for _ in range(n_tensors):
            name = text()
            n_dims = take("<I")
            pos += 8 * n_dims
            types[name] = gguf.GGMLQuantizationType(take("<I")).name
            pos += 8  # data offset
        out["tensor_types"] = types
        return out
