"""Tokenizer -> GGUF metadata: tokens, types, merges/scores, pre-tokenizer, special ids, chat template.

Two tokenizer families are supported:
- byte-level BPE (`tokenizer.ggml.model = gpt2`): SmolLM, Llama 3, Qwen2/2.5, DeepSeek-R1-Distill-Qwen.
  llama.cpp re-implements each model's pre-tokenizer regex natively and picks it by name
  (`tokenizer.ggml.pre`); we derive that name the way llama.cpp's converter does, by hashing the
  tokenizer's encoding of a fixed probe text against the hashes of known tokenizers.
- SentencePiece (`tokenizer.ggml.model = llama`): Llama 2, Mistral 7B v0.1-v0.3, from `tokenizer.model`
  when present, else from a byte-fallback BPE `tokenizer.json` (scores follow token order, as SentencePiece
  BPE assigns them).
"""

from __future__ import annotations

import json
import logging
import re
from hashlib import sha256
from pathlib import Path
from typing import Any

import gguf

from app.export.errors import ExportError

log = logging.getLogger(__name__)

# The probe text llama.cpp's converter encodes to fingerprint a BPE pre-tokenizer (must stay byte-identical).
PRE_TOKENIZER_PROBE = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ "
    "🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, "
    "'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)

# sha256(str(token ids of the probe)) -> llama.cpp pre-tokenizer name, for the families this studio trains.
# Values are the ones llama.cpp's convert_hf_to_gguf_update.py records for these reference tokenizers.
KNOWN_PRE_TOKENIZERS: dict[str, str] = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # SmolLM / SmolLM2
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Llama 3 / 3.1 / 3.2
    "c136ed14d01c2745d4f60a9596ae66800e2b61fa45643e72436041855ad4089d": "smaug-bpe",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen1.5 / Qwen2 / Qwen2.5
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",
    "b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5": "deepseek-r1-qwen",
    "049ecf7629871e3041641907f3de7c733e4dbfdc736f57d882ba0b0845599754": "deepseek-llm",
    "347715f544604f9118bb75ed199f68779f423cabb20db6de6f31b908d04d7821": "deepseek-coder",
    "877081d19cf6996e2c4ff0e1236341e9b7bde288f5311a56a937f0afbbb3aeb5": "deepseek-v3",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
    "35d91631860c815f952d711435f48d356ebac988362536bed955d43bfa436e34": "starcoder",
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",  # Mistral Nemo
    "9d032fcbd5501f4a38150912590928bfb36091efb5df11b8e2124b0390e3fb1e": "falcon3",
    "ccc2ef013c104be7bae2965776d611e1d7a8a2a9c547dd93a682c9a9fc80352e": "gpt-4o",
    "fcace8b9cac38ce847670c970cd5892031a753a1ef381abd1d9af00f713da085": "phi-2",
}


def pre_tokenizer_hash(tokenizer: Any) -> str:
    return sha256(str(tokenizer.encode(PRE_TOKENIZER_PROBE)).encode()).hexdigest()


def detect_pre_tokenizer(tokenizer: Any, tokenizer_json: dict[str, Any] | None, gguf_arch: str) -> str:
    """llama.cpp's `tokenizer.ggml.pre` for a byte-level BPE tokenizer.

    Known hash first; else a guess from the pre-tokenizer regex (Llama 3's `\\p{N}{1,3}` digit groups,
    Qwen2's single digits), else llama.cpp's generic "default" (GPT-2 regex) with a warning.
    """
    name = KNOWN_PRE_TOKENIZERS.get(pre_tokenizer_hash(tokenizer))
    if name:
        return name
    patterns = json.dumps((tokenizer_json or {}).get("pre_tokenizer") or {})
    if "\\\\p{N}{1,3}" in patterns:
        guess = "llama-bpe"
    elif gguf_arch == "qwen2":
        guess = "qwen2"
    elif '"individual_digits": true' in patterns:
        guess = "smollm"
    else:
        guess = "default"
    log.warning("unknown BPE pre-tokenizer (hash not in the known list): using %r", guess)
    return guess


def _looks_special(text: str) -> bool:
    return (text.startswith("<|") and text.endswith("|>")) or (text.startswith("<｜") and text.endswith("｜>"))


def _load_tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)


def _read_tokenizer_json(model_dir: Path) -> dict[str, Any] | None:
    path = model_dir / "tokenizer.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def tokenizer_kind(model_dir: Path) -> str:
    """'bpe' (byte-level, gpt2-style), 'spm' (SentencePiece tokenizer.model) or 'spm-hf' (byte-fallback BPE)."""
    tj = _read_tokenizer_json(model_dir)
    if tj is not None and tj.get("model", {}).get("type") == "BPE":
        if not tj["model"].get("byte_fallback", False):
            return "bpe"
        return "spm" if (model_dir / "tokenizer.model").is_file() else "spm-hf"
    if (model_dir / "tokenizer.model").is_file():
        return "spm"
    if (model_dir / "vocab.json").is_file() and (model_dir / "merges.txt").is_file():
        return "bpe"
    model_type = (tj or {}).get("model", {}).get("type", "none")
    raise ExportError(
        f"unsupported tokenizer in {model_dir} (tokenizer.json model type {model_type!r}): the GGUF writer "
        "handles byte-level BPE (Llama 3, Qwen2, SmolLM) and SentencePiece (Llama 2, Mistral) tokenizers"
    )


