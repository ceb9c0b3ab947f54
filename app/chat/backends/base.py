"""What every serving backend speaks: a request's sampling settings, the stream it answers with, the protocol.

A backend (transformers batched, vLLM, llama.cpp) holds one base model and its adapters under model names,
renders prompts with each name's own tokenizer (its chat template), and answers `submit(prompt_ids, model,
sampling)` with a `StreamResult`: text deltas (each with the log-probabilities of its tokens when asked)
and finally a `Generation`. Requests run concurrently; `cancel()` takes one out of the running batch.

The consumer either iterates the result (a thread: the Chat tab, the CLI) or registers a listener that the
backend calls for each event (the API server, which hands events to its event loop without a thread per
request). Generation starts at the first `next()`, `start()` or `listen()`, so a server can validate and
admit a request before it uses the model.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

Message = dict[str, Any]


class UnknownModelError(LookupError):
    """A request named a model the backend does not hold."""


class ContextLengthError(ValueError):
    """The prompt alone fills the model's context window."""


class UnsupportedError(ValueError):
    """A valid request this backend or model cannot serve (the message says why and what would)."""


@dataclass
class Sampling:
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    max_new_tokens: int = 256
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    logprobs: int | None = None  # None: none; k >= 0: each token's log-probability and its k best alternatives
    json_schema: dict[str, Any] | None = None  # constrain the output to JSON matching this schema


@dataclass
class TokenLogprob:
    token: str
    logprob: float
    top: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class Delta:
    text: str
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of turn or a stop string), "length", or "cancelled"
    logprobs: list[TokenLogprob] | None = None


@dataclass
class Load:
    running: int  # requests decoding in the batch now
    waiting: int  # requests submitted, not yet in the batch
    max_batch: int


Event = tuple[str, Any]  # ("delta", Delta) | ("done", Generation) | ("error", BaseException)


class StreamResult(Iterator[str]):
    """One request's output. Iterate for text deltas (`deltas()` for Delta objects); then `.generation`."""

    def __init__(self, prompt_tokens: int, submit: Callable[[StreamResult], None],
                 on_cancel: Callable[[], None] | None = None):
        self.prompt_tokens = prompt_tokens
        self.generation: Generation | None = None
        self._submit, self._on_cancel = submit, on_cancel
        self._submitted = False
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._listener: Callable[[Event], None] | None = None
        self._texts: Iterator[str] | None = None

    # ------------------------------------------------------------------ the backend's side
    def put(self, kind: str, value: Any) -> None:
        if kind == "done":
            self.generation = value
        with self._lock:
            listener = self._listener
            if listener is None:
                self._events.put((kind, value))
        if listener is not None:
            listener((kind, value))

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    # ------------------------------------------------------------------ the consumer's side
    def start(self) -> StreamResult:
        with self._lock:
            if self._submitted:
                return self
            self._submitted = True
        self._submit(self)
        return self

    def cancel(self) -> None:
        """Stop generating (the request leaves the batch at the next step); a no-op once finished."""
        self._cancel.set()
        if self._on_cancel is not None:
            self._on_cancel()

    def listen(self, listener: Callable[[Event], None]) -> None:
        """Have `listener` called (from the backend's thread) for every event, earlier ones first."""
        with self._lock:
            while True:
                try:
                    listener(self._events.get_nowait())
                except queue.Empty:
                    break
            self._listener = listener
        self.start()

    def deltas(self) -> Iterator[Delta]:
        self.start()
        while True:
            kind, value = self._events.get()
            if kind == "delta":
                yield value
            elif kind == "done":
                return
            else:
                raise value

    def __next__(self) -> str:
        if self._texts is None:
            self._texts = (d.text for d in self.deltas() if d.text)
        return next(self._texts)


class Backend(Protocol):
    """What the API server and the Chat tab need from an engine."""

    base_name: str
    kind: str  # "transformers" | "vllm" | "llamacpp"

    def names(self) -> list[str]: ...

    def is_adapter(self, name: str) -> bool: ...

    def tokenizer_for(self, model: str | None = None) -> Any: ...

    def prompt_ids(self, messages: Sequence[Message], model: str | None = None,
                   tools: list[Any] | None = None, template_kwargs: dict[str, Any] | None = None) -> list[int]: ...

    def submit(self, prompt_ids: list[int], model: str | None, sampling: Sampling) -> StreamResult: ...

    def load(self) -> Load: ...

    def close(self) -> None: ...
