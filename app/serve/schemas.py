"""OpenAI request shapes (chat completions, completions) and OpenAI-shaped error bodies."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_STOP = 4  # OpenAI's own limits
MAX_N = 16
MAX_TOP_LOGPROBS = 20
MAX_COMPLETION_LOGPROBS = 5
MAX_SEED = 2**63 - 1


class OpenAIError(Exception):
    """Raised anywhere in a request; rendered as {"error": {message, type, param, code}}."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.code, self.param)


def error_body(message: str, type: str = "invalid_request_error", code: str | None = None,
               param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def unsupported(param: str, message: str) -> OpenAIError:
    return OpenAIError(400, message, param=param, code="unsupported_value")


class _Lenient(BaseModel):
    # Clients send fields we have no use for (user, metadata, store, ...): ignore rather than refuse.
    model_config = ConfigDict(extra="ignore")


class TextPart(_Lenient):
    type: Literal["text"]
    text: str


class FunctionCall(_Lenient):
    name: str
    arguments: str = "{}"


class ToolCall(_Lenient):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    def as_template_message(self) -> dict[str, Any]:
        """The dict a chat template expects (developer is OpenAI's new name for system)."""
        content = self.content if isinstance(self.content, str) else \
            "".join(part.text for part in self.content or [])
        message: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": content}
        if self.tool_calls:  # templates want arguments as a mapping (transformers' chat-template convention)
            message["tool_calls"] = [{"id": call.id, "type": "function", "function": {
                "name": call.function.name, "arguments": _arguments(call.function.arguments)}}
                for call in self.tool_calls]
        if self.tool_call_id:
            message["tool_call_id"] = self.tool_call_id
        if self.name and self.role == "tool":
            message["name"] = self.name
        return message


def _arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


class FunctionSpec(_Lenient):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(_Lenient):
    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(_Lenient):
    name: str


class NamedToolChoice(_Lenient):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaSpec(_Lenient):
    name: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Lenient):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None


class StreamOptions(_Lenient):
    include_usage: bool = False


class _Sampling(_Lenient):
    model: str
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-MAX_SEED, le=MAX_SEED)
    n: int | None = Field(1, ge=1, le=MAX_N)
    stream: bool | None = False
    stream_options: StreamOptions | None = None

    def check_common(self) -> None:
        if len(self.stop_list) > MAX_STOP:
            raise OpenAIError(400, f"At most {MAX_STOP} stop sequences are allowed.", param="stop")

    @property
    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [s for s in ([self.stop] if isinstance(self.stop, str) else self.stop) if s]

    def sampling_values(self) -> tuple[float, float]:
        temperature = 1.0 if self.temperature is None else self.temperature
        top_p = 1.0 if self.top_p is None else self.top_p
        return (0.0 if top_p == 0 else temperature), top_p  # top_p 0 keeps only the likeliest token: greedy


# apply_chat_template's own arguments and the template's functions: a request's chat_template_kwargs may not
# set them
RENDER_ARGUMENTS = frozenset({
    "conversation", "messages", "tools", "documents", "chat_template", "add_generation_prompt",
    "continue_final_message", "tokenize", "padding", "truncation", "max_length", "return_tensors",
    "return_dict", "return_assistant_tokens_mask", "tokenizer_kwargs", "raise_exception", "strftime_now"})


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    # vLLM's extension: variables for this request's chat template, e.g. {"enable_thinking": false} (Qwen3)
    chat_template_kwargs: dict[str, Any] | None = None

    def check(self) -> None:
        self.check_common()
        taken = sorted(set(self.chat_template_kwargs or {}) & RENDER_ARGUMENTS)
        if taken:
            raise OpenAIError(400, f"chat_template_kwargs: {', '.join(taken)} is set by the server, not a template "
                              "variable.", param="chat_template_kwargs")
        if self.top_logprobs is not None and not self.logprobs:
            raise OpenAIError(400, "top_logprobs needs logprobs: true.", param="top_logprobs")
        if self.tool_choice not in (None, "none", "auto") and not self.tools:
            raise OpenAIError(400, "tool_choice needs tools.", param="tool_choice")
        if isinstance(self.tool_choice, NamedToolChoice) and self.tool_choice.function.name not in self.tool_names:
            raise OpenAIError(400, f"tool_choice names '{self.tool_choice.function.name}', which is not among the "
                              f"tools: {', '.join(self.tool_names)}.", param="tool_choice")
        if self.response_format and self.response_format.type == "json_schema" and not (
                self.response_format.json_schema and self.response_format.json_schema.schema_ is not None):
            raise OpenAIError(400, "response_format json_schema needs json_schema.schema.",
                              param="response_format")
        if self.response_format and self.response_format.type != "text" and self.forced_tool_schema() is not None:
            raise OpenAIError(400, "response_format and a required tool call cannot both shape the output.",
                              param="response_format")

    @property
    def tool_names(self) -> list[str]:
        return [tool.function.name for tool in self.tools or []]

    def tools_for_template(self) -> list[dict[str, Any]] | None:
        if not self.tools:
            return None
        return [{"type": "function", "function": tool.function.model_dump(exclude_none=True)} for tool in self.tools]

    def forced_tool_schema(self) -> dict[str, Any] | None:
        """With tool_choice "required" or a named function: the JSON schema the reply is held to."""
        def params(spec: FunctionSpec) -> dict[str, Any]:
            return spec.parameters or {"type": "object"}

        if isinstance(self.tool_choice, NamedToolChoice):
            spec = next(t.function for t in self.tools or [] if t.function.name == self.tool_choice.function.name)
            return params(spec)
        if self.tool_choice == "required":
            return {"anyOf": [{"type": "object", "properties": {"name": {"const": t.function.name},
                                                                 "arguments": params(t.function)},
                               "required": ["name", "arguments"], "additionalProperties": False}
                              for t in self.tools or []]}
        return None

    def json_schema(self) -> dict[str, Any] | None:
        if self.response_format is None or self.response_format.type == "text":
            return None
        if self.response_format.type == "json_object":
            return {"type": "object"}
        assert self.response_format.json_schema is not None
        return self.response_format.json_schema.schema_

    def max_new_tokens(self, default: int) -> int:
        return self.max_completion_tokens or self.max_tokens or default

    def template_messages(self) -> list[dict[str, Any]]:
        return [m.as_template_message() for m in self.messages]


class CompletionRequest(_Sampling):
    prompt: str | list[str] = Field(min_length=1)
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for completions
    logprobs: int | None = Field(None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    echo: bool | None = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1, le=MAX_N)

    def check(self) -> None:
        self.check_common()
        if self.suffix:
            raise unsupported("suffix", "suffix (insertion) is not supported.")
        if self.best_of not in (None, 1, self.n):
            raise unsupported("best_of", "best_of other than n is not supported.")
        if isinstance(self.prompt, list) and len(self.prompt) * (self.n or 1) > MAX_N:
            raise OpenAIError(400, f"At most {MAX_N} completions per request (prompts x n).", param="prompt")

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)
