"""Merge a PEFT LoRA adapter into its base model and save a plain, sharded safetensors folder.

The base is always loaded unquantized (float32 / bf16 / fp16), even for an adapter trained with QLoRA:
merging into a 4-bit or 8-bit base would bake the quantization error into every merged weight.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from app.atomic import write_text_atomic
from app.export.errors import ExportError, Progress, report

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
MODEL_FILE_SUFFIXES = (".json", ".safetensors", ".model", ".txt", ".jinja", ".tiktoken")
# Trainer state that can sit next to a full fine-tune and does not belong in an export.
SKIP_FILES = {"trainer_state.json", "training_args.json", "adapter_config.json"}
_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float16": "float16",
    "fp16": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}


def is_adapter(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def adapter_base(adapter_dir: Path, base_dir: str | Path | None = None) -> Path:
    """The local base-model folder of an adapter: `base_dir` if given, else its adapter_config's."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    base = Path(base_dir) if base_dir else Path(str(config.get("base_model_name_or_path") or ""))
    if not str(base) or not (base / "config.json").is_file():
        raise ExportError(
            f"the adapter in {adapter_dir} names base model {str(base)!r}, which is not a local model folder; "
            "pass base_dir= with the folder of the (unquantized) base model"
        )
    return base


def _read_config(model_dir: Path) -> dict[str, Any]:
    return json.loads((model_dir / "config.json").read_text(encoding="utf-8"))


def _check_unquantized(model_dir: Path) -> None:
    quant = _read_config(model_dir).get("quantization_config")
    if quant:
        raise ExportError(
            f"{model_dir} holds pre-quantized weights ({quant.get('quant_method', 'unknown')}); merging needs the "
            "original float16/bfloat16/float32 base model: pass its folder as base_dir"
        )


def _torch_dtype(dtype: Any, model_dir: Path) -> Any:
    import torch

    if dtype is None:
        config = _read_config(model_dir)
        dtype = config.get("dtype") or config.get("torch_dtype") or "float32"
    if isinstance(dtype, torch.dtype):
        return dtype
    name = _DTYPES.get(str(dtype).replace("torch.", ""), "float32")  # int8/4-bit/unknown -> float32
    return getattr(torch, name)


def _has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    config = folder / "tokenizer_config.json"
    return config.is_file() and bool(json.loads(config.read_text(encoding="utf-8")).get("chat_template"))


def copy_tokenizer(sources: list[Path], output_dir: Path) -> Path:
    """Copy tokenizer files from the first source that has a tokenizer, and a chat template from the
    first source that has one (an adapter folder usually carries the tokenizer it was trained with)."""
    tokenizer_src = next((s for s in sources if (s / "tokenizer_config.json").is_file()), None)
    if tokenizer_src is None:
        raise ExportError(f"no tokenizer (tokenizer_config.json) in {', '.join(map(str, sources))}")
    for name in TOKENIZER_FILES:
        if (tokenizer_src / name).is_file():
            shutil.copy2(tokenizer_src / name, output_dir / name)
    if not _has_chat_template(output_dir):
        template_src = next((s for s in sources if _has_chat_template(s)), None)
        if template_src is not None and (template_src / "chat_template.jinja").is_file():
            shutil.copy2(template_src / "chat_template.jinja", output_dir / "chat_template.jinja")
        elif template_src is not None:
            tokenizer_config = json.loads((template_src / "tokenizer_config.json").read_text(encoding="utf-8"))
            write_text_atomic(output_dir / "chat_template.jinja", tokenizer_config["chat_template"])
    return tokenizer_src


def _strip_quantization_config(output_dir: Path) -> None:
    path = output_dir / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.pop("quantization_config", None) is not None:
        write_text_atomic(path, json.dumps(config, indent=2, sort_keys=True) + "\n")


def _adapter_vocab_rows(adapter_dir: Path) -> int:
    """Rows of any embedding / lm_head the adapter saves in full (after tokens were added in training)."""
    from safetensors import safe_open

    rows = 0
    for path in adapter_dir.glob("adapter_model*.safetensors"):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                if "embed_tokens" in key or "lm_head" in key:
                    shape = f.get_slice(key).get_shape()
                    if len(shape) == 2 and "lora_" not in key:
                        rows = max(rows, int(shape[0]))
    return rows


def _save(model: Any, output_dir: Path, max_shard_size: str, progress: Progress | None, fraction: float) -> None:
    report(progress, fraction, f"saving safetensors to {output_dir}")
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(output_dir), max_shard_size=max_shard_size)
    _strip_quantization_config(output_dir)


def copy_full_model(
    model_dir: Path, output_dir: Path, max_shard_size: str = "2GB", dtype: Any = None, progress: Progress | None = None
) -> Path:
    """A full model folder: copied as is when already plain safetensors, else loaded and re-saved."""
    if model_dir.resolve() == output_dir.resolve():
        return output_dir
    _check_unquantized(model_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if any(model_dir.glob("*.safetensors")) and dtype is None:
        files = [p for p in model_dir.iterdir() if p.is_file() and p.suffix in MODEL_FILE_SUFFIXES]
        for i, path in enumerate(f for f in files if f.name not in SKIP_FILES):
            report(progress, i / max(len(files), 1), f"copying {path.name}")
            shutil.copy2(path, output_dir / path.name)
    else:
        from transformers import AutoModelForCausalLM

        report(progress, 0.0, f"loading {model_dir.name}")
        model = AutoModelForCausalLM.from_pretrained(
            str(model_dir), dtype=_torch_dtype(dtype, model_dir), local_files_only=True
        )
        _save(model, output_dir, max_shard_size, progress, 0.5)
        copy_tokenizer([model_dir], output_dir)
    report(progress, 1.0, "model saved")
    return output_dir


def merge_adapter(
    adapter_dir: str | Path,
    output_dir: str | Path,
    base_dir: str | Path | None = None,
    max_shard_size: str = "2GB",
    dtype: Any = None,
    progress: Progress | None = None,
) -> Path:
    """Merge the LoRA adapter in `adapter_dir` into its base and save the result to `output_dir`.

    `dtype` (None = the base's own float dtype, else "float32"/"bfloat16"/"float16" or a torch dtype) is
    the precision of the merge and of the saved weights. A folder without adapter_config.json is a full
    model and is copied (or re-saved when `dtype` is given or it has no safetensors).
    """
    adapter_dir, output_dir = Path(adapter_dir), Path(output_dir)
    if not is_adapter(adapter_dir):
        return copy_full_model(adapter_dir, output_dir, max_shard_size, dtype, progress)

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from app.models.rope import base_arguments_for

    base = adapter_base(adapter_dir, base_dir)
    _check_unquantized(base)
    torch_dtype = _torch_dtype(dtype, base)
    report(progress, 0.0, f"loading base model {base.name} ({str(torch_dtype).replace('torch.', '')})")
    # the run's rope_scaling: the merged config.json then carries the scaling the adapter was trained with
    stretched = base_arguments_for(adapter_dir, base)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch_dtype, local_files_only=True, **stretched)
    rows = _adapter_vocab_rows(adapter_dir)
    if rows > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(rows)

    report(progress, 0.35, "applying adapter")
    model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
    report(progress, 0.55, "merging adapter weights into the base")
    model = model.merge_and_unload()
    _save(model, output_dir, max_shard_size, progress, 0.7)
    report(progress, 0.95, "copying tokenizer and chat template")
    copy_tokenizer([adapter_dir, base], output_dir)
    report(progress, 1.0, "merged model saved")
    return output_dir
