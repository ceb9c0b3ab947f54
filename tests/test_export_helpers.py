"""Tiny llama / qwen2 / mistral models for the export tests (helpers only; imported by test_export_*.py).

Random weights give nearly flat next-token distributions over a 49k vocabulary, whose top-1 flips
under any rounding; a few optimizer steps on the fidelity texts make the predictions confident, like
a real model's, so the agreement targets test the writer and not the coin toss of near-ties.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

ARCH_CONFIGS = {"llama": "LlamaConfig", "qwen2": "Qwen2Config", "mistral": "MistralConfig"}


def build_tiny_model(
    folder: Path,
    arch: str,
    tokenizer: Any,
    hidden: int = 64,
    tie: bool | None = None,
    train_steps: int = 30,
    seed: int = 0,
    **config_overrides: Any,
) -> Path:
    """Save a 2-layer model (4 heads, 2 KV heads) with the given tokenizer into `folder`."""
    import torch
    import transformers

    from app.export.fidelity import DEFAULT_TEXTS

    config_cls = getattr(transformers, ARCH_CONFIGS[arch])
    config = config_cls(
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tokenizer),
        max_position_embeddings=1024,
        tie_word_embeddings=(arch == "llama") if tie is None else tie,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **config_overrides,
    )
    config.architectures = [config_cls.__name__.replace("Config", "ForCausalLM")]
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if train_steps:
        batch = [torch.tensor([tokenizer(t).input_ids[:160]]) for t in DEFAULT_TEXTS]
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        model.train()
        for step in range(train_steps):
            ids = batch[step % len(batch)]
            model(ids, labels=ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        model.eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    if not tokenizer.chat_template:
        tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(folder)
    return folder


def logits_of(model_dir: Path, ids: list[int]) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def build_spm_tokenizer(vocab_size: int = 400) -> tuple[Any, bytes]:
    """A Llama-2-style SentencePiece BPE tokenizer (byte fallback) trained on the fidelity texts: the
    equivalent fast tokenizer (built without protobuf) and the `tokenizer.model` bytes."""
    import io

    import sentencepiece as spm
    from tokenizers import Tokenizer, decoders, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    from app.export.fidelity import DEFAULT_TEXTS

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(DEFAULT_TEXTS * 20),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    # Merges ranked as SentencePiece would apply them: by the id (score order) of the merged piece.
    ranked = sorted(
        (pid, vocab[piece[:k]], vocab[piece[k:]], piece[:k], piece[k:])
        for piece, pid in vocab.items()
        for k in range(1, len(piece))
        if piece[:k] in vocab and piece[k:] in vocab
    )
    backend = Tokenizer(
        models.BPE(vocab, [(a, b) for *_, a, b in ranked], unk_token="<unk>", fuse_unk=True, byte_fallback=True)
    )
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
        "{% else %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}"
    )
    return tokenizer, buf.getvalue()
