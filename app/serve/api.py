"""OpenAI-compatible HTTP API over a ChatEngine: /v1/models, /v1/chat/completions, /metrics, /health.

One generation runs on the model at a time; up to `max_queue` requests wait their turn in the event
loop (FIFO), more are refused with 429. Generation runs in a worker thread and hands text deltas to
the event loop through an asyncio queue, so streaming never blocks other requests.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.sse import EventSourceResponse, format_sse_event
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.chat.engine import ChatEngine, ContextLengthError, Generation, StreamResult, UnknownModelError
from app.serve.metrics import Metrics, MetricsMiddleware
from app.serve.schemas import ChatCompletionRequest, OpenAIError, error_body

DEFAULT_MAX_TOKENS = 512
OWNER = "ftstudio"


class ModelSlot:
    """The right to generate: one holder, FIFO waiters, a bound on how many may wait."""

    def __init__(self, max_queue: int, metrics: Metrics):
        self.max_queue, self.metrics = max_queue, metrics
        self.lock = asyncio.Lock()
        self.waiting = 0

    def admit(self) -> None:
        if self.waiting >= self.max_queue and (self.lock.locked() or self.waiting > 0):
            raise OpenAIError(429, f"The server is busy: {self.waiting} requests are already waiting "
                              "for the model. Retry later.", type="rate_limit_error", code="queue_full",
                              headers={"Retry-After": "1"})

    async def acquire(self) -> None:
        self.waiting += 1
        self.metrics.queue_depth.set(self.waiting)
        try:
            await self.lock.acquire()
        finally:
            self.waiting -= 1
            self.metrics.queue_depth.set(self.waiting)
        self.metrics.running.set(1)

    def release(self) -> None:
        self.metrics.running.set(0)
        self.lock.release()


async def run_generation(result: StreamResult, slot: ModelSlot) -> AsyncIterator[str | Generation]:
    """Wait for the model, then yield text deltas and finally the Generation.

    A pump thread iterates the engine's stream and posts to an asyncio queue. The slot is released by
    that thread once generation has really ended, so a client that disconnects (this generator is then
    closed or cancelled) frees the model only after its cancelled generation stopped.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def post(*item: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is gone (server shutting down)
            pass

    def pump() -> None:
        try:
            for delta in result:
                post("delta", delta)
            post("done", result.generation)
        except BaseException as exc:
            post("error", exc)
        finally:
            try:
                loop.call_soon_threadsafe(slot.release)
            except RuntimeError:
                pass

    await slot.acquire()
    try:
        threading.Thread(target=pump, name="ftstudio-pump", daemon=True).start()
    except BaseException:
        slot.release()
        raise
    try:
        while True:
            kind, value = await queue.get()
            if kind == "error":
                raise value
            yield value
            if kind == "done":
                return
    finally:
        result.cancel()  # no-op when finished; stops generation when the client went away


def _expected_key(api_key: str | None) -> str | None:
    key = api_key if api_key is not None else os.environ.get("FTSTUDIO_API_KEY")
    return key or None


def create_app(engine: ChatEngine, api_key: str | None = None, max_queue: int = 64,
               default_max_tokens: int = DEFAULT_MAX_TOKENS) -> FastAPI:
    """The API app. api_key None reads $FTSTUDIO_API_KEY; no key at all leaves /v1 open."""
    key = _expected_key(api_key)
    metrics = Metrics()
    slot = ModelSlot(max_queue, metrics)
    created = int(time.time())
    app = FastAPI(title="Finetune Studio API", version="1", docs_url=None, redoc_url=None)
    app.state.engine, app.state.metrics, app.state.slot = engine, metrics, slot
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    @app.exception_handler(OpenAIError)
    async def openai_error(request: Request, exc: OpenAIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        where = ".".join(loc)
        message = f"{where}: {first.get('msg', 'invalid request')}" if where else first.get("msg", "invalid")
        return JSONResponse(error_body(message, code="invalid_request", param=where or None), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(exc.detail), kind, code=kind if exc.status_code == 404 else None),
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(error_body(f"Internal error: {type(exc).__name__}: {exc}", "server_error"),
                            status_code=500)

    async def check_key(request: Request) -> None:
        if key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
            raise OpenAIError(401, "Incorrect or missing API key: send 'Authorization: Bearer <key>'.",
                              code="invalid_api_key")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": engine.names(), "queue_depth": slot.waiting}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.exposition(), media_type=metrics.content_type)

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(check_key)])

    def model_card(name: str) -> dict[str, Any]:
        card = {"id": name, "object": "model", "created": created, "owned_by": OWNER}
        if engine.is_adapter(name):
            card["parent"] = engine.base_name
        return card

    @v1.get("/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(name) for name in engine.names()]}

    @v1.get("/models/{model_id:path}")
    async def get_model(model_id: str) -> dict[str, Any]:
        if model_id not in engine.names():
            raise _unknown_model(model_id, engine)
        return model_card(model_id)

    @v1.post("/chat/completions")
    async def chat_completions(body: ChatCompletionRequest) -> Response:
        if problem := body.unsupported():
            raise problem
        if body.model not in engine.names():
            raise _unknown_model(body.model, engine)
        temperature = 1.0 if body.temperature is None else body.temperature
        top_p = 1.0 if body.top_p is None else body.top_p
        if top_p == 0:
            temperature = 0.0  # only the most likely token survives: greedy
        start = time.perf_counter()
        try:
            # Rendering and tokenizing a long conversation takes milliseconds: off the event loop.
            result = await asyncio.to_thread(functools.partial(
                engine.stream, body.template_messages(), model=body.model, temperature=temperature, top_p=top_p,
                max_new_tokens=body.max_completion_tokens or body.max_tokens or default_max_tokens,
                stop=body.stop_list, seed=body.seed))
        except ContextLengthError as exc:
            raise OpenAIError(400, str(exc), param="messages", code="context_length_exceeded") from exc
        except UnknownModelError as exc:
            raise _unknown_model(body.model, engine) from exc
        except ValueError as exc:
            raise OpenAIError(400, str(exc), param="messages") from exc
        slot.admit()
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            events = _sse_events(result, slot, metrics, body.model, completion_id, include_usage, start)
            return EventSourceResponse(events, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        generation = await _collect(result, slot)
        metrics.count_tokens(body.model, generation.prompt_tokens, generation.completion_tokens)
        return JSONResponse({
            "id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": body.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": generation.text, "refusal": None},
                         "logprobs": None, "finish_reason": _finish(generation)}],
            "usage": _usage(generation),
        })

    app.include_router(v1)
    return app


