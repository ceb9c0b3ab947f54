"""The model an evaluation scores, loaded for inference, whatever the user pointed at.

    base model        model_name_or_path: empty (embedded), a folder, a hub id, a merged export folder
    a run             adapter_name_or_path: runs/<name> (its final adapter/ or full model), a checkpoint
                      (runs/<name>/checkpoints/checkpoint-N) or a bare adapter folder; the base is the run's
    a GGUF file       model_name_or_path: *.gguf, through llama-cpp-python when installed, else transformers'
                      GGUF loader (dequantized to float32)

A LoRA adapter is merged into its base after loading: evaluation only runs forward passes, and a merged
model generates faster than one that adds the adapter's product at every layer. Prompts are rendered with
the tokenizer saved beside the adapter (it carries the training chat template), else the base's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.config import EvalConfig

log = logging.getLogger(__name__)
Progress = Callable[[str], None]


class LoadError(ValueError):
    """What the config points at cannot be evaluated; the message says what was expected."""


@dataclass
class LoadedModel:
    tokenizer: Any
    backend: str  # transformers | llama_cpp
    model: Any = None  # a transformers model (backend transformers) or a llama_cpp.Llama
    device: str = "cpu"
    describe: dict[str, Any] = field(default_factory=dict)  # what was loaded, for predict_results.json


def is_gguf(path: str | None) -> bool:
    return bool(path) and str(path).lower().endswith(".gguf")


def _dtype(device: str):
    import torch

    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _base_of(config: EvalConfig, source: Any) -> str | None:
    """The base model of an adapter: the config's, else the run's job, else the adapter's own record."""
    if config.model_name_or_path:
        return config.model_name_or_path
    if source is None:
        return None
    if source.run is not None and (source.run / "job.yaml").is_file():
        from app.train.runfolder import RunFolder

        try:
            return RunFolder(source.run).job().model_name_or_path
        except Exception:  # noqa: BLE001 - an old job.yaml: fall back to the adapter's own record
            log.warning("cannot read %s/job.yaml; using the adapter's recorded base", source.run)
    for claim in source.trained_on or []:
        if claim and Path(claim).expanduser().is_dir():
            return claim
    return None


def _finish_tokenizer(tokenizer: Any, template: str | None) -> Any:
    from app.data.render import resolve_template

    if template or not tokenizer.chat_template:
        resolve_template(tokenizer, template)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(config: EvalConfig, progress: Progress | None = None) -> LoadedModel:
    """Load what `config` names for evaluation; raises LoadError (or ModelSourceError) with a clear message."""
    say = progress or (lambda message: None)
    if is_gguf(config.model_name_or_path):
        if config.adapter_name_or_path:
            raise LoadError("adapter_name_or_path: a GGUF file is evaluated on its own (export the adapter merged)")
        return _load_gguf(Path(str(config.model_name_or_path)).expanduser(), config.template, say)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from app.chat.adapters import AdapterError, resolve_adapter
    from app.models.rope import base_arguments_for
    from app.models.source import resolve_model_path

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = _dtype(device)
    source = None
    if config.adapter_name_or_path:
        try:
            source = resolve_adapter(config.adapter_name_or_path)
        except AdapterError as exc:
            raise LoadError(f"adapter_name_or_path: {exc}") from None
    template = config.template or (source.template if source else None)
    if source is not None and source.kind == "full":  # a full or freeze run: the folder is the whole model
        say(f"loading the fine-tuned model {source.path}")
        model = AutoModelForCausalLM.from_pretrained(str(source.path), dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(str(source.path))
        describe = {"model": str(source.path), "adapter": None, "kind": "full"}
    else:
        base = _base_of(config, source)
        base_dir = resolve_model_path(base, say)
        say(f"loading model {base or 'embedded'}")
        stretched = base_arguments_for(source.path, base_dir) if source is not None else {}  # the run's rope
        model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=dtype, **stretched)
        tokenizer_dir = source.path if source is not None and source.has_tokenizer else base_dir
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        describe = {"model": base or "embedded", "adapter": None, "kind": "base"}
        if source is not None:
            from peft import PeftModel

            say(f"loading adapter {source.path}")
            model = PeftModel.from_pretrained(model, str(source.path)).merge_and_unload()
            describe |= {"adapter": str(source.path), "kind": "lora"}
    model.to(device).eval()
    return LoadedModel(_finish_tokenizer(tokenizer, template), "transformers", model, device, describe)


def _gguf_chat_template(path: Path) -> str | None:
    from gguf import GGUFReader

    found = GGUFReader(str(path)).fields.get("tokenizer.chat_template")
    return bytes(found.parts[found.data[0]]).decode("utf-8") if found is not None else None


def _load_gguf(path: Path, template: str | None, say: Progress) -> LoadedModel:
    """A GGUF through llama.cpp when installed (what users deploy), else transformers' reader."""
    if not path.is_file():
        raise LoadError(f"model_name_or_path: GGUF file {path} not found")
    from transformers import AutoTokenizer

    from app.export import llamacpp

    # The HF tokenizer read from the GGUF renders prompts and the loss masks for both backends.
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    if not tokenizer.chat_template:
        tokenizer.chat_template = _gguf_chat_template(path)
    tokenizer = _finish_tokenizer(tokenizer, template)
    describe = {"model": str(path), "adapter": None, "kind": "gguf"}
    if llamacpp.available():
        say(f"loading {path.name} with llama.cpp")
        llm = llamacpp.load(path, n_ctx=4096)
        return LoadedModel(tokenizer, "llama_cpp", llm, "cpu", describe | {"backend": "llama_cpp"})
    import torch
    from transformers import AutoModelForCausalLM

    say(f"loading {path.name} with transformers' GGUF reader (llama-cpp-python is not installed)")
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return LoadedModel(tokenizer, "transformers", model.eval(), "cpu", describe | {"backend": "transformers"})


def release(loaded: LoadedModel) -> None:
    """Free the model's memory (the Export tab evaluates two models one after the other)."""
    import gc

    if loaded.backend == "llama_cpp" and loaded.model is not None:
        loaded.model.close()
    loaded.model = None
    gc.collect()
