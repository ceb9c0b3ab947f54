"""Ollama Modelfile: Go TEMPLATE per chat-template family, default SYSTEM, stop parameters."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_export_helpers import CHATML

from app.export.modelfile import default_system_prompt, render_chat_template, template_family, write_modelfile

QWEN25 = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    "<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if message.role != 'system' %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
MISTRAL = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% else %}{{ message['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
)


def _parts(modelfile: str) -> tuple[str, str | None, list[str]]:
    template = re.search(r'TEMPLATE """(.*?)"""', modelfile, re.DOTALL)
    system = re.search(r'SYSTEM """(.*?)"""', modelfile, re.DOTALL)
    stops = re.findall(r'^PARAMETER stop "(.*)"$', modelfile, re.MULTILINE)
    assert template is not None
    return template.group(1), system.group(1) if system else None, stops


def _balanced(go_template: str) -> bool:
    opens = len(re.findall(r"\{\{-?\s*(?:if|range)\b", go_template))
    ends = len(re.findall(r"\{\{-?\s*end\s*-?\}\}", go_template))
    return opens == ends and go_template.count("{{") == go_template.count("}}")


def test_chatml_smollm2(tmp_path: Path) -> None:
    gguf = tmp_path / "lumi-q8_0.gguf"
    path = write_modelfile(gguf, CHATML, tmp_path / "Modelfile")
    text = path.read_text()
    assert text.splitlines()[2] == "FROM ./lumi-q8_0.gguf"
    template, system, stops = _parts(text)
    assert "<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>" in template
    assert template.endswith("<|im_start|>assistant\n") and _balanced(template)
    assert system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert stops == ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]


def test_chatml_qwen_default_system_and_overrides(tmp_path: Path) -> None:
    assert default_system_prompt(QWEN25) == "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    text = write_modelfile(
        tmp_path / "m.gguf", QWEN25, tmp_path / "Modelfile", system="Be brief.", stop=["<|im_end|>", "###"]
    ).read_text()
    _, system, stops = _parts(text)
    assert system == "Be brief."
    assert stops == ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "###"]


def test_llama3(tmp_path: Path) -> None:
    assert template_family(LLAMA3) == "llama3"
    template, system, stops = _parts(write_modelfile(tmp_path / "m.gguf", LLAMA3, tmp_path / "Modelfile").read_text())
    assert "<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>" in template
    assert template.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n") and _balanced(template)
    assert system is None  # Llama 3.0's template has no default system prompt
    assert "<|eot_id|>" in stops


def test_mistral_and_generic(tmp_path: Path) -> None:
    template, system, stops = _parts(write_modelfile(tmp_path / "m.gguf", MISTRAL, tmp_path / "M1").read_text())
    assert "[INST] " in template and "[/INST]" in template and _balanced(template)
    assert stops == ["[INST]", "[/INST]"] and system is None
    text = write_modelfile(tmp_path / "m.gguf", "{{ messages[0]['content'] }}", tmp_path / "M2").read_text()
    assert "not recognised" in text and "{{ .Prompt }}" in _parts(text)[0] and _parts(text)[2] == []
    assert template_family(None) == "generic"


def test_modelfile_in_another_folder_points_back(tmp_path: Path) -> None:
    text = write_modelfile(tmp_path / "out" / "m.gguf", CHATML, tmp_path / "ollama" / "Modelfile").read_text()
    assert "FROM ../out/m.gguf" in text


@pytest.mark.parametrize("template", [CHATML, QWEN25, LLAMA3, MISTRAL])
def test_templates_render_like_transformers(template: str, smol_tokenizer: object) -> None:
    # Our renderer (used to find default system prompts) agrees with transformers' own.
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    tokenizer = smol_tokenizer
    expected = tokenizer.apply_chat_template(
        messages,
        chat_template=template,
        tokenize=False,  # type: ignore[attr-defined]
        add_generation_prompt=False,
    )
    ours = render_chat_template(
        template, messages, add_generation_prompt=False, bos_token=tokenizer.bos_token, eos_token=tokenizer.eos_token
    )  # type: ignore[attr-defined]
    assert ours == expected