def _unknown_model(name: str, engine: ChatEngine) -> OpenAIError:
    return OpenAIError(404, f"The model '{name}' does not exist; available: {', '.join(engine.names())}.",
                       param="model", code="model_not_found")


def _finish(generation: Generation) -> str:
    return "length" if generation.finish_reason == "length" else "stop"


def _usage(generation: Generation) -> dict[str, int]:
    return {"prompt_tokens": generation.prompt_tokens, "completion_tokens": generation.completion_tokens,
            "total_tokens": generation.prompt_tokens + generation.completion_tokens}


async def _collect(result: StreamResult, slot: ModelSlot) -> Generation:
    async with aclosing(run_generation(result, slot)) as items:
        async for item in items:
            if isinstance(item, Generation):
                return item
    raise RuntimeError("generation ended without a result")


async def _sse_events(result: StreamResult, slot: ModelSlot, metrics: Metrics, model: str, completion_id: str,
                      include_usage: bool, start: float) -> AsyncIterator[bytes]:
    """OpenAI chat.completion.chunk events: role, content deltas, finish_reason, [usage], [DONE]."""
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None, usage: dict | None = None,
              choices: bool = True) -> bytes:
        payload: dict[str, Any] = {
            "id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}] if choices else [],
        }
        if include_usage:
            payload["usage"] = usage
        return format_sse_event(data_str=json.dumps(payload, ensure_ascii=False, separators=(",", ":")))

    yield chunk({"role": "assistant", "content": ""})
    first = True
    try:
        async with aclosing(run_generation(result, slot)) as items:
            async for item in items:
                if isinstance(item, Generation):
                    metrics.count_tokens(model, item.prompt_tokens, item.completion_tokens)
                    yield chunk({}, _finish(item))
                    if include_usage:
                        yield chunk({}, usage=_usage(item), choices=False)
                    break
                if first:
                    metrics.ttft.observe(time.perf_counter() - start)
                    first = False
                yield chunk({"content": item})
    except Exception as exc:  # headers are gone: report in-stream, as OpenAI does
        body = error_body(f"Generation failed: {type(exc).__name__}: {exc}", "server_error")
        yield format_sse_event(data_str=json.dumps(body))
    yield format_sse_event(data_str="[DONE]")
