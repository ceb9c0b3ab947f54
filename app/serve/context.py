"""What the API routes share: the backend, admission, metrics; turning a request into running generations."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from app.chat.backends.base import (
    Backend,
    ContextLengthError,
    Sampling,
    StreamResult,
    UnknownModelError,
    UnsupportedError,
)
from app.chat.constrain import ConstraintError
from app.serve.metrics import Metrics
from app.serve.schemas import OpenAIError
from app.serve.streams import Admission, Live

T = TypeVar("T")


def unknown_model(name: str, backend: Backend) -> OpenAIError:
    return OpenAIError(404, f"The model '{name}' does not exist; available: {', '.join(backend.names())}.",
                       param="model", code="model_not_found")


@dataclass
class ServeContext:
    backend: Backend
    admission: Admission
    metrics: Metrics
    default_max_tokens: int

    def check_model(self, name: str) -> None:
        if name not in self.backend.names():
            raise unknown_model(name, self.backend)

    async def call(self, fn: Callable[..., T], *args: Any, param: str = "messages", **kwargs: Any) -> T:
        """Run a backend call off the event loop (rendering, tokenizing, compiling a grammar take ms to s),
        turning the backend's errors into OpenAI's."""
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except ContextLengthError as exc:
            raise OpenAIError(400, str(exc), param=param, code="context_length_exceeded") from exc
        except ConstraintError as exc:
            raise OpenAIError(400, str(exc), param="response_format", code="invalid_schema") from exc
        except UnsupportedError as exc:
            raise OpenAIError(400, str(exc), param="tools" if "tool" in str(exc) else param,
                              code="unsupported_value") from exc
        except UnknownModelError as exc:
            raise OpenAIError(404, str(exc), param="model", code="model_not_found") from exc
        except ValueError as exc:
            raise OpenAIError(400, str(exc), param=param) from exc

    async def start(self, prompt_ids: list[int], model: str, samplings: list[Sampling], started: float,
                    param: str = "messages", sink: asyncio.Queue | None = None, first_index: int = 0) -> list[Live]:
        """Admit len(samplings) generations (429 when full), submit them, return them running."""
        self.admission.enter(len(samplings))  # before any await: the bound holds however requests interleave
        lives: list[Live] = []
        try:
            for i, sampling in enumerate(samplings):
                result: StreamResult = await self.call(self.backend.submit, prompt_ids, model, sampling, param=param)
                lives.append(Live(result, self.admission, self.metrics, model, started, sink, first_index + i))
        except BaseException:
            for _ in range(len(samplings) - len(lives)):
                self.admission.leave()
            for live in lives:
                live.result.cancel()
            raise
        return lives


def now() -> float:
    return time.perf_counter()
