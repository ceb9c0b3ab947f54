"""The inference engine: one base model in memory, LoRA adapters switched on top of it, streaming.

    engine = ChatEngine()                      # the embedded SmolLM2, cuda if present else cpu fp32
    engine.add_adapter("mine", "runs/sft-lora-20261101")
    engine.generate([{"role": "user", "content": "Hi"}], model="mine").text
    for delta in (result := engine.stream(messages)): print(delta, end="")

LoRA adapters are loaded as named PEFT adapters onto the one base, so switching is `set_adapter` (or
`disable_adapter()` for the base itself), never a reload. A full/freeze fine-tuning run holds a whole
model: it is loaded as a second model of its own. Every prompt is rendered with the tokenizer saved
next to the adapter (it carries the chat template used in training), else with the base's.
One lock serialises adapter selection and generation on the shared weights.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    StoppingCriteriaList,
    TextIteratorStreamer,
)

from app.chat.adapters import AdapterError, AdapterSource, BaseMismatchError, base_matches, resolve_adapter
from app.chat.stops import CancelFlag, StopFilter, StopOnText
from app.models.source import EMBEDDED_ID, is_embedded, resolve_model_path

log = logging.getLogger(__name__)

Message = dict[str, Any]


class UnknownModelError(LookupError):
    """A request named a model the engine does not hold."""


class ContextLengthError(ValueError):
    """The prompt alone fills the model's context window."""


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of turn or a stop string), "length", or "cancelled"


@dataclass
class _Target:
    """What a model name runs on: the shared (PEFT) base with one adapter, or a model of its own."""

    tokenizer: Any
    peft_name: str | None = None  # internal PEFT adapter name; None = base with adapters disabled
    model: PreTrainedModel | None = None  # a full fine-tuned model; None = the shared base
    path: Path | None = None


@dataclass
class _Request:
    target: _Target
    inputs: dict[str, torch.Tensor]
    kwargs: dict[str, Any]
    stop: list[str]
    seed: int | None
    max_new_tokens: int
    eos_ids: set[int]

    @property
    def prompt_tokens(self) -> int:
        return int(self.inputs["input_ids"].shape[1])


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


