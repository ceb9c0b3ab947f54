"""Ollama Modelfile for an exported GGUF: FROM, a Go-template TEMPLATE, default SYSTEM, stop tokens.

Ollama does not run Jinja, so the chat template is recognised by family (ChatML, Llama 3, Mistral
[INST]) and written as the equivalent Go template; an unknown template falls back to the raw prompt.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from app.atomic import write_text_atomic

CHATML = """{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range .Messages }}
{{- if ne .Role "system" }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}
{{- end }}<|im_start|>assistant
"""

LLAMA3 = """{{- if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>
{{- end }}
{{- range .Messages }}
{{- if ne .Role "system" }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}<|eot_id|>
{{- end }}
{{- end }}<|start_header_id|>assistant<|end_header_id|>

"""

# Mistral puts the system prompt in front of the last user turn.
MISTRAL = """{{- range $i, $_ := .Messages }}
{{- if eq .Role "user" }}[INST] {{ if and $.System (eq (len (slice $.Messages $i)) 1) }}{{ $.System }}

{{ end }}{{ .Content }}[/INST]
{{- else if eq .Role "assistant" }} {{ .Content }}</s>
{{- end }}
{{- end }}"""

GENERIC = """{{ if .System }}{{ .System }}

{{ end }}{{ .Prompt }}"""

FAMILIES: dict[str, tuple[str, list[str]]] = {
    "chatml": (CHATML, ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]),
    "llama3": (LLAMA3, ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]),
    "mistral": (MISTRAL, ["[INST]", "[/INST]"]),
    "generic": (GENERIC, []),
}

# The rendered system turn of each family, to recover a template's built-in default system prompt.
_SYSTEM_TURN = {
    "chatml": r"<\|im_start\|>system\n(.*?)<\|im_end\|>",
    "llama3": r"<\|start_header_id\|>system<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>",
}
_PROBE = "FTSTUDIO_PROBE_MESSAGE"


def template_family(chat_template: str | None) -> str:
    """chatml | llama3 | mistral | generic."""
    text = chat_template or ""
    if "<|im_start|>" in text:
        return "chatml"
    if "<|start_header_id|>" in text:
        return "llama3"
    if "[INST]" in text:
        return "mistral"
    return "generic"


def render_chat_template(chat_template: str, messages: list[dict[str, str]], **extra: object) -> str:
    """Render a HF Jinja chat template the way transformers does (sandboxed, trimmed blocks)."""
    from datetime import datetime

    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    values = {"bos_token": "", "eos_token": "", "add_generation_prompt": True, **extra}
    return env.from_string(chat_template).render(messages=messages, **values)


def default_system_prompt(chat_template: str | None) -> str | None:
    """The system prompt a template inserts when the conversation has none (e.g. SmolLM2, Qwen2.5)."""
    family = template_family(chat_template)
    if not chat_template or family not in _SYSTEM_TURN:
        return None
    try:
        text = render_chat_template(chat_template, [{"role": "user", "content": _PROBE}])
    except Exception:  # an exotic template we cannot render: no default system prompt then
        return None
    match = re.search(_SYSTEM_TURN[family], text.split(_PROBE)[0], re.DOTALL)
    return match.group(1).strip() if match and match.group(1).strip() else None


def _quote_block(text: str) -> str:
    return '"""' + text.replace('"""', '\\"\\"\\"') + '"""'


def modelfile_text(
    gguf_name: str, chat_template: str | None, system: str | None = None, stop: list[str] | None = None
) -> str:
    family = template_family(chat_template)
    template, stops = FAMILIES[family]
    system = system if system is not None else default_system_prompt(chat_template)
    lines = [
        "# Ollama Modelfile written by Finetune Studio.",
        "# Import with:  ollama create <name> -f Modelfile",
        f"FROM {gguf_name}",
        "",
    ]
    if family == "generic":
        lines.append("# The chat template was not recognised: prompts are passed through raw. Edit TEMPLATE.")
    else:
        lines.append(f"# Chat template family: {family} (translated from the model's Jinja template).")
    lines += [f"TEMPLATE {_quote_block(template)}", ""]
    if system:
        lines += [f"SYSTEM {_quote_block(system)}", ""]
    for token in dict.fromkeys([*stops, *(stop or [])]):
        lines.append(f"PARAMETER stop {json.dumps(token, ensure_ascii=False)}")
    return "\n".join(lines).rstrip("\n") + "\n"


def write_modelfile(
    gguf_path: str | Path,
    chat_template: str | None,
    out_path: str | Path,
    system: str | None = None,
    stop: list[str] | None = None,
) -> Path:
    """Write an Ollama Modelfile next to (or pointing at) `gguf_path`; returns its path."""
    gguf_path, out_path = Path(gguf_path), Path(out_path)
    relative = os.path.relpath(gguf_path.resolve(), out_path.parent.resolve())
    if not relative.startswith((".", os.sep)):
        relative = "./" + relative
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_path, modelfile_text(relative, chat_template, system, stop))
    return out_path
