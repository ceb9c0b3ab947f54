"""vLLM backend (GPU): continuous batching and PagedAttention, the base with every LoRA adapter enabled.

    ftstudio api --backend vllm --adapter lumi=runs/identity-lora     # pip install 'finetune-studio[vllm]'

vLLM's AsyncLLM serves the base model with LoRA enabled, each adapter as a LoRA module (a request's
`model` is the adapter name), tensor-parallel over the visible GPUs. The studio keeps its own API in
front of it (auth, /metrics, /v1/models, error shapes): prompts are rendered here with each adapter's own
tokenizer, exactly as the transformers backend does, and handed to vLLM as token ids. vLLM runs its
asyncio engine in a thread of its own; requests cross over with run_coroutine_threadsafe.

Written against vLLM's documented API (AsyncLLM.from_engine_args, generate(TokensPrompt, SamplingParams,
request_id, lora_request=LoRARequest), abort, RequestOutputKind.DELTA, StructuredOutputsParams).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import uuid
from pathlib import Path
from typing import Any

from app.chat.adapters import resolve_adapter
from app.chat.backends import BackendUnavailable
from app.chat.backends.base import Delta, Generation, Load, Sampling, StreamResult, TokenLogprob, UnknownModelError
from app.chat.backends.common import ChatMethods, fit_to_window
from app.models.rope import base_arguments_for
from app.models.source import EMBEDDED_ID, is_embedded, resolve_model_path

LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts
DEFAULT_MAX_SEQS = 256


def check_available() -> None:
    """Raise BackendUnavailable, saying what is missing, unless vLLM can run here."""
    try:
        import vllm  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailable("vLLM is not installed: pip install 'finetune-studio[vllm]' (Linux with an "
                                 "NVIDIA GPU), or serve with --backend transformers.") from exc
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailable("vLLM needs a CUDA GPU and none is visible here: serve with --backend "
                                 "transformers (CPU or GPU), or --backend llamacpp for a GGUF file.")


def lora_rank(ranks: list[int]) -> int:
    """The smallest max_lora_rank vLLM accepts that fits every adapter."""
    need = max(ranks, default=8)
    for allowed in LORA_RANKS:
        if allowed >= need:
            return allowed
    raise BackendUnavailable(f"An adapter has LoRA rank {need}; vLLM supports at most {LORA_RANKS[-1]}.")


def engine_kwargs(base: Path, adapter_ranks: list[int], tensor_parallel: int, max_seqs: int) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"model": str(base), "tensor_parallel_size": tensor_parallel,
                              "max_num_seqs": max_seqs, "disable_log_stats": True}
    if adapter_ranks:
        kwargs |= {"enable_lora": True, "max_loras": len(adapter_ranks), "max_lora_rank": lora_rank(adapter_ranks)}
    return kwargs


def sampling_kwargs(sampling: Sampling) -> dict[str, Any]:
    """vLLM SamplingParams keyword arguments for one of our requests."""
    kwargs: dict[str, Any] = {"n": 1, "temperature": sampling.temperature, "top_p": sampling.top_p or 1.0,
                              "max_tokens": sampling.max_new_tokens, "stop": list(sampling.stop), "seed": sampling.seed}
    if sampling.logprobs is not None:
        kwargs["logprobs"] = max(1, sampling.logprobs)
    return kwargs


def to_delta(text: str, token_ids: list[int], logprobs: Any, wanted: int | None) -> Delta:
    """One vLLM delta output as ours; `logprobs` is vLLM's list (per token) of {token_id: Logprob}."""
    items: list[TokenLogprob] = []
    if wanted is not None and logprobs:
        for token_id, alternatives in zip(token_ids, logprobs):
            chosen = alternatives[token_id]
            ranked = sorted(alternatives.values(), key=lambda lp: lp.rank or 0)[:wanted]
            items.append(TokenLogprob(chosen.decoded_token or "", float(chosen.logprob),
                                      [(lp.decoded_token or "", float(lp.logprob)) for lp in ranked]))
    return Delta(text, items)