class ChatEngine:
    def __init__(self, model: str | None = None, device: str | None = None,
                 dtype: torch.dtype | str | None = None, base_name: str | None = None):
        self.model_ref = model
        self.base_path = resolve_model_path(model)
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.base_name = base_name or _default_name(model, self.base_path)
        self.tokenizer = _load_tokenizer(self.base_path)
        self.base: PreTrainedModel = AutoModelForCausalLM.from_pretrained(
            self.base_path, dtype=self.dtype).to(self.device).eval()
        self._peft: Any = None  # the PeftModel wrapping self.base, once a LoRA adapter is added
        self._targets: dict[str, _Target] = {self.base_name: _Target(self.tokenizer)}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ models
    def names(self) -> list[str]:
        """The base first, then adapters in the order they were added."""
        return list(self._targets)

    def is_adapter(self, name: str) -> bool:
        return name in self._targets and name != self.base_name

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
        source = resolve_adapter(path)
        tokenizer = self._tokenizer_for_source(source)
        if source.kind == "full":
            model = AutoModelForCausalLM.from_pretrained(source.path, dtype=self.dtype).to(self.device).eval()
            self._targets[name] = _Target(tokenizer, model=model, path=source.path)
            return name
        if not base_matches(source, self.base_path, self.model_ref):
            claimed = ", ".join(repr(c) for c in source.trained_on or [])
            message = (f"Adapter '{name}' ({source.path}) was trained on {claimed}, but this engine's "
                       f"base is '{self.base_name}' ({self.base_path}). "
                       "Start the engine with that base model, or pass check_base=False to load it anyway.")
            if check_base:
                raise BaseMismatchError(message)
            log.warning(message)
        from peft import PeftModel

        peft_name = f"adapter_{len(self._targets)}"  # PEFT names become module keys: no dots, no slashes
        with self._lock:
            try:
                if self._peft is None:
                    self._peft = PeftModel.from_pretrained(self.base, str(source.path), adapter_name=peft_name)
                else:
                    self._peft.load_adapter(str(source.path), adapter_name=peft_name)
            except (ValueError, RuntimeError, KeyError) as exc:
                raise AdapterError(f"Could not load adapter '{name}' from {source.path}: {exc}") from exc
            self._peft.to(self.device).eval()
        self._targets[name] = _Target(tokenizer, peft_name=peft_name, path=source.path)
        return name

    def _tokenizer_for_source(self, source: AdapterSource) -> Any:
        """The folder's own tokenizer; else the base's, with the job's template when it named one."""
        if source.has_tokenizer:
            return _load_tokenizer(source.path)
        if not source.template:
            return self.tokenizer
        from app.data.render import resolve_template

        tokenizer = _load_tokenizer(self.base_path)
        resolve_template(tokenizer, source.template)
        return tokenizer

    def tokenizer_for(self, model: str | None = None) -> Any:
        return self._target(model).tokenizer

    def _target(self, model: str | None) -> _Target:
        key = self.base_name if model in (None, "") else model
        if key not in self._targets:
            raise UnknownModelError(f"The model '{model}' does not exist; loaded: {', '.join(self.names())}.")
        return self._targets[key]

    @contextmanager
    def _selected(self, target: _Target) -> Iterator[Any]:
        """The model to call for a target (caller holds the lock)."""
        if target.model is not None:
            yield target.model
        elif self._peft is None:
            yield self.base
        elif target.peft_name is None:
            with self._peft.disable_adapter():
                yield self._peft
        else:
            self._peft.set_adapter(target.peft_name)
            yield self._peft

    # ------------------------------------------------------------------ generation
    def prompt_ids(self, messages: Sequence[Message], model: str | None = None) -> list[int]:
        """The prompt token ids a request would feed the model (chat template + generation prompt)."""
        return self._encode(self._target(model), messages)["input_ids"][0].tolist()

    def _encode(self, target: _Target, messages: Sequence[Message]) -> dict[str, torch.Tensor]:
        if not messages:
            raise ValueError("messages must hold at least one message.")
        if not getattr(target.tokenizer, "chat_template", None):
            raise ValueError("This model's tokenizer has no chat template: set `template` in the job "
                             "that trained it, or use an instruct base model.")
        encoded = target.tokenizer.apply_chat_template(
            list(messages), add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def _prepare(self, messages: Sequence[Message], model: str | None, temperature: float, top_p: float,
                 max_new_tokens: int, stop: list[str] | None, seed: int | None) -> _Request:
        target = self._target(model)
        inputs = self._encode(target, messages)
        prompt_len = int(inputs["input_ids"].shape[1])
        window = int(getattr(self.base.config, "max_position_embeddings", 0) or 0)
        if window and prompt_len >= window:
            raise ContextLengthError(f"The prompt is {prompt_len} tokens; this model's context is {window}.")
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1.")
        if window:
            max_new_tokens = min(max_new_tokens, window - prompt_len)
        tokenizer = target.tokenizer
        eos = self.base.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)  # an adapter's template may end turns with its own token
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_ids, default=0)
        kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "eos_token_id": sorted(eos_ids),
                                  "pad_token_id": pad}
        if temperature and temperature > 0:
            kwargs |= {"do_sample": True, "temperature": float(temperature), "top_p": float(top_p), "top_k": 0}
        else:
            kwargs["do_sample"] = False
        stops = [s for s in (stop or []) if s]
        return _Request(target, {k: v.to(self.device) for k, v in inputs.items()}, kwargs, stops, seed,
                        max_new_tokens, eos_ids)

    def _run(self, request: _Request, cancel: threading.Event, streamer: Any = None) -> list[int]:
        criteria = StoppingCriteriaList([CancelFlag(cancel)])
        if request.stop:
            criteria.append(StopOnText(request.target.tokenizer, request.stop, request.prompt_tokens))
        with self._lock:
            if request.seed is not None:
                torch.manual_seed(request.seed)
            with self._selected(request.target) as model, torch.inference_mode():
                out = model.generate(**request.inputs, **request.kwargs, stopping_criteria=criteria,
                                     streamer=streamer)
        return out[0, request.prompt_tokens:].tolist()

    def _finish(self, request: _Request, ids: list[int], text: str, stopped: bool,
                cancelled: bool) -> Generation:
        if stopped or (ids and ids[-1] in request.eos_ids):
            reason = "stop"
        elif cancelled:
            reason = "cancelled"
        elif len(ids) >= request.max_new_tokens:
            reason = "length"
        else:
            reason = "stop"  # a stop string ended generation inside text the decoder drops
        return Generation(text, request.prompt_tokens, len(ids), reason)

    def generate(self, messages: Sequence[Message], model: str | None = None, temperature: float = 0.0,
                 top_p: float = 1.0, max_new_tokens: int = 256, stop: list[str] | None = None,
                 seed: int | None = None) -> Generation:
        """One reply. temperature 0 = greedy; stop strings end generation and are cut from the text."""
        request = self._prepare(messages, model, temperature, top_p, max_new_tokens, stop, seed)
        ids = self._run(request, threading.Event())
        stops = StopFilter(request.stop)
        text = stops.feed(request.target.tokenizer.decode(ids, skip_special_tokens=True)) + stops.flush()
        return self._finish(request, ids, text, stops.stopped, False)

    def stream(self, messages: Sequence[Message], model: str | None = None, temperature: float = 0.0,
               top_p: float = 1.0, max_new_tokens: int = 256, stop: list[str] | None = None,
               seed: int | None = None) -> StreamResult:
        """Text deltas as they are generated (in a worker thread); `.generation` once exhausted.

        The request is checked here (unknown model, prompt too long raise at once); generation starts
        at the first `next()` or `start()`, so a server can validate before it queues.
        """
        request = self._prepare(messages, model, temperature, top_p, max_new_tokens, stop, seed)
        return StreamResult(self, request)


