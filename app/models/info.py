"""What a model folder holds, read from its config and safetensors headers without loading weights."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from safetensors import safe_open


@dataclass
class ModelInfo:
    path: str
    architecture: str
    model_type: str
    n_params: int
    n_layers: int
    hidden_size: int
    intermediate_size: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    context_length: int
    tied_embeddings: bool
    dtype: str
    chat_template: str | None
    # (module name, in_features, out_features) of every nn.Linear except the output head
    linear_layers: list[tuple[str, int, int]] = field(default_factory=list, repr=False)

    @property
    def linear_kinds(self) -> list[str]:
        """Distinct leaf names of the linear layers (q_proj, k_proj, ...): the LoRA targets on offer."""
        return sorted({name.rsplit(".", 1)[-1] for name, _, _ in self.linear_layers})

    def summary(self) -> str:
        return (
            f"{self.architecture} ({self.model_type}), {self.n_params / 1e6:,.1f} M parameters, "
            f"{self.n_layers} layers, hidden {self.hidden_size}, {self.n_heads} heads "
            f"({self.n_kv_heads} KV), vocab {self.vocab_size:,}, context {self.context_length:,}, "
            f"stored as {self.dtype}"
        )


def _count_params(folder: Path) -> tuple[int, str]:
    total, dtype = 0, "unknown"
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                piece = handle.get_slice(key)
                count = 1
                for dim in piece.get_shape():
                    count *= dim
                total += count
                dtype = str(piece.get_dtype()).lower()
    return total, dtype


def _linear_layers(config) -> list[tuple[str, int, int]]:
    """Instantiate the architecture on the meta device (no memory) and list its linear layers."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    head = model.get_output_embeddings()
    return [
        (name, module.in_features, module.out_features)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not head
    ]


@lru_cache(maxsize=16)
def describe_model(path: str | Path) -> ModelInfo:
    from transformers import AutoConfig

    folder = Path(path)
    config = AutoConfig.from_pretrained(folder)
    text = getattr(config, "text_config", None) or config
    n_params, dtype = _count_params(folder)
    template_file = folder / "chat_template.jinja"
    template = template_file.read_text() if template_file.is_file() else None
    if template is None and (folder / "tokenizer_config.json").is_file():
        template = json.loads((folder / "tokenizer_config.json").read_text()).get("chat_template")
    layers = _linear_layers(config)
    n_heads = getattr(text, "num_attention_heads", 0)
    return ModelInfo(
        path=str(folder),
        architecture=(config.architectures or [type(config).__name__])[0],
        model_type=config.model_type,
        n_params=n_params or sum(i * o for _, i, o in layers),
        n_layers=getattr(text, "num_hidden_layers", 0),
        hidden_size=getattr(text, "hidden_size", 0),
        intermediate_size=getattr(text, "intermediate_size", 0),
        n_heads=n_heads,
        n_kv_heads=getattr(text, "num_key_value_heads", None) or n_heads,
        vocab_size=getattr(text, "vocab_size", 0),
        context_length=getattr(text, "max_position_embeddings", 0),
        tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        dtype=dtype,
        chat_template=template,
        linear_layers=layers,
    )
