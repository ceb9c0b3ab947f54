"""Frozen linear layers on oneDNN (app/train/frozen_linears.py): the same products and gradients as the
plain layers, and the plain weights back bit for bit however training ends."""

from __future__ import annotations

import pytest
import torch
from test_train_speed import collate
from test_train_support import load_tiny_model

from app.config import JobConfig
from app.models import onednn
from app.train import frozen_linears, loss_head

pytestmark = pytest.mark.skipif(not onednn.available(), reason="this torch build has no oneDNN linear")


@pytest.mark.parametrize("shape", [(1536, 576), (576, 1536)])  # both ways of unpacking
def test_a_packed_layer_gives_the_plain_product_and_gradient_and_unpacks_exactly(shape):
    torch.manual_seed(0)
    out_features, in_features = shape
    layer = torch.nn.Linear(in_features, out_features).requires_grad_(False)
    original = layer.weight.clone()
    x = torch.randn(2, 37, in_features, requires_grad=True)
    plain = layer(x)
    (plain_grad,) = torch.autograd.grad(plain.square().sum(), x)

    frozen_linears.pack(layer, frozen_linears.file_mappings())
    assert layer.weight.stride() == (0, 0)  # the plain copy is gone while packed
    packed = layer(x)
    (packed_grad,) = torch.autograd.grad(packed.square().sum(), x)
    torch.testing.assert_close(packed, plain, rtol=1e-5, atol=1e-5)  # another kernel, another sum order
    torch.testing.assert_close(packed_grad, plain_grad, rtol=1e-4, atol=1e-4)

    frozen_linears.unpack(layer)
    assert torch.equal(layer.weight, original) and layer.weight.is_contiguous()
    assert "forward" not in layer.__dict__ and torch.equal(layer(x), plain)


@pytest.fixture(scope="module")
def lora_model(tmp_path_factory):
    from peft import LoraConfig, get_peft_model

    base = load_tiny_model(tmp_path_factory.mktemp("tiny") / "m")
    return get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))


def _step(model) -> tuple[float, list[torch.Tensor]]:
    model.zero_grad()
    loss, _ = loss_head.completion_loss(model, collate(padding_free=True))
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters() if p.requires_grad]


def test_a_lora_step_is_the_same_and_the_base_comes_back_even_after_a_failure(lora_model):
    job = JobConfig(stage="sft", finetuning_type="lora")
    weights = {name: p.detach().clone() for name, p in lora_model.named_parameters() if not p.requires_grad}
    plain_loss, plain_grads = _step(lora_model)
    # transformers maps the safetensors file: packing drops the freed weights' pages of that mapping too
    q = lora_model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight
    assert any(low <= q.data_ptr() < high for low, high in frozen_linears.file_mappings())

    with pytest.raises(RuntimeError, match="a training step failed"):
        with frozen_linears.frozen_linears_packed(job, lora_model) as line:
            assert "frozen linear layers and the output head through oneDNN" in line, line
            head = lora_model.get_output_embeddings()
            packed = [m for m in lora_model.modules() if hasattr(m, frozen_linears._ATTR)]
            # q, k, v, o, gate, up, down in each of the 2 layers (q and v inside their LoRA wrappers), and
            # the head: packed for its forward, its weight (the input embeddings' too) kept for the rest
            assert len(packed) == 15 and head in packed
            assert torch.equal(head.weight, weights["base_model.model.model.embed_tokens.weight"])
            loss, grads = _step(lora_model)
            assert loss == pytest.approx(plain_loss, rel=1e-5)
            for a, b in zip(plain_grads, grads, strict=True):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
            raise RuntimeError("a training step failed")

    for name, p in lora_model.named_parameters():  # every base weight back, bit for bit, embeddings intact
        if name in weights:
            assert torch.equal(p, weights[name]), name
    assert not any(hasattr(m, frozen_linears._ATTR) for m in lora_model.modules())
    assert _step(lora_model)[0] == plain_loss


@pytest.mark.parametrize(("keys", "reason"), [
    ({"packed_weights": "never"}, "packed_weights is never"),
    ({"stage": "dpo"}, "dpo packs only with packed_weights: always"),
    ({"bf16": True}, "mixed precision"),
    ({"use_dora": True}, "DoRA"),
    ({"stage": "kto"}, "stage kto"),
    ({"finetuning_type": "freeze"}, "not a LoRA job"),
])
def test_jobs_that_keep_the_default_kernels_say_why(lora_model, keys, reason):
    job = JobConfig(**({"stage": "sft", "finetuning_type": "lora"} | keys))
    with frozen_linears.frozen_linears_packed(job, lora_model) as line:
        assert reason in line and "default kernels" in line
        assert not any(hasattr(m, frozen_linears._ATTR) for m in lora_model.modules())
    assert frozen_linears.why_not(job, lora_model, world_size=1) is not None
    assert "several processes" in frozen_linears.why_not(JobConfig(stage="sft"), lora_model, world_size=2)
    assert frozen_linears.why_not(JobConfig(stage="dpo", packed_weights="always"), lora_model, world_size=1) is None
