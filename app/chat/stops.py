"""Stopping generation: at stop strings (also when text arrives in pieces) or on request."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import torch
from transformers import StoppingCriteria


class StopFilter:
    """Feed text deltas; get back the part that is safe to show.

    A delta may end with the first characters of a stop string, so the last len(longest stop) - 1
    characters are held back until the next delta shows whether a stop string completes there. Once
    one does, the text before it is released and everything after is dropped.
    """

    def __init__(self, stops: Sequence[str] | None):
        self.stops = [s for s in (stops or []) if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.buffer = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        self.buffer += text
        hits = [i for i in (self.buffer.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.buffer, self.stopped = self.buffer[: min(hits)], "", True
            return out
        safe = max(0, len(self.buffer) - self.hold)
        out, self.buffer = self.buffer[:safe], self.buffer[safe:]
        return out

    def flush(self) -> str:
        """The held-back text once the generation has ended without a stop string."""
        out, self.buffer = ("" if self.stopped else self.buffer), ""
        return out


class CancelFlag(StoppingCriteria):
    """Stop when another thread sets the event (a client went away, Ctrl-C)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class StopOnText(StoppingCriteria):
    """Stop once the decoded tail of the reply holds a stop string.

    transformers' own `stop_strings` re-scans the whole vocabulary on every request (seconds for a 49k
    vocabulary); decoding the last few tokens costs microseconds. The tail is decoded exactly as the
    reply text is (special tokens skipped), so this agrees with StopFilter, which cuts the text.
    """

    def __init__(self, tokenizer: Any, stops: list[str], prompt_len: int):
        self.tokenizer, self.stops, self.prompt_len = tokenizer, stops, prompt_len
        self.window = max(len(s) for s in stops) + 8  # tokens; every visible token is >= 1 character

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        start = max(self.prompt_len, input_ids.shape[1] - self.window)
        tail = self.tokenizer.decode(input_ids[0, start:], skip_special_tokens=True)
        hit = any(stop in tail for stop in self.stops)
        return torch.full((input_ids.shape[0],), hit, dtype=torch.bool, device=input_ids.device)
