"""Tool calls in a model's reply, read the way the model's own chat template writes them.

Tools reach the model through its chat template (`apply_chat_template(tools=...)`). What comes back is
parsed with the tokenizer's own response template when it has one (transformers' `parse_response`),
else in the format nearly every tool-calling template uses (Hermes, Qwen 2.5/3, SmolLM3, ...):
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, one block per call.
A forced call (tool_choice "required" or a named function) is generated under a JSON grammar instead,
so its text is the call itself (app/chat/constrain.py), as vLLM does it.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


@dataclass
class ToolCall:
    name: str
    arguments: str  # a JSON text, as OpenAI sends it
    id: str = ""

    def __post_init__(self) -> None:
        self.id = self.id or f"call_{uuid.uuid4().hex[:24]}"

    def openai(self, index: int | None = None) -> dict[str, Any]:
        call: dict[str, Any] = {"id": self.id, "type": "function",
                                "function": {"name": self.name, "arguments": self.arguments}}
        return call if index is None else {"index": index, **call}


def _call(obj: Any, names: set[str]) -> ToolCall | None:
    if not isinstance(obj, dict):
        return None
    name = obj.get("name") or (obj.get("function") or {}).get("name")
    arguments = obj.get("arguments", obj.get("parameters", (obj.get("function") or {}).get("arguments", {})))
    if not isinstance(name, str) or (names and name not in names):
        return None
    return ToolCall(name, arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False))


def parse_tool_calls(tokenizer: Any, text: str, prompt_text: str,
                     tools: list[dict[str, Any]]) -> tuple[str | None, list[ToolCall]]:
    """(content left over, tool calls) of one reply; no calls leaves the text as it is."""
    names = {t["function"]["name"] for t in tools}
    if getattr(tokenizer, "response_template", None):
        try:
            parsed = tokenizer.parse_response(text, prefix=prompt_text, tools=tools)
        except Exception:  # noqa: BLE001 - a reply the template's parser cannot read is plain text
            parsed = None
        if isinstance(parsed, dict) and parsed.get("tool_calls"):
            calls = [c for c in (_call(raw, names) for raw in parsed["tool_calls"]) if c]
            if calls:
                return parsed.get("content") or None, calls
    calls = []
    for block in _BLOCK.findall(text):
        try:
            found = _call(json.loads(block), names)
        except json.JSONDecodeError:
            continue
        if found:
            calls.append(found)
    if not calls:
        return text, []
    content = _BLOCK.sub("", text).strip()
    return content or None, calls


def forced_call(text: str, named: str | None) -> ToolCall | None:
    """The call in a reply generated under the tool grammar: the arguments (named) or {name, arguments}."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None  # cut short by max_tokens
    if named is not None:
        return ToolCall(named, json.dumps(value, ensure_ascii=False))
    return _call(value, set())
