"""JSON output enforced token by token with llguidance (the grammar engine vLLM, SGLang and llama.cpp use).

A JSON schema becomes a grammar; before each token the matcher says which tokens keep the output valid
and every other token's logit is set to -inf, so the reply is JSON matching the schema by construction.
`response_format: {"type": "json_object"}` is the schema {"type": "object"}. Separators are compact
(`{"a":1}`): with free whitespace a small model can fill its whole budget with newlines.
"""

from __future__ import annotations

import json
from typing import Any

import torch

JSON_OBJECT: dict[str, Any] = {"type": "object"}

_TOKENIZERS: dict[int, Any] = {}  # id(hf tokenizer) -> LLTokenizer (building one takes ~0.5 s)


class ConstraintError(ValueError):
    """The schema cannot be compiled into a grammar (the message says why)."""


def available() -> bool:
    try:
        import llguidance  # noqa: F401
    except ImportError:
        return False
    return True


def _ll_tokenizer(tokenizer: Any) -> Any:
    import llguidance.hf

    key = id(tokenizer)
    if key not in _TOKENIZERS:
        try:
            _TOKENIZERS[key] = llguidance.hf.from_tokenizer(tokenizer)
        except ValueError as exc:  # a slow (non-Rust) tokenizer
            raise ConstraintError(f"JSON output needs a fast tokenizer: {exc}") from exc
    return _TOKENIZERS[key]


def compile_schema(tokenizer: Any, schema: dict[str, Any]) -> str:
    """The grammar for `schema`; raises ConstraintError for a schema llguidance cannot use."""
    from llguidance import LLMatcher

    try:
        grammar = LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults={"whitespace_flexible": False})
    except ValueError as exc:
        raise ConstraintError(f"response_format: the JSON schema is not usable: {exc}") from exc
    problem = LLMatcher.validate_grammar(grammar, _ll_tokenizer(tokenizer))
    if problem:
        raise ConstraintError(f"response_format: the JSON schema is not usable: {problem}")
    return grammar


class JsonConstraint:
    def __init__(self, tokenizer: Any, schema: dict[str, Any]):
        from llguidance import LLMatcher

        self.matcher = LLMatcher(_ll_tokenizer(tokenizer), compile_schema(tokenizer, schema), log_level=0)
        if self.matcher.is_error():
            raise ConstraintError(f"response_format: {self.matcher.get_error()}")

    def apply(self, scores: torch.Tensor, eos_ids: set[int]) -> torch.Tensor:
        """`scores` with every token the grammar forbids at -inf (a new tensor)."""
        bias = torch.frombuffer(bytearray(self.matcher.compute_logit_bias()), dtype=torch.uint8)
        allowed = torch.zeros(scores.shape[-1], dtype=torch.bool)
        n = min(len(bias), scores.shape[-1])  # the model may have more (padding) rows than the tokenizer
        allowed[:n] = bias[:n] > 0
        if self.matcher.is_accepting():
            allowed[list(eos_ids)] = True  # the template's own end-of-turn token ends a complete value
        return scores.masked_fill(~allowed.to(scores.device), float("-inf"))

    def consume(self, token: int) -> None:
        self.matcher.consume_token(token)

    def accepting(self) -> bool:
        return self.matcher.is_accepting()

    def done(self) -> bool:
        return self.matcher.is_stopped()
