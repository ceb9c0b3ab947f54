"""A LoRA adapter trained with `rope_scaling` runs on a base stretched the same way wherever it is loaded:
the chat engine (Chat tab, `ftstudio chat`, the API), evaluation, and merge/export (whose config.json then
records the scaling). A tiny llama built from a config; the adapter has random non-zero LoRA weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from app.config import EvalConfig, JobConfig
from app.models.rope import base_arguments_for, rope_arguments

CUTOFF = 1024  # the tiny model covers 512 positions: linear x2
MESSAGES = [{"role": "user", "content": "Tell me about the stretched positions of this tiny model, please."}]


@pytest.fixture(scope="module")
def stretched(tmp_path_factory, tiny_model_dir: Path) -> dict[str, Any]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = tmp_path_factory.mktemp("runs") / "rope-lora"
    run.mkdir()
    JobConfig(model_name_or_path=str(tiny_model_dir), rope_scaling="linear", cutoff_len=CUTOFF,
              output_dir=str(run)).save(run / "job.yaml")
    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32,
                                                **rope_arguments("linear", CUTOFF, tiny_model_dir))
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj"],
                                            init_lora_weights=False)).eval()
    model.save_pretrained(run / "adapter")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.save_pretrained(run / "adapter")
    ids = torch.tensor([tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True,
                                                      return_dict=True)["input_ids"]])
    with torch.no_grad():
        trained = model(ids).logits[0, -1].log_softmax(-1)  # as in training: stretched base + adapter
        with model.disable_adapter():
            stretched_base = model(ids).logits[0, -1].log_softmax(-1)
        plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        plain_base = plain(ids).logits[0, -1].log_softmax(-1)
    # the test can tell the two apart only if the scaling changes the logits
    assert (stretched_base - plain_base).abs().max() > 1e-3
    return {"run": run, "base": tiny_model_dir, "ids": ids, "trained": trained, "plain_base": plain_base}


def test_the_run_records_its_scaling_for_every_folder_of_it(stretched: dict[str, Any]) -> None:
    run, base = stretched["run"], stretched["base"]
    for folder in (run, run / "adapter", run / "checkpoints" / "checkpoint-4"):
        keys = base_arguments_for(folder, base)
        assert keys["max_position_embeddings"] == CUTOFF and keys["rope_parameters"]["factor"] == 2.0
    assert base_arguments_for(base, base) == {}  # a plain model folder: nothing to stretch


def test_the_chat_engine_stretches_the_adapters_base_only(stretched: dict[str, Any]) -> None:
    from app.chat.backends.transformers import TransformersBackend

    engine = TransformersBackend(model=str(stretched["base"]), dtype="float32")
    try:
        engine.add_adapter("rope", stretched["run"])
        assert engine.context_window("rope") == CUTOFF and engine.context_window() == 512
        for name, expected in (("rope", stretched["trained"]), (None, stretched["plain_base"])):
            reply = engine.generate(MESSAGES, model=name, max_new_tokens=1, logprobs=0)
            assert reply.prompt_tokens == stretched["ids"].shape[1]
            assert reply.logprobs[0].logprob == pytest.approx(float(expected.max()), abs=1e-4)
    finally:
        engine.close()


def test_evaluation_loads_the_adapter_on_the_stretched_base(stretched: dict[str, Any]) -> None:
    from app.eval.loading import load_model

    loaded = load_model(EvalConfig(adapter_name_or_path=str(stretched["run"])))
    with torch.no_grad():
        logits = loaded.model(stretched["ids"]).logits[0, -1].log_softmax(-1)
    torch.testing.assert_close(logits, stretched["trained"], atol=1e-4, rtol=1e-4)


def test_merge_writes_the_scaling_into_the_merged_config(stretched: dict[str, Any], tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from app.export.merge import merge_adapter

    out = merge_adapter(stretched["run"] / "adapter", tmp_path / "merged", dtype="float32")
    config = json.loads((out / "config.json").read_text())
    assert config["max_position_embeddings"] == CUTOFF
    assert config["rope_parameters"]["rope_type"] == "linear" and config["rope_parameters"]["factor"] == 2.0
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    with torch.no_grad():
        logits = merged(stretched["ids"]).logits[0, -1].log_softmax(-1)
    torch.testing.assert_close(logits, stretched["trained"], atol=1e-4, rtol=1e-4)