def _bpe_tokens(tokenizer: Any, n_vocab: int) -> tuple[list[str], list[int]]:
    vocab: dict[str, int] = tokenizer.get_vocab()
    by_id = {i: t for t, i in vocab.items()}
    added = tokenizer.get_added_vocab()
    decoder = tokenizer.added_tokens_decoder
    tokens: list[str] = []
    types: list[int] = []
    for i in range(n_vocab):
        text = by_id.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        if text in added:
            special = getattr(decoder.get(i), "special", False)
            types.append(gguf.TokenType.CONTROL if special or _looks_special(text) else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
        tokens.append(text)
    return tokens, types


def _spm_tokens(model_dir: Path, n_vocab: int) -> tuple[list[bytes], list[float], list[int]]:
    sp = gguf.vocab.SentencePieceVocab(model_dir)
    tokens, scores, types = [], [], []
    for text, score, toktype in sp.all_tokens():
        tokens.append(text)
        scores.append(score)
        types.append(int(toktype))
    return _pad_spm(tokens, scores, types, n_vocab)


def _spm_hf_tokens(tokenizer: Any, n_vocab: int) -> tuple[list[bytes], list[float], list[int]]:
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.get_added_vocab()
    special_ids = set(tokenizer.all_special_ids)
    tokens, scores, types = [], [], []
    for i in range(min(n_vocab, max(by_id) + 1)):
        text = by_id.get(i, f"[PAD{i}]")
        if i not in by_id:
            toktype = gguf.TokenType.UNUSED
        elif i == tokenizer.unk_token_id:
            toktype = gguf.TokenType.UNKNOWN
        elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", text):
            toktype = gguf.TokenType.BYTE
        elif i in special_ids or (text in added and getattr(tokenizer.added_tokens_decoder.get(i), "special", False)):
            toktype = gguf.TokenType.CONTROL
        elif text in added:
            toktype = gguf.TokenType.USER_DEFINED
        else:
            toktype = gguf.TokenType.NORMAL
        tokens.append(text.encode("utf-8"))
        # SentencePiece BPE scores pieces by merge priority, which is their id order.
        scores.append(0.0 if toktype != gguf.TokenType.NORMAL else -float(i))
        types.append(int(toktype))
    return _pad_spm(tokens, scores, types, n_vocab)


def _pad_spm(
    tokens: list[bytes], scores: list[float], types: list[int], n_vocab: int
) -> tuple[list[bytes], list[float], list[int]]:
    if len(tokens) > n_vocab:
        raise ExportError(f"tokenizer has {len(tokens)} tokens but the model's vocab_size is {n_vocab}")
    for i in range(len(tokens), n_vocab):
        tokens.append(f"[PAD{i}]".encode())
        scores.append(-1000.0)
        types.append(int(gguf.TokenType.UNUSED))
    return tokens, scores, types


def _adds_special(tokenizer: Any) -> tuple[bool, bool]:
    """Whether the tokenizer prepends BOS / appends EOS to plain text (so llama.cpp does the same)."""
    ids = tokenizer("Hello world").input_ids
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    add_bos = bos is not None and len(ids) > 0 and ids[0] == bos
    add_eos = eos is not None and len(ids) > 0 and ids[-1] == eos
    return add_bos, add_eos


def _space_prefix(tokenizer_json: dict[str, Any] | None) -> bool:
    if tokenizer_json is None:
        return True
    text = json.dumps([tokenizer_json.get("normalizer"), tokenizer_json.get("pre_tokenizer")])
    return '"Prepend"' in text or '"prepend_scheme": "first"' in text or '"prepend_scheme": "always"' in text


def add_vocab(writer: gguf.GGUFWriter, model_dir: Path, n_vocab: int, gguf_arch: str) -> dict[str, Any]:
    """Write the tokenizer of `model_dir` into `writer`; returns a summary for the export report."""
    kind = tokenizer_kind(model_dir)
    tokenizer = _load_tokenizer(model_dir)
    tokenizer_json = _read_tokenizer_json(model_dir)
    info: dict[str, Any] = {"kind": kind}
    if kind == "bpe":
        tokens, types = _bpe_tokens(tokenizer, n_vocab)
        pre = detect_pre_tokenizer(tokenizer, tokenizer_json, gguf_arch)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        info.update(model="gpt2", pre=pre)
    else:
        spm_tokens, scores, types = (
            _spm_tokens(model_dir, n_vocab) if kind == "spm" else _spm_hf_tokens(tokenizer, n_vocab)
        )
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(spm_tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        writer.add_add_space_prefix(_space_prefix(tokenizer_json))
        info.update(model="llama", pre="default")

    special = gguf.SpecialVocab(model_dir, load_merges=kind == "bpe", n_vocab=n_vocab)
    if kind == "bpe" and not special.merges:
        raise ExportError(f"no BPE merges found in {model_dir} (tokenizer.json or merges.txt)")
    # SpecialVocab guesses add_bos from the post-processor; ask the tokenizer itself instead.
    special.add_special_token["bos"], special.add_special_token["eos"] = _adds_special(tokenizer)
    if special.chat_template is None and getattr(tokenizer, "chat_template", None):
        special.chat_template = tokenizer.chat_template
    special.add_to_gguf(writer, quiet=True)
    info.update(
        n_tokens=n_vocab,
        special_ids=dict(special.special_token_ids),
        add_bos=special.add_special_token["bos"],
        chat_template=special.chat_template is not None,
    )
    return info