class VllmBackend(ChatMethods):
    kind = "vllm"

    def __init__(self, model: str | None, adapters: list[tuple[str, str]], tensor_parallel: int | None = None,
                 max_batch: int | None = None, **_: Any):
        check_available()
        import torch
        from vllm import AsyncEngineArgs
        from vllm.lora.request import LoRARequest
        from vllm.v1.engine.async_llm import AsyncLLM

        from app.chat.backends.transformers import load_tokenizer

        self.base_path = resolve_model_path(model)
        self.base_name = EMBEDDED_ID if is_embedded(model) else (
            self.base_path.name if Path(str(model)).expanduser().exists() else str(model).strip())
        self.tokenizer = load_tokenizer(self.base_path)
        self._tokenizers: dict[str, Any] = {self.base_name: self.tokenizer}
        self._loras: dict[str, Any] = {}
        ranks = []
        for lora_id, (name, path) in enumerate(adapters, start=1):
            source = resolve_adapter(path)
            if source.kind != "lora":
                raise BackendUnavailable(f"'{name}' ({source.path}) is a full model; vLLM serves LoRA adapters of "
                                         "one base. Serve it on its own: --backend vllm --model that folder.")
            if base_arguments_for(source.path, self.base_path):
                raise BackendUnavailable(f"'{name}' ({source.path}) was trained with rope_scaling, which vLLM cannot "
                                         "apply to one adapter of a shared base: serve it with --backend "
                                         "transformers, or export it merged and serve that folder.")
            ranks.append(int(json.loads((source.path / "adapter_config.json").read_text()).get("r", 8)))
            self._loras[name] = LoRARequest(name, lora_id, str(source.path))
            self._tokenizers[name] = load_tokenizer(source.path) if source.has_tokenizer else self.tokenizer
        self.max_batch = max_batch or DEFAULT_MAX_SEQS
        kwargs = engine_kwargs(self.base_path, ranks, tensor_parallel or torch.cuda.device_count(), self.max_batch)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ftstudio-vllm", daemon=True)
        self._thread.start()
        self.engine = asyncio.run_coroutine_threadsafe(self._create(AsyncLLM, AsyncEngineArgs(**kwargs)),
                                                       self._loop).result()
        self._window = int(self.engine.model_config.max_model_len)
        self._running = 0
        self._ids = itertools.count()

    @staticmethod
    async def _create(cls: Any, args: Any) -> Any:
        return cls.from_engine_args(args)  # inside the loop: vLLM starts its output handler there

    def names(self) -> list[str]:
        return list(self._tokenizers)

    def is_adapter(self, name: str) -> bool:
        return name in self._loras

    def tokenizer_for(self, model: str | None = None) -> Any:
        key = self.base_name if model in (None, "") else model
        if key not in self._tokenizers:
            raise UnknownModelError(f"The model '{model}' does not exist; loaded: {', '.join(self.names())}.")
        return self._tokenizers[key]

    def submit(self, prompt_ids: list[int], model: str | None, sampling: Sampling) -> StreamResult:
        self.tokenizer_for(model)
        sampling.max_new_tokens = fit_to_window(len(prompt_ids), sampling.max_new_tokens, self._window)
        request_id = f"ftstudio-{next(self._ids)}-{uuid.uuid4().hex[:8]}"
        lora = self._loras.get(model or "")

        def start(result: StreamResult) -> None:
            asyncio.run_coroutine_threadsafe(self._generate(result, prompt_ids, sampling, request_id, lora),
                                             self._loop)

        def cancel() -> None:
            asyncio.run_coroutine_threadsafe(self.engine.abort(request_id), self._loop)

        return StreamResult(len(prompt_ids), start, on_cancel=cancel)

    async def _generate(self, result: StreamResult, prompt_ids: list[int], sampling: Sampling, request_id: str,
                        lora: Any) -> None:
        from vllm import SamplingParams, TokensPrompt
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        extra: dict[str, Any] = {"output_kind": RequestOutputKind.DELTA}
        if sampling.json_schema is not None:
            extra["structured_outputs"] = StructuredOutputsParams(json=sampling.json_schema)
        params = SamplingParams(**sampling_kwargs(sampling), **extra)
        parts: list[str] = []
        logprobs: list[TokenLogprob] = []
        tokens, finish = 0, "stop"
        self._running += 1
        try:
            async for output in self.engine.generate(TokensPrompt(prompt_token_ids=list(prompt_ids)), params,
                                                     request_id, lora_request=lora):
                piece = output.outputs[0]
                delta = to_delta(piece.text, list(piece.token_ids), piece.logprobs, sampling.logprobs)
                tokens += len(piece.token_ids)
                parts.append(delta.text)
                logprobs += delta.logprobs
                if delta.text or delta.logprobs:
                    result.put("delta", delta)
                if piece.finish_reason:
                    finish = {"length": "length", "abort": "cancelled"}.get(piece.finish_reason, "stop")
            if result.cancelled:
                finish = "cancelled"
            result.put("done", Generation("".join(parts), len(prompt_ids), tokens, finish,
                                          logprobs if sampling.logprobs is not None else None))
        except Exception as exc:  # noqa: BLE001 - handed to the consumer
            result.put("error", exc)
        finally:
            self._running -= 1

    def load(self) -> Load:
        return Load(self._running, 0, self.max_batch)

    def close(self) -> None:
        self.engine.shutdown()
        self._loop.call_soon_threadsafe(self._loop.stop)
