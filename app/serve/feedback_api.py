"""POST /v1/feedback: a rating and/or a corrected answer for an earlier chat completion, by its id.

    POST /v1/feedback {"completion_id": "chatcmpl-...", "rating": "up" | "down", "correction": "...",
                       "choice_index": 0}
    -> {"id": "fb-...", "object": "feedback", "sft_rows_added": 1, "preference_pairs_added": 1, ...}

The server remembers what it answered (app.serve.completion_log: id -> model, messages, answers, bounded
on disk) through a pure ASGI middleware around /v1/chat/completions, streamed or not: the record is
written before the response's last bytes leave, so a client can send feedback as soon as it has the
answer. Feedback goes to the studio's FeedbackStore (app.loop.feedback): corrections and up-voted answers
become SFT rows, corrections and up/down-voted answers to one prompt preference pairs. Auth and error
shapes are the rest of /v1's: an unknown id is a 404, a bad body a 400.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, FastAPI
from pydantic import BaseModel, ConfigDict, Field

from app.loop.feedback import FeedbackError, FeedbackStore
from app.serve.completion_log import CompletionLog
from app.serve.schemas import ChatCompletionRequest, OpenAIError

CHAT_PATH = "/v1/chat/completions"


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    completion_id: str = Field(min_length=1, max_length=200)
    rating: Literal["up", "down"] | None = None
    correction: str | None = Field(None, max_length=100_000)
    choice_index: int = Field(0, ge=0)


def install_feedback(app: FastAPI, v1: APIRouter, runs_dir: Path, dataset_dir: Path) -> FeedbackStore:
    """Remember chat completions and add POST /v1/feedback; returns the store feedback goes to."""
    log = CompletionLog(Path(runs_dir) / "feedback")
    store = FeedbackStore(Path(runs_dir) / "feedback", dataset_dir)
    app.add_middleware(CompletionRecorder, log=log)
    app.state.feedback = store

    @v1.post("/feedback")
    async def feedback(body: FeedbackRequest) -> dict[str, Any]:
        record = await asyncio.to_thread(log.find, body.completion_id)
        if record is None:
            raise OpenAIError(404, f"No chat completion '{body.completion_id}' on this server: send the \"id\" of a "
                              f"response it gave (it keeps the last {2 * log.max_records}).",
                              param="completion_id", code="completion_not_found")
        answers = record.get("answers") or []
        if body.choice_index >= len(answers):
            raise OpenAIError(400, f"choice_index {body.choice_index}: that completion has {len(answers)} choice(s).",
                              param="choice_index")
        try:
            saved = await asyncio.to_thread(store.record, record["messages"], answers[body.choice_index] or "",
                                            body.rating, body.correction, record.get("model", ""), "api",
                                            body.completion_id)
        except FeedbackError as exc:
            raise OpenAIError(400, str(exc), param=str(exc).split(":")[0] if ":" in str(exc) else None) from None
        return {"id": saved.id, "object": "feedback", "completion_id": body.completion_id,
                "model": record.get("model"), "rating": body.rating, "corrected": bool(body.correction),
                "sft_rows_added": saved.sft_rows, "preference_pairs_added": saved.pairs, "note": saved.note}

    return store


class CompletionRecorder:
    """Pure ASGI: reads a chat request's messages and its answer(s) as they pass, and remembers them."""

    def __init__(self, app: Any, log: CompletionLog):
        self.app, self.log = app, log

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST" or scope.get("path") != CHAT_PATH:
            await self.app(scope, receive, send)
            return
        request = bytearray()
        reply = _Reply()

        async def read() -> dict:
            message = await receive()
            if message["type"] == "http.request":
                request.extend(message.get("body", b""))
            return message

        async def write(message: dict) -> None:
            if message["type"] == "http.response.start":
                reply.start(message)
            elif message["type"] == "http.response.body" and reply.wanted:
                reply.feed(message.get("body", b""))
                if reply.complete or not message.get("more_body", False):
                    await self._remember(bytes(request), reply)
            await send(message)

        await self.app(scope, read, write)

    async def _remember(self, request: bytes, reply: _Reply) -> None:
        if reply.saved or not reply.completion_id:
            return
        reply.saved = True
        try:
            body = ChatCompletionRequest.model_validate(json.loads(request))
        except ValueError:
            return  # the route answered 200, so this does not happen; never break a response over it
        answers = [reply.answers.get(i) for i in range(max(reply.answers, default=-1) + 1)]
        await asyncio.to_thread(self.log.remember, reply.completion_id, body.model, body.template_messages(),
                                answers)


class _Reply:
    """A chat completion read from the bytes sent: its id and each choice's text (JSON or SSE chunks)."""

    def __init__(self) -> None:
        self.wanted = False
        self.stream = False
        self.buffer = bytearray()
        self.completion_id: str | None = None
        self.answers: dict[int, str | None] = {}
        self.complete = False
        self.saved = False

    def start(self, message: dict) -> None:
        headers = {k.decode().lower(): v.decode() for k, v in message.get("headers", [])}
        kind = headers.get("content-type", "")
        self.wanted = message.get("status") == 200 and ("json" in kind or "event-stream" in kind)
        self.stream = "event-stream" in kind

    def feed(self, chunk: bytes) -> None:
        self.buffer.extend(chunk)
        if not self.stream:
            try:
                self._whole(json.loads(bytes(self.buffer)))
            except ValueError:
                return  # more bytes to come
            self.complete = True
            return
        while b"\n\n" in self.buffer:
            event, _, rest = bytes(self.buffer).partition(b"\n\n")
            self.buffer = bytearray(rest)
            for line in event.decode("utf-8", "replace").splitlines():
                if line.startswith("data:"):
                    self._event(line[5:].strip())

    def _whole(self, payload: dict) -> None:
        self.completion_id = payload.get("id")
        for choice in payload.get("choices") or []:
            self.answers[int(choice.get("index", 0))] = (choice.get("message") or {}).get("content")

    def _event(self, data: str) -> None:
        if data == "[DONE]":
            self.complete = True
            return
        try:
            payload = json.loads(data)
        except ValueError:
            return
        self.completion_id = self.completion_id or payload.get("id")
        for choice in payload.get("choices") or []:
            index = int(choice.get("index", 0))
            text = (choice.get("delta") or {}).get("content")
            if text:
                self.answers[index] = (self.answers.get(index) or "") + text
            else:
                self.answers.setdefault(index, None)
