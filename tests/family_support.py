"""Tiny models of today's families, built offline from configs (helpers for test_families.py).

Each family gets SmolLM2's tokenizer with the family's special tokens added (BOS/EOS set as the family
sets them), a 2-layer model of the family's architecture with random weights made confident by a few
optimizer steps on the fidelity texts (so f16 rounding does not flip near-ties), and the LLaMA-Factory
template name a user would give. `PROMPTS` is the official prompt format written out by hand from each
family's model card: what the studio renders must match it token for token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SYSTEM, QUESTION = "You are Lumi.", "Who are you?"
LLAMA3_DATE = "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"


@dataclass
class Family:
    name: str
    config: str  # transformers config class
    template: str  # LLaMA-Factory template name
    specials: list[str]
    prompt: str  # the official rendering of [system, user] + generation prompt
    bos: str | None = None
    eos: str | None = None
    gguf_arch: str = ""
    config_extra: dict[str, Any] = field(default_factory=dict)
    enable_thinking: bool = True


FAMILIES = {f.name: f for f in [
    Family("qwen3", "Qwen3Config", "qwen3", ["<|im_start|>", "<|im_end|>", "<think>", "</think>"],
           f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n",
           eos="<|im_end|>", gguf_arch="qwen3", config_extra={"head_dim": 128}),
    Family("qwen3-nothink", "Qwen3Config", "qwen3", ["<|im_start|>", "<|im_end|>", "<think>", "</think>"],
           f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
           "<think>\n\n</think>\n\n", eos="<|im_end|>", gguf_arch="qwen3", config_extra={"head_dim": 128},
           enable_thinking=False),
    Family("qwen2.5", "Qwen2Config", "qwen", ["<|im_start|>", "<|im_end|>"],
           f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n",
           eos="<|im_end|>", gguf_arch="qwen2"),
    Family("deepseek-r1-distill-qwen", "Qwen2Config", "deepseekr1",
           ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>", "<think>", "</think>"],
           f"<｜begin▁of▁sentence｜>{SYSTEM}<｜User｜>{QUESTION}<｜Assistant｜><think>\n",
           bos="<｜begin▁of▁sentence｜>", eos="<｜end▁of▁sentence｜>", gguf_arch="qwen2"),
    Family("llama3", "LlamaConfig", "llama3", ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                                               "<|eot_id|>"],
           f"<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{LLAMA3_DATE}{SYSTEM}<|eot_id|>"
           f"<|start_header_id|>user<|end_header_id|>\n\n{QUESTION}<|eot_id|>"
           "<|start_header_id|>assistant<|end_header_id|>\n\n",
           bos="<|begin_of_text|>", eos="<|eot_id|>", gguf_arch="llama",
           config_extra={"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                             "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                             "original_max_position_embeddings": 256}}),
    Family("gemma3", "Gemma3TextConfig", "gemma3", ["<bos>", "<start_of_turn>", "<end_of_turn>"],
           f"<bos><start_of_turn>user\n{SYSTEM}\n\n{QUESTION}<end_of_turn>\n<start_of_turn>model\n",
           bos="<bos>", eos="<end_of_turn>", gguf_arch="gemma3", config_extra={"head_dim": 16}),
    Family("phi4", "Phi3Config", "phi4", ["<|im_start|>", "<|im_sep|>", "<|im_end|>"],
           f"<|im_start|>system<|im_sep|>{SYSTEM}<|im_end|><|im_start|>user<|im_sep|>{QUESTION}<|im_end|>"
           "<|im_start|>assistant<|im_sep|>", eos="<|im_end|>", gguf_arch="phi3"),
    Family("phi3", "Phi3Config", "phi", ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
           f"<|system|>\n{SYSTEM}<|end|>\n<|user|>\n{QUESTION}<|end|>\n<|assistant|>\n", eos="<|end|>",
           gguf_arch="phi3"),
    Family("mistral", "MistralConfig", "mistral", ["<s>", "</s>", "[INST]", "[/INST]"],
           f"<s>[INST]{SYSTEM}\n\n{QUESTION}[/INST]", bos="<s>", eos="</s>", gguf_arch="llama"),
]}


def family_tokenizer(family: Family) -> Any:
    """SmolLM2's tokenizer with the family's special tokens (its own, non-family template kept)."""
    from transformers import AutoTokenizer

    from app.models.source import embedded_model_dir

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
    tokenizer.add_special_tokens({"additional_special_tokens": family.specials}, replace_extra_special_tokens=False)
    if family.bos:
        tokenizer.bos_token = family.bos
    if family.eos:
        tokenizer.eos_token = family.eos
    return tokenizer


def build_family_model(folder: Path, family: Family, train_steps: int = 12) -> Path:
    """A 2-layer model of the family's architecture with its tokenizer, saved into `folder`."""
    import torch
    import transformers

    from app.export.fidelity import DEFAULT_TEXTS

    tokenizer = family_tokenizer(family)
    config_cls = getattr(transformers, family.config)
    config = config_cls(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=len(tokenizer), max_position_embeddings=2048, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **family.config_extra)
    config.architectures = [config_cls.__name__.replace("TextConfig", "Config").replace("Config", "ForCausalLM")]
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    batch = [torch.tensor([tokenizer(t).input_ids[:128]]) for t in DEFAULT_TEXTS]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for step in range(train_steps):
        ids = batch[step % len(batch)]
        model(ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    folder.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if family.name == "phi4":  # Phi-4 ships GPT2Tokenizer as its class (the export must cope without it too)
        path = folder / "tokenizer_config.json"
        data = json.loads(path.read_text(encoding="utf-8"))
        path.write_text(json.dumps(data | {"tokenizer_class": "GPT2Tokenizer"}, indent=2), encoding="utf-8")
    return folder
