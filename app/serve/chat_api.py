"""POST /v1/chat/completions: n choices, log-probabilities, tools, JSON output, streamed or not."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from fastapi.sse import EventSourceResponse

from app.chat.backends.base import Delta, Generation, Sampling
from app.chat.tools import ToolCall, forced_call, parse_tool_calls
from app.serve.context import ServeContext, now
from app.serve.openai_format import chat_logprobs, finish_reason, sse, sse_error, usage
from app.serve.schemas import ChatCompletionRequest, NamedToolChoice
from app.serve.streams import ClientGone, Live, collect_all, merged

CLIENT_CLOSED = 499  # nginx's code for "the client closed the request"; nobody receives it


class _Plan:
    """How one chat request is generated and how its replies are read back."""

    def __init__(self, body: ChatCompletionRequest, ctx: ServeContext):
        self.body = body
        self.tools = body.tools_for_template() if body.tool_choice != "none" else None
        self.forced = body.forced_tool_schema()
        self.named = body.tool_choice.function.name if isinstance(body.tool_choice, NamedToolChoice) else None
        temperature, top_p = body.sampling_values()
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        schema = self.forced if self.forced is not None else body.json_schema()
        self.samplings = [Sampling(temperature, top_p, body.max_new_tokens(ctx.default_max_tokens), body.stop_list,
                                   None if body.seed is None else body.seed + i, logprobs, schema)
                          for i in range(body.n or 1)]

    @property
    def buffered(self) -> bool:
        """Replies that may be tool calls are read whole before they are sent."""
        return self.tools is not None

    def read(self, generation: Generation, tokenizer: Any, prompt_text: str) -> tuple[str | None, list[ToolCall]]:
        if self.forced is not None:
            call = forced_call(generation.text, self.named)
            return (None, [call]) if call else (generation.text, [])
        if self.tools:
            return parse_tool_calls(tokenizer, generation.text, prompt_text, self.tools)
        return generation.text, []


async def chat_completions(body: ChatCompletionRequest, request: Request, ctx: ServeContext) -> Response:
    started = now()
    body.check()
    ctx.check_model(body.model)
    plan = _Plan(body, ctx)
    ids = await ctx.call(ctx.backend.prompt_ids, body.template_messages(), body.model, plan.tools,
                         body.chat_template_kwargs)
    tokenizer = ctx.backend.tokenizer_for(body.model)
    prompt_text = tokenizer.decode(ids) if plan.tools else ""
    completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    if body.stream:
        sink: asyncio.Queue = asyncio.Queue()
        lives = await ctx.start(ids, body.model, plan.samplings, started, sink=sink)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events = _stream(lives, sink, plan, body, completion_id, len(ids), include_usage, tokenizer, prompt_text)
        return EventSourceResponse(events, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    lives = await ctx.start(ids, body.model, plan.samplings, started)
    try:
        generations = await collect_all(lives, request)
    except ClientGone:
        return Response(status_code=CLIENT_CLOSED)
    choices = []
    for i, generation in enumerate(generations):
        content, calls = plan.read(generation, tokenizer, prompt_text)
        message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
        if calls:
            message["tool_calls"] = [call.openai() for call in calls]
        choices.append({"index": i, "message": message,
                        "logprobs": chat_logprobs(generation.logprobs) if body.logprobs else None,
                        "finish_reason": "tool_calls" if calls else finish_reason(generation)})
    return JSONResponse({
        "id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": body.model,
        "choices": choices, "usage": usage(len(ids), sum(g.completion_tokens for g in generations)),
    })


async def _stream(lives: list[Live], sink: asyncio.Queue, plan: _Plan, body: ChatCompletionRequest,
                  completion_id: str, prompt_tokens: int, include_usage: bool, tokenizer: Any,
                  prompt_text: str) -> AsyncIterator[bytes]:
    """chat.completion.chunk events: role, content deltas (or tool calls), finish_reason, [usage], [DONE]."""
    created = int(time.time())

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> bytes:
        payload: dict[str, Any] = {
            "id": completion_id, "object": "chat.completion.chunk", "created": created, "model": body.model,
            "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]}
        if include_usage:
            payload["usage"] = None
        return sse(payload)

    completion_tokens = 0
    try:
        for i in range(len(lives)):
            yield chunk(i, {"role": "assistant", "content": ""})
        async for index, item in merged(lives, sink):
            if isinstance(item, Delta):
                if plan.buffered:
                    continue
                logprobs = chat_logprobs(item.logprobs) if body.logprobs else None
                yield chunk(index, {"content": item.text}, logprobs=logprobs)
                continue
            completion_tokens += item.completion_tokens
            finish = finish_reason(item)
            if plan.buffered:
                content, calls = plan.read(item, tokenizer, prompt_text)
                if content:
                    yield chunk(index, {"content": content},
                                logprobs=chat_logprobs(item.logprobs) if body.logprobs else None)
                if calls:
                    yield chunk(index, {"tool_calls": [c.openai(k) for k, c in enumerate(calls)]})
                    finish = "tool_calls"
            yield chunk(index, {}, finish)
        if include_usage:
            yield sse({"id": completion_id, "object": "chat.completion.chunk", "created": created,
                       "model": body.model, "choices": [], "usage": usage(prompt_tokens, completion_tokens)})
    except Exception as exc:  # noqa: BLE001
        yield sse_error(exc)
    finally:
        for live in lives:
            live.result.cancel()  # a no-op when finished; stops generating when the client went away
    yield sse("[DONE]")
