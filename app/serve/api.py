"""OpenAI-compatible HTTP API over a serving backend: /v1/models, /v1/chat/completions, /v1/completions,
/metrics, /health.

Requests are generated concurrently: the backend decodes them together (the transformers backend in one
continuous batch, vLLM in its own). Up to `max_batch` run and `max_queue` more wait; further requests get
429 at once. Every error has OpenAI's shape {"error": {message, type, param, code}}; a client that
disconnects, streaming or not, cancels its generation.
"""

from __future__ import annotations

import hmac
import os
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.chat.backends.base import Backend
from app.serve.chat_api import chat_completions
from app.serve.completions_api import completions
from app.serve.context import ServeContext, unknown_model
from app.serve.metrics import Metrics, MetricsMiddleware, standard_collectors
from app.serve.schemas import ChatCompletionRequest, CompletionRequest, OpenAIError, error_body
from app.serve.streams import Admission

DEFAULT_MAX_TOKENS = 512
OWNER = "ftstudio"
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"description": text, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    for code, text in ((400, "Invalid request"), (401, "Missing or wrong API key"), (404, "Unknown model"),
                       (429, "The queue is full"))
}


def _expected_key(api_key: str | None) -> str | None:
    key = api_key if api_key is not None else os.environ.get("FTSTUDIO_API_KEY")
    return key or None


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    message = str(first.get("msg", "invalid request"))
    return (f"{where}: {message}" if where else message), where or None


def create_app(backend: Backend, api_key: str | None = None, max_queue: int = 64,
               default_max_tokens: int = DEFAULT_MAX_TOKENS, runs_dir: Path | None = None) -> FastAPI:
    """The API app. api_key None reads $FTSTUDIO_API_KEY; no key at all leaves /v1 open. A runs folder adds
    the training runs in it to /metrics."""
    key = _expected_key(api_key)
    metrics = Metrics()
    admission = Admission(backend.load().max_batch, max_queue)
    metrics.bind(backend.load, lambda: admission.inflight)
    for collector in standard_collectors(runs_dir):
        metrics.add_collector(collector)
    ctx = ServeContext(backend, admission, metrics, default_max_tokens)
    created = int(time.time())
    app = FastAPI(title="Finetune Studio API", version="1", docs_url=None, redoc_url=None)
    app.state.engine, app.state.metrics, app.state.admission = backend, metrics, admission
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    @app.exception_handler(OpenAIError)
    async def openai_error(request: Request, exc: OpenAIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, where = _validation_message(exc)
        return JSONResponse(error_body(message, code="invalid_request", param=where), status_code=400)

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
        load = backend.load()
        return {"status": "ok", "backend": backend.kind, "models": backend.names(), "running": load.running,
                "queue_depth": load.waiting, "in_flight": admission.inflight}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.exposition(), media_type=metrics.content_type)

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(check_key)], responses=ERROR_RESPONSES)

    def model_card(name: str) -> dict[str, Any]:
        card = {"id": name, "object": "model", "created": created, "owned_by": OWNER}
        if backend.is_adapter(name):
            card["parent"] = backend.base_name
        return card

    @v1.get("/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(name) for name in backend.names()]}

    @v1.get("/models/{model_id:path}")
    async def get_model(model_id: str) -> dict[str, Any]:
        if model_id not in backend.names():
            raise unknown_model(model_id, backend)
        return model_card(model_id)

    @v1.post("/chat/completions")
    async def chat(body: ChatCompletionRequest, request: Request) -> Response:
        return await chat_completions(body, request, ctx)

    @v1.post("/completions")
    async def complete(body: CompletionRequest, request: Request) -> Response:
        return await completions(body, request, ctx)

    app.include_router(v1)
    _document_errors(app)
    return app


def _document_errors(app: FastAPI) -> None:
    """Describe the error body in the OpenAPI schema, so clients and fuzzers know every 4xx's shape."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        detail = {"type": "object", "required": ["message", "type", "param", "code"], "properties": {
            "message": {"type": "string"}, "type": {"type": "string"},
            "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}
        schema.setdefault("components", {}).setdefault("schemas", {})["Error"] = {
            "type": "object", "required": ["error"], "properties": {"error": detail}}
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                operation.get("responses", {}).pop("422", None)  # validation errors are 400s here
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