class StreamResult(Iterator[str]):
    """Iterate for text deltas; afterwards `.generation` holds the totals. `cancel()` stops early."""

    def __init__(self, engine: ChatEngine, request: _Request):
        self._engine, self._request = engine, request
        self._cancel = threading.Event()
        self._stops = StopFilter(request.stop)
        self._streamer = TextIteratorStreamer(request.target.tokenizer, skip_prompt=True,
                                              skip_special_tokens=True)
        self._ids: list[int] = []
        self._error: BaseException | None = None
        self._parts: list[str] = []
        self._drained = False  # the streamer has given its end signal
        self.generation: Generation | None = None
        self._thread = threading.Thread(target=self._work, name="ftstudio-generate", daemon=True)

    def start(self) -> StreamResult:
        """Begin generating (iteration starts it too): the request was validated when it was made."""
        if not self._thread.is_alive() and self._thread.ident is None:
            self._thread.start()
        return self

    def _work(self) -> None:
        try:
            self._ids = self._engine._run(self._request, self._cancel, self._streamer)
        except BaseException as exc:  # handed to the consumer, re-raised there
            self._error = exc
            self._streamer.end()  # unblock the consumer: generate() never reached its own end()

    def cancel(self) -> None:
        self._cancel.set()

    def __next__(self) -> str:
        if self.generation is not None:
            raise StopIteration
        self.start()
        for piece in () if self._drained else self._streamer:
            if self._stops.stopped:
                continue  # drain until the worker ends
            delta = self._stops.feed(piece)
            if self._stops.stopped:
                self._cancel.set()
            if delta:
                self._parts.append(delta)
                return delta
        self._drained = True
        tail = self._stops.flush()
        if tail:
            self._parts.append(tail)
            return tail
        self._thread.join()
        if self._error is not None:
            raise self._error
        stopped = self._stops.stopped
        cancelled = self._cancel.is_set() and not stopped
        self.generation = self._engine._finish(self._request, self._ids, "".join(self._parts), stopped,
                                               cancelled)
        raise StopIteration


def _load_tokenizer(folder: Path) -> Any:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _default_name(model: str | None, path: Path) -> str:
    if is_embedded(model):
        return EMBEDDED_ID
    assert model is not None
    return path.name if Path(model).expanduser().exists() else model.strip()
