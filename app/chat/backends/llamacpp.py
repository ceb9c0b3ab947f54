"""llama.cpp backend: serve an exported GGUF file (what users deploy on CPU) through llama-cpp-python.

    ftstudio api --backend llamacpp --model exports/lumi-gguf-q8_0/lumi-q8_0.gguf   # make gguf-quant first

One GGUF model (adapters are merged into it by the Export tab); llama-cpp-python runs one sequence at a
time, so requests wait in a queue and generate in turn. Prompts are rendered with the chat template
stored in the GGUF file (read by transformers' GGUF tokenizer loader), stop strings and JSON output are
llama.cpp's own (`stop`, a GBNF grammar built from the JSON schema).
"""

from __future__ import annotations

import json
import os
import queue
import threading
from pathlib import Path
from typing import Any

from app.chat.backends import BackendUnavailable
from app.chat.backends.base import Delta, Generation, Load, Sampling, StreamResult, UnknownModelError, UnsupportedError
from app.chat.backends.common import ChatMethods, fit_to_window

DEFAULT_CONTEXT = 4096


def gguf_file(model: str | None) -> Path:
    if not model:
        raise BackendUnavailable("--backend llamacpp needs --model path/to/model.gguf (the Export tab writes one).")
    path = Path(model).expanduser()
    if path.is_dir():
        found = sorted(path.glob("*.gguf"))
        if len(found) != 1:
            raise BackendUnavailable(f"'{path}' holds {len(found)} .gguf files: name the one to serve.")
        path = found[0]
    if not path.is_file() or path.suffix.lower() != ".gguf":
        raise BackendUnavailable(f"'{model}' is not a .gguf file.")
    return path


def gguf_tokenizer(path: Path) -> Any:
    """The model's tokenizer and chat template, read from the GGUF file itself."""
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    if not tokenizer.chat_template:
        field = GGUFReader(str(path)).fields.get("tokenizer.chat_template")
        if field is not None:
            tokenizer.chat_template = bytes(field.parts[field.data[0]]).decode("utf-8")
    return tokenizer


class LlamaCppBackend(ChatMethods):
    kind = "llamacpp"

    def __init__(self, model: str | None, adapters: list[tuple[str, str]], context: int | None = None, **_: Any):
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise BackendUnavailable("llama-cpp-python is not installed: `make gguf-quant` builds it "
                                     "(pip install 'finetune-studio[gguf-quant]').") from exc
        if adapters:
            raise BackendUnavailable("The llama.cpp backend serves one GGUF model: merge the adapter and export "
                                     "it as GGUF (Export tab, or `ftstudio export`), then serve that file.")
        self.path = gguf_file(model)
        self.base_name = self.path.stem
        self.tokenizer = gguf_tokenizer(self.path)
        self.llm = Llama(model_path=str(self.path), n_ctx=context or DEFAULT_CONTEXT, verbose=False,
                         n_threads=max(1, (os.cpu_count() or 2)))
        self._window = int(self.llm.n_ctx())
        self._queue: queue.Queue[tuple[StreamResult, list[int], Sampling] | None] = queue.Queue()
        self._running = 0
        self._worker = threading.Thread(target=self._serve, name="ftstudio-llamacpp", daemon=True)
        self._worker.start()

    def names(self) -> list[str]:
        return [self.base_name]

    def is_adapter(self, name: str) -> bool:
        return False

    def tokenizer_for(self, model: str | None = None) -> Any:
        if model not in (None, "", self.base_name):
            raise UnknownModelError(f"The model '{model}' does not exist; loaded: {self.base_name}.")
        return self.tokenizer

    def submit(self, prompt_ids: list[int], model: str | None, sampling: Sampling) -> StreamResult:
        self.tokenizer_for(model)
        if sampling.logprobs is not None:
            raise UnsupportedError("logprobs are not available with the llama.cpp backend (serve with "
                                   "--backend transformers for them).")
        sampling.max_new_tokens = fit_to_window(len(prompt_ids), sampling.max_new_tokens, self._window)
        return StreamResult(len(prompt_ids), lambda result: self._queue.put((result, list(prompt_ids), sampling)))

    def _serve(self) -> None:
        while (job := self._queue.get()) is not None:
            result, prompt_ids, sampling = job
            if result.cancelled:
                result.put("done", Generation("", len(prompt_ids), 0, "cancelled"))
                continue
            self._running = 1
            try:
                self._generate(result, prompt_ids, sampling)
            except Exception as exc:  # noqa: BLE001 - handed to the consumer
                result.put("error", exc)
            finally:
                self._running = 0

    def _generate(self, result: StreamResult, prompt_ids: list[int], sampling: Sampling) -> None:
        kwargs: dict[str, Any] = {"max_tokens": sampling.max_new_tokens, "temperature": sampling.temperature,
                                  "top_p": sampling.top_p or 1.0, "top_k": 0, "stop": sampling.stop or None,
                                  "stream": True}
        if sampling.seed is not None:
            kwargs["seed"] = int(sampling.seed) % (2**31)
        if sampling.json_schema is not None:
            from llama_cpp import LlamaGrammar

            kwargs["grammar"] = LlamaGrammar.from_json_schema(json.dumps(sampling.json_schema), verbose=False)
        parts: list[str] = []
        finish = "stop"
        stream = self.llm.create_completion(prompt=prompt_ids, **kwargs)
        try:
            for chunk in stream:
                if result.cancelled:
                    finish = "cancelled"
                    break
                choice = chunk["choices"][0]
                piece = choice.get("text") or ""
                if piece:
                    parts.append(piece)
                    result.put("delta", Delta(piece))
                if choice.get("finish_reason"):
                    finish = "length" if choice["finish_reason"] == "length" else "stop"
        finally:
            stream.close()
        text = "".join(parts)
        tokens = len(self.llm.tokenize(text.encode("utf-8"), add_bos=False)) if text else 0
        result.put("done", Generation(text, len(prompt_ids), tokens, finish))

    def load(self) -> Load:
        return Load(self._running, self._queue.qsize(), 1)

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join(timeout=30)
        self.llm.close()  # now, not in a destructor at interpreter exit (llama.cpp's bindings may be gone)
