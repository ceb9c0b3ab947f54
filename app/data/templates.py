"""Chat templates by LLaMA-Factory's names: the tokenizer's own when it is of that family, else bundled.

    choose_template(tokenizer, "qwen3")   # -> the Jinja text a job trains and chats with

A family name (qwen3, llama3, gemma3, phi4, ...) keeps the tokenizer's own template when that template
carries the family's marks (an official template may be newer than ours, and knows the model's tools);
otherwise the bundled official template in `templates/` is used. Generic formats (chatml, alpaca,
default) are always the bundled ones: asking for them means asking for that exact format.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

TEMPLATE_DIR = Path(__file__).with_name("templates")

# LLaMA-Factory name -> bundled file (without .jinja). Aliases share a file.
FILES: dict[str, str] = {
    "qwen3": "qwen3",
    "qwen3_nothink": "qwen3",
    "qwen": "qwen",
    "qwen2_5": "qwen",
    "llama3": "llama3",
    "gemma": "gemma3",  # Gemma 2's own template rejects a system turn; Gemma 3's prefixes it to the first user turn
    "gemma2": "gemma3",
    "gemma3": "gemma3",
    "phi": "phi",
    "phi3": "phi",
    "phi4": "phi4",
    "deepseek3": "deepseekr1",
    "deepseekr1": "deepseekr1",
    "mistral": "mistral",
    "chatml": "chatml",
    "alpaca": "alpaca",
    "default": "default",
}
# What marks a tokenizer's own template as one of a family (all must appear). Names absent here are
# generic formats: always bundled.
FAMILY_MARKS: dict[str, tuple[str, ...]] = {
    "qwen3": ("<|im_start|>", "<think>"),
    "qwen": ("<|im_start|>", "You are Qwen"),
    "llama3": ("<|start_header_id|>",),
    "gemma3": ("<start_of_turn>",),
    "phi": ("<|assistant|>", "<|end|>"),
    "phi4": ("<|im_sep|>",),
    "deepseekr1": ("<｜Assistant｜>",),
    "mistral": ("[INST]",),
}
# What `enable_thinking: false` puts first: off unless the caller passes enable_thinking (an API request's
# chat_template_kwargs), so a request can still turn thinking on. OLD_NO_THINKING: what runs saved before.
NO_THINKING = "{%- if enable_thinking is not defined -%}{%- set enable_thinking = false -%}{%- endif -%}\n"
OLD_NO_THINKING = "{%- set enable_thinking = false -%}\n"


@cache
def bundled(name: str) -> str:
    """The bundled template text for a LLaMA-Factory name (KeyError for an unknown name)."""
    return (TEMPLATE_DIR / f"{FILES[name]}.jinja").read_text(encoding="utf-8")


def names() -> list[str]:
    return list(FILES)


def family_of(name: str) -> str | None:
    """The family whose marks decide whether the tokenizer's own template is kept (None: generic)."""
    key = FILES[name]
    return key if key in FAMILY_MARKS else None


def is_family(template: str | None, name: str) -> bool:
    family = family_of(name)
    return bool(template) and family is not None and all(mark in template for mark in FAMILY_MARKS[family])


def choose_template(own: str | None, name: str, enable_thinking: bool = True) -> str:
    """The template text for LLaMA-Factory name `name`, given the tokenizer's own template `own`."""
    text = own if own and is_family(own, name) else bundled(name)
    if name == "qwen3_nothink":
        enable_thinking = False
    return with_thinking(text, enable_thinking)


def with_thinking(text: str, enable_thinking: bool) -> str:
    """Thinking off is written into the template itself, so training, the chat engine, the API and
    an exported GGUF all render the same prompt without passing options around."""
    for prefix in (NO_THINKING, OLD_NO_THINKING):
        text = text[len(prefix):] if text.startswith(prefix) else text
    return text if enable_thinking or "enable_thinking" not in text else NO_THINKING + text


def special_marks_missing(tokenizer: Any, template: str) -> list[str]:
    """Family marks of `template` that the tokenizer does not know as single tokens (they would be
    split into pieces: training works, but the model never sees the tokens its family uses)."""
    vocab = tokenizer.get_vocab()
    marks = {m for family in FAMILY_MARKS.values() for m in family if m.startswith("<") and m.endswith(">")}
    return sorted(m for m in marks if m in template and m not in vocab)
