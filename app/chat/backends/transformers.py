"""The default backend: transformers models on this machine's CPU or GPU, requests batched continuously.

    engine = TransformersBackend()                 # the embedded SmolLM2, cuda if present else cpu fp32
    engine.add_adapter("mine", "runs/sft-lora-20261101")
    engine.generate([{"role": "user", "content": "Hi"}], model="mine").text
    for delta in (result := engine.stream(messages)): print(delta, end="")

LoRA adapters are loaded as named PEFT adapters onto the one base, never a reload; requests for different
adapters of the base decode in one batch (PEFT `adapter_names`, one per row). A full/freeze fine-tuning run
holds a whole model: it is loaded as a second model and batches on its own. Every prompt is rendered with
the tokenizer saved next to the adapter (it carries the chat template used in training), else the base's.
Concurrent requests share the scheduler (app/chat/batching.py); each keeps its own sampling settings.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from app.chat import packed
from app.chat.adapters import AdapterError, AdapterSource, BaseMismatchError, base_matches, resolve_adapter
from app.chat.backends.base import Load, Sampling, StreamResult, UnknownModelError, UnsupportedError
from app.chat.backends.common import ChatMethods, fit_to_window
from app.chat.batching import Row, Scheduler
from app.chat.decoding import RowDecoder
from app.models.rope import base_arguments_for
from app.models.source import EMBEDDED_ID, is_embedded, resolve_model_path

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 32


@dataclass
class Target:
    """What a model name runs on: the shared (PEFT) base with one adapter, or a model of its own."""

    tokenizer: Any
    peft_name: str | None = None  # internal PEFT adapter name; None = base with adapters disabled
    model: PreTrainedModel | None = None  # a full fine-tuned model; None = the shared base
    path: Path | None = None


def pick_device(device: str | None) -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(dtype: torch.dtype | str | None, device: str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype not in ("", "auto"):
        found = getattr(torch, dtype, None)
        if not isinstance(found, torch.dtype):
            raise ValueError(f"Unknown dtype '{dtype}': use float32, bfloat16 or float16.")
        return found
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32  # CPU half precision is slower than fp32 for generation


class TransformersBackend(ChatMethods):
    kind = "transformers"

    def __init__(self, model: str | None = None, device: str | None = None,
                 dtype: torch.dtype | str | None = None, base_name: str | None = None,
                 max_batch: int = DEFAULT_MAX_BATCH):
        self.model_ref = model
        self.base_path = resolve_model_path(model)
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.base_name = base_name or _default_name(model, self.base_path)
        self.tokenizer = load_tokenizer(self.base_path)
        self.base: PreTrainedModel = AutoModelForCausalLM.from_pretrained(
            self.base_path, dtype=self.dtype).to(self.device).eval()
        packed.pack_linears(self.base)  # CPU fp32: the engine's steps run on oneDNN-packed weights
        self._peft: Any = None  # the PeftModel wrapping self.base, once a LoRA adapter is added
        self._active: str | None = None  # the PEFT adapter set active last
        self._targets: dict[str, Target] = {self.base_name: Target(self.tokenizer)}
        self._serial = 0  # PEFT adapter names are never reused: a swapped-out one may still be decoding
        self._retired: set[str] = set()  # PEFT adapters no name points at any more, deleted once unused
        self._deleted: set[str] = set()
        # transformers 5.24 renamed `past_key_values` to `cache` (the old name warns, then goes in 5.40)
        self._cache_kw = "cache" if "cache" in inspect.signature(type(self.base).forward).parameters \
            else "past_key_values"
        self.scheduler = Scheduler(self._forward, self.device, max_batch=max_batch)

    # ------------------------------------------------------------------ models
    def names(self) -> list[str]:
        """The base first, then adapters in the order they were added."""
        return list(self._targets)

    def is_adapter(self, name: str) -> bool:
        return name in self._targets and name != self.base_name

    def context_window(self, model: str | None = None) -> int:
        """Positions the model named `model` covers (a rope-scaled run's adapter covers more than the base)."""
        config = (self._target(model).model or self.base).config
        return int(getattr(config, "max_position_embeddings", 0) or 0)

    def add_adapter(self, name: str, path: str | Path, check_base: bool = True) -> str:
        """Load a run folder, LoRA adapter folder or full model folder under `name`; returns the name.

        LoRA: a named PEFT adapter on the shared base (raises BaseMismatchError when the adapter says
        it was trained on another base; `check_base=False` loads it anyway). Full fine-tuning: a
        separate model in memory, as large as the base.
        """
        name = name.strip()
        if not name:
            raise ValueError("An adapter needs a non-empty name.")
        if name in self._targets:
            raise ValueError(f"The name '{name}' is already taken (loaded: {', '.join(self.names())}).")
        self._targets[name] = self._load_target(name, path, check_base)
        return name

    def replace_adapter(self, name: str, path: str | Path | None, check_base: bool = True) -> str:
        """Serve `name` from `path` (a run, adapter or model folder; None = the base model alone) from now on,
        without a restart. Requests already submitted finish on the weights they started with; later ones
        use the new. The replaced PEFT adapter is unloaded once no request uses it. A new name is added."""
        name = name.strip()
        if not name or name == self.base_name:
            raise ValueError(f"Cannot replace {name!r}: give the name of an adapter, not the base model's.")
        target = Target(self.tokenizer) if path is None else self._load_target(name, path, check_base)
        old = self._targets.get(name)
        self._targets[name] = target  # one assignment: a request sees the old target or the new one
        if old is not None and old.peft_name:
            self._retired.add(old.peft_name)
        self._sweep()
        return name

    def _sweep(self) -> None:
        """Unload retired PEFT adapters no request uses (PEFT needs one adapter left: the last one stays)."""
        if not self._retired or self._peft is None or len(self._peft.peft_config) <= 1:
            return
        with self.scheduler.lock:  # no step runs, so the rows in the batches are all there is
            busy = self.scheduler.adapters_in_use()
            for peft_name in sorted(self._retired - busy):
                if len(self._peft.peft_config) <= 1:
                    break
                with warnings.catch_warnings():  # "was active, now deleted": _active is reset just below
                    warnings.simplefilter("ignore", UserWarning)
                    self._peft.delete_adapter(peft_name)
                self._retired.discard(peft_name)
                self._deleted.add(peft_name)
                self._active = None

    def _load_target(self, name: str, path: str | Path, check_base: bool) -> Target:
        source = resolve_adapter(path)
        tokenizer = self._tokenizer_for_source(source)
        if source.kind == "full":
            model = AutoModelForCausalLM.from_pretrained(source.path, dtype=self.dtype).to(self.device).eval()
            packed.pack_linears(model)
            return Target(tokenizer, model=model, path=source.path)
        if not base_matches(source, self.base_path, self.model_ref):
            claimed = ", ".join(repr(c) for c in source.trained_on or [])
            message = (f"Adapter '{name}' ({source.path}) was trained on {claimed}, but this engine's "
                       f"base is '{self.base_name}' ({self.base_path}). "
                       "Start the engine with that base model, or pass check_base=False to load it anyway.")
            if check_base:
                raise BaseMismatchError(message)
            log.warning(message)
        stretched = base_arguments_for(source.path, self.base_path)
        if stretched:  # trained with rope_scaling: the adapter needs a base with the same positions
            return self._load_lora_on_own_base(name, source, tokenizer, stretched)
        return self._load_lora(name, source, tokenizer)

    def _load_lora_on_own_base(self, name: str, source: AdapterSource, tokenizer: Any,
                               base_arguments: dict[str, Any]) -> Target:
        """A LoRA whose run stretched RoPE: its own copy of the base, loaded as in training (it batches on
        its own, like a full fine-tuned model; the shared base keeps its own positions)."""
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(self.base_path, dtype=self.dtype, **base_arguments)
        try:
            model = PeftModel.from_pretrained(base, str(source.path))
        except (ValueError, RuntimeError, KeyError) as exc:
            raise AdapterError(f"Could not load adapter '{name}' from {source.path}: {exc}") from exc
        model = model.to(self.device).eval()
        packed.pack_linears(model)
        return Target(tokenizer, model=model, path=source.path)

    def _load_lora(self, name: str, source: AdapterSource, tokenizer: Any) -> Target:
        from peft import PeftModel

        self._serial += 1
        peft_name = f"adapter_{self._serial}"  # PEFT names become module keys: no dots, no slashes
        with self.scheduler.lock:  # never change the weights under a running step
            try:
                if self._peft is None:
                    self._peft = PeftModel.from_pretrained(self.base, str(source.path), adapter_name=peft_name)
                else:
                    self._peft.load_adapter(str(source.path), adapter_name=peft_name)
            except (ValueError, RuntimeError, KeyError) as exc:
                raise AdapterError(f"Could not load adapter '{name}' from {source.path}: {exc}") from exc
            self._peft.to(self.device).eval()
            self._active = None
        return Target(tokenizer, peft_name=peft_name, path=source.path)

    def _tokenizer_for_source(self, source: AdapterSource) -> Any:
        """The folder's own tokenizer; else the base's, with the job's template when it named one."""
        if source.has_tokenizer:
            return load_tokenizer(source.path)
        if not source.template:
            return self.tokenizer
        from app.data.render import resolve_template

        tokenizer = load_tokenizer(self.base_path)
        resolve_template(tokenizer, source.template)
        return tokenizer

    def tokenizer_for(self, model: str | None = None) -> Any:
        return self._target(model).tokenizer

    def _target(self, model: str | None) -> Target:
        key = self.base_name if model in (None, "") else model
        if key not in self._targets:
            raise UnknownModelError(f"The model '{model}' does not exist; loaded: {', '.join(self.names())}.")
        return self._targets[key]

    # ------------------------------------------------------------------ generation
    def submit(self, prompt_ids: list[int], model: str | None, sampling: Sampling) -> StreamResult:
        target = self._target(model)
        sampling.max_new_tokens = fit_to_window(len(prompt_ids), sampling.max_new_tokens, self.context_window(model))
        constraint = None
        if sampling.json_schema is not None:
            from app.chat.constrain import JsonConstraint, available

            if not available():
                raise UnsupportedError("JSON output needs llguidance: pip install llguidance.")
            constraint = JsonConstraint(target.tokenizer, sampling.json_schema)
        eos_ids = self._eos_ids(target.tokenizer)
        group = id(target.model) if target.model is not None else "base"
        self._sweep()

        def start(result: StreamResult) -> None:
            if target.peft_name in self._deleted:  # swapped out and unloaded between submit and start
                result.put("error", UnknownModelError(f"The adapter behind '{model}' was replaced before this "
                                                      "request started: send it again."))
                return
            decoder = RowDecoder(result, list(prompt_ids), target.tokenizer, sampling, eos_ids, self.device,
                                 constraint)
            self.scheduler.submit(Row(decoder, group, target.peft_name, target))

        return StreamResult(len(prompt_ids), start, on_cancel=self.scheduler.wake)

    def _eos_ids(self, tokenizer: Any) -> set[int]:
        eos = self.base.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            ids.add(tokenizer.eos_token_id)  # an adapter's template may end turns with its own token
        return ids

    def _forward(self, rows: list[Row], inputs: dict[str, Any]) -> torch.Tensor:
        """The last position's logits for a batch of rows that share weights."""
        with packed.engaged():
            return self._forward_rows(rows, inputs)

    def _forward_rows(self, rows: list[Row], inputs: dict[str, Any]) -> torch.Tensor:
        target: Target = rows[0].target
        inputs = {self._cache_kw if k == "past_key_values" else k: v for k, v in inputs.items()}
        extra: dict[str, Any] = {}
        if target.model is not None:
            model = target.model
        elif self._peft is None:
            model = self.base
        else:
            model = self._peft
            names = {row.adapter for row in rows}
            if len(names) > 1:  # mixed adapters: PEFT routes each row through its own
                extra["adapter_names"] = [row.adapter or "__base__" for row in rows]
            elif (only := names.pop()) is None:
                with self._peft.disable_adapter():
                    return model(**inputs, use_cache=True, logits_to_keep=1).logits[:, -1, :]
            elif only != self._active:
                self._peft.set_adapter(only)
                self._active = only
        return model(**inputs, **extra, use_cache=True, logits_to_keep=1).logits[:, -1, :]

    def load(self) -> Load:
        return Load(self.scheduler.running(), self.scheduler.waiting(), self.scheduler.max_batch)

    def close(self) -> None:
        self.scheduler.close()


def load_tokenizer(folder: Path) -> Any:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _default_name(model: str | None, path: Path) -> str:
    if is_embedded(model):
        return EMBEDDED_ID
    assert model is not None
    return path.name if Path(model).expanduser().exists() else model.strip()
