"""OpenAI chat-completions request shapes and OpenAI-shaped error bodies."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# OpenAI's own limit on stop sequences.
MAX_STOP = 4


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


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def as_template_message(self) -> dict[str, str]:
        """The {role, content} dict a chat template expects (developer is OpenAI's new name for system)."""
        content = self.content if isinstance(self.content, str) else \
            "".join(part.text for part in self.content or [])
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    # Clients send fields we have no use for (user, metadata, store, ...): ignore rather than refuse.
    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = Field(1, ge=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    logprobs: bool | None = None
    tools: list[Any] | None = None

    def unsupported(self) -> OpenAIError | None:
        """A clear 400 for valid OpenAI requests this server does not implement."""
        if self.n not in (None, 1):
            return OpenAIError(400, "Only n=1 is supported.", param="n", code="unsupported_value")
        if self.logprobs:
            return OpenAIError(400, "logprobs are not supported.", param="logprobs", code="unsupported_value")
        if self.tools:
            return OpenAIError(400, "Tool calling is not supported.", param="tools", code="unsupported_value")
        if len(self.stop_list) > MAX_STOP:
            return OpenAIError(400, f"At most {MAX_STOP} stop sequences are allowed.", param="stop")
        return None

    @property
    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def template_messages(self) -> list[dict[str, str]]:
        return [m.as_template_message() for m in self.messages]
