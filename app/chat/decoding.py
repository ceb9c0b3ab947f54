"""One sequence's decoding state in a batch: which token comes next, and the text it adds.

Each request keeps its own sampling settings (greedy, or temperature + top-p from its own seeded
generator, so a seeded request samples the same tokens alone or in a batch), its own JSON constraint,
stop strings and log-probabilities. Text is produced incrementally: a token is decoded together with a
few tokens before it (as vLLM does), so a token that only completes a character or a word-leading space
in context still comes out right, and held back while it ends in an incomplete UTF-8 sequence.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from app.chat.backends.base import Delta, Generation, Sampling, StreamResult, TokenLogprob
from app.chat.constrain import JsonConstraint
from app.chat.stops import StopFilter


class Detokenizer:
    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # ids[prefix:read] decode to text already given out; they give context to the next ones
        self.read = 0

    def add(self, token: int) -> str:
        self.ids.append(token)
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix:self.read], skip_special_tokens=True)
        after = decode(self.ids[self.prefix:], skip_special_tokens=True)
        if after.endswith("\ufffd") or len(after) <= len(before):
            return ""  # an incomplete character, or a special token that decodes to nothing
        self.prefix, self.read = self.read, len(self.ids)
        return after[len(before):]


MIN_TEMPERATURE = 1e-4


def pick_token(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> int:
    """The next token from one row's (already constrained) logits."""
    if sampling.temperature <= 0 or sampling.top_p <= 0:
        return int(torch.argmax(logits))
    # Below ~1e-4, logits / T overflows float32 (inf -> NaN probabilities); it is greedy by then anyway.
    probs = torch.softmax(logits.float() / max(sampling.temperature, MIN_TEMPERATURE), dim=-1)
    if not bool(torch.isfinite(probs).all()):  # e.g. a constraint that masked every token
        return int(torch.argmax(logits))
    if sampling.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < sampling.top_p  # always keeps the first
        sorted_probs = sorted_probs * keep
        choice = torch.multinomial(sorted_probs, 1, generator=generator)
        return int(order[choice])
    return int(torch.multinomial(probs, 1, generator=generator))


class RowDecoder:
    """Everything about one request but its KV cache: choose tokens, build text, decide when it ends."""

    def __init__(self, result: StreamResult, prompt: list[int], tokenizer: Any, sampling: Sampling,
                 eos_ids: set[int], device: str, constraint: JsonConstraint | None = None):
        self.result, self.prompt, self.tokenizer, self.sampling = result, prompt, tokenizer, sampling
        self.eos_ids = eos_ids
        self.ids: list[int] = []
        self.detok = Detokenizer(tokenizer)
        self.stops = StopFilter(sampling.stop)
        self.parts: list[str] = []
        self.logprobs: list[TokenLogprob] | None = [] if sampling.logprobs is not None else None
        self.constraint = constraint
        self.generator: torch.Generator | None = None
        if sampling.temperature > 0:
            self.generator = torch.Generator(device=device)
            if sampling.seed is not None:
                self.generator.manual_seed(int(sampling.seed) % (2**63))
            else:
                self.generator.seed()
        self.finished: str | None = None

    @property
    def position(self) -> int:
        """The position id of the last chosen token, the one the next forward step feeds."""
        return len(self.prompt) + len(self.ids) - 1

    @property
    def needs_full_logits(self) -> bool:
        return self.constraint is not None or self.sampling.logprobs is not None or self.sampling.temperature > 0

    def choose(self, logits: torch.Tensor) -> int:
        scores = logits.float()
        if self.constraint is not None:
            scores = self.constraint.apply(scores, self.eos_ids)
        token = pick_token(scores, self.sampling, self.generator)
        if self.logprobs is not None:
            self._record_logprob(logits, token)
        return token

    def _record_logprob(self, logits: torch.Tensor, token: int) -> None:
        logp = torch.log_softmax(logits.float(), dim=-1)
        top: list[tuple[str, float]] = []
        if self.sampling.logprobs:
            values, indices = torch.topk(logp, int(self.sampling.logprobs))
            top = [(self.tokenizer.decode([int(i)]), _finite(float(v))) for v, i in zip(values, indices)]
        assert self.logprobs is not None
        self.logprobs.append(TokenLogprob(self.tokenizer.decode([token]), _finite(float(logp[token])), top))

    def accept(self, token: int) -> None:
        """Take a chosen token: emit its text, and finish on EOS, a stop string, the length or the grammar."""
        self.ids.append(token)
        pending_logprobs = self.logprobs[-1:] if self.logprobs is not None else []
        if token in self.eos_ids and (self.constraint is None or self.constraint.accepting()):
            if self.logprobs is not None:
                self.logprobs.pop()  # the end-of-turn token is not part of the reply
            self.finish("stop")
            return
        text = self.stops.feed(self.detok.add(token))
        if self.stops.stopped and self.logprobs is not None:
            self.logprobs.pop()
            pending_logprobs = []
        if self.constraint is not None:
            self.constraint.consume(token)
        if text or pending_logprobs:
            self.parts.append(text)
            self.result.put("delta", Delta(text, list(pending_logprobs)))
        if self.stops.stopped or (self.constraint is not None and self.constraint.done()):
            self.finish("stop")
        elif len(self.ids) >= self.sampling.max_new_tokens:
            self.finish("length")

    def finish(self, reason: str) -> None:
        if self.finished:
            return
        tail = self.stops.flush()
        if tail:
            self.parts.append(tail)
            self.result.put("delta", Delta(tail))
        self.finished = reason
        self.result.put("done", Generation("".join(self.parts), len(self.prompt), len(self.ids), reason,
                                           self.logprobs))


def _finite(value: float) -> float:
    """JSON has no -inf: a token the model rules out entirely gets a very small finite log-probability."""
    return value if math.isfinite(value) else -9999.0
