"""The engine's oneDNN-packed linear layers: same numbers per row alone or batched, never a stale weight."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from app.chat import packed

pytestmark = pytest.mark.skipif(not packed.available(), reason="this torch build has no oneDNN linear")


@pytest.fixture(scope="module")
def tiny() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(config).eval()
    assert packed.pack_linears(model) > 0
    return model


def test_packed_rows_equal_alone_and_match_plain(tiny: LlamaForCausalLM):
    ids = torch.randint(0, 300, (5, 7))
    with torch.inference_mode():
        plain = tiny(input_ids=ids).logits
        with packed.engaged():
            batch = tiny(input_ids=ids).logits
            alone = torch.cat([tiny(input_ids=ids[i:i + 1]).logits for i in range(5)])
    assert torch.equal(batch, alone)  # a row's numbers do not depend on its company
    assert torch.allclose(batch, plain, atol=1e-4)


def test_engaged_uses_the_packed_weight_and_never_a_stale_one(tiny: LlamaForCausalLM):
    layer = tiny.model.layers[0].mlp.down_proj
    x = torch.randn(3, layer.in_features)
    with torch.no_grad():
        own = layer._ftstudio_packed
        layer._ftstudio_packed = torch.ops.mkldnn._reorder_linear_weight(layer.weight * 2, packed.PACK_HINT)
        with packed.engaged():
            assert torch.allclose(layer(x), 2 * torch.nn.functional.linear(x, layer.weight), atol=1e-5)
        layer._ftstudio_packed = own
        assert torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight))  # not engaged: plain path
        saved = layer.weight.clone()
        layer.weight.mul_(2.0)  # e.g. an adapter merged into the weights
        with packed.engaged():
            assert torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight))
        layer.weight.copy_(saved)
