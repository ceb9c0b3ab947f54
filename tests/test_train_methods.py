"""Each training method does what it says, through the real worker on CPU.

freeze: only the chosen layers change, the saved folder is a full model that loads.
QLoRA (4 and 8 bit through bitsandbytes on CPU): the loss falls, the CPU warning reaches the event log,
and merging the adapter uses the unquantized base. Pre-training: held-out perplexity drops. DPO: on
held-out pairs the policy comes to prefer the chosen answer (implicit reward margin and accuracy).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train_support import isolated_worker, make_tiny_catalogue, make_tiny_model, run_in_process, step_logs

from app.config import JobConfig
from app.train.runfolder import RunFolder

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("tiny")
    return {"model": make_tiny_model(root / "model"), "catalogue": make_tiny_catalogue(root / "cat")}


def tiny_job(tiny: dict, output_dir: Path, **changes) -> JobConfig:
    base = dict(model_name_or_path=str(tiny["model"]), dataset="tiny", dataset_dir=str(tiny["catalogue"]),
                cutoff_len=64, per_device_train_batch_size=2, gradient_accumulation_steps=1, logging_steps=1,
                save_steps=1000, learning_rate=1e-2, max_steps=6, output_dir=str(output_dir))
    return JobConfig(**(base | changes))


def train(job: JobConfig) -> RunFolder:
    code = run_in_process(job)
    run = RunFolder(Path(job.output_dir))
    assert code == 0 and run.read_state()["state"] == "finished", run.tail_log()
    return run


# -- freeze ------------------------------------------------------------------------------------
@pytest.mark.parametrize("layers, modules, trained_prefixes", [
    (1, "all", ("model.layers.1.",)),  # the last layer, every weight in it
    (-1, "mlp", ("model.layers.0.mlp.",)),  # the first layer, its MLP only
])
def test_freeze_changes_only_the_chosen_layers(tiny, tmp_path, layers, modules, trained_prefixes):
    run = train(tiny_job(tiny, tmp_path / "freeze", finetuning_type="freeze", freeze_trainable_layers=layers,
                         freeze_trainable_modules=modules, learning_rate=1e-3, max_steps=3))
    before = load_file(str(tiny["model"] / "model.safetensors"))
    after = load_file(str(run.adapter / "model.safetensors"))
    assert set(after) == set(before)
    changed = {key for key in before if not torch.equal(before[key], after[key])}
    expected = {key for key in before if key.startswith(trained_prefixes)}
    assert changed == expected  # every chosen weight moved; every other one is bit-identical
    ready = next(e for e in run.events.read_all() if e["kind"] == "stage" and e["name"] == "model_ready")
    assert ready["trainable_params"] == sum(before[key].numel() for key in expected)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(run.adapter)  # a full model folder, no adapter
    tokenizer = AutoTokenizer.from_pretrained(run.adapter)
    assert not (run.adapter / "adapter_config.json").exists()
    ids = tokenizer("Who are you?", return_tensors="pt").input_ids
    assert torch.isfinite(model(input_ids=ids).logits).all()


# -- QLoRA -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def qlora_runs(tiny, tmp_path_factory) -> dict[int, RunFolder]:
    pytest.importorskip("bitsandbytes")
    root = tmp_path_factory.mktemp("qlora")
    return {bits: train(tiny_job(tiny, root / f"q{bits}", quantization_bit=bits, lora_rank=8, lora_alpha=16))
            for bits in (4, 8)}


@pytest.mark.parametrize("bits", [4, 8])
def test_qlora_on_cpu_warns_and_learns(qlora_runs, bits):
    run = qlora_runs[bits]
    events = run.events.read_all()
    warnings = [e for e in events if e["kind"] == "stage" and e.get("level") == "warning"]
    assert any(f"quantization_bit={bits} on CPU" in e["message"] for e in warnings), warnings
    losses = [e["loss"] for e in step_logs(events)]
    assert len(losses) == 6 and min(losses[-2:]) < losses[0] - 0.2, losses


def test_qlora_adapter_merges_into_the_unquantized_base(qlora_runs, tiny, tmp_path):
    merge_adapter = pytest.importorskip("app.export.merge").merge_adapter
    adapter = qlora_runs[4].adapter
    assert Path(json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]) == tiny["model"]
    merged_dir = merge_adapter(adapter, tmp_path / "merged")
    assert "quantization_config" not in json.loads((merged_dir / "config.json").read_text())
    merged = {}
    for file in merged_dir.glob("*.safetensors"):
        merged |= load_file(str(file))
    base = load_file(str(tiny["model"] / "model.safetensors"))
    assert set(merged) == set(base)
    assert all(torch.isfinite(t).all() and t.dtype == torch.float32 for t in merged.values())
    assert torch.equal(merged["model.embed_tokens.weight"], base["model.embed_tokens.weight"])

    # merged = float base + (alpha / r) B A exactly: no 4-bit rounding error was baked in
    lora = load_file(str(adapter / "adapter_model.safetensors"))
    prefix = "base_model.model.model.layers.1.self_attn.q_proj"
    delta = 2.0 * lora[f"{prefix}.lora_B.weight"] @ lora[f"{prefix}.lora_A.weight"]
    key = "model.layers.1.self_attn.q_proj.weight"
    assert delta.abs().max() > 1e-4  # the adapter learned something
    torch.testing.assert_close(merged[key], base[key] + delta, rtol=0, atol=1e-6)


# -- continued pre-training on the embedded model -----------------------------------------------
def perplexity(model, tokenizer, path: Path, cutoff: int) -> float:
    from app.data.render import tokenize_pt

    texts = [{"text": line} for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    blocks, _ = tokenize_pt(texts, tokenizer, cutoff)
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for block in blocks:
            ids = torch.tensor([block["input_ids"]])
            total += model(input_ids=ids, labels=ids).loss.item() * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
    return math.exp(total / count)


def test_pretraining_lowers_heldout_perplexity(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from app.models.source import embedded_model_dir

    job = JobConfig(stage="pt", dataset="raw_text_demo", dataset_dir=str(REPO), cutoff_len=128,
                    per_device_train_batch_size=2, gradient_accumulation_steps=1, max_steps=12,
                    learning_rate=5e-4, lora_rank=16, warmup_steps=0, lr_scheduler_type="constant",
                    logging_steps=1, save_steps=1000, output_dir=str(tmp_path / "pt"))
    run = train(job)
    stages = [e["message"] for e in run.events.read_all() if e["kind"] == "stage"]
    assert any("packed into" in m and "blocks of 128 tokens" in m for m in stages), stages

    heldout = REPO / "data" / "raw_text_heldout.txt"
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
    model = AutoModelForCausalLM.from_pretrained(embedded_model_dir())
    with isolated_worker():  # one thread, as the training ran
        before = perplexity(model, tokenizer, heldout, 128)
        after = perplexity(PeftModel.from_pretrained(model, run.adapter), tokenizer, heldout, 128)
    print(f"held-out perplexity {before:.2f} -> {after:.2f}")
    assert after < 0.9 * before, (before, after)


# -- DPO on the embedded model -----------------------------------------------------------------
def test_dpo_makes_heldout_pairs_prefer_the_chosen_answer(tmp_path):
    steps = 8
    job = JobConfig(stage="dpo", dataset="preference_demo", dataset_dir=str(REPO), cutoff_len=96, val_size=8,
                    per_device_train_batch_size=2, gradient_accumulation_steps=1, max_steps=steps,
                    learning_rate=2e-4, lr_scheduler_type="constant", pref_beta=0.1, lora_rank=16,
                    logging_steps=1, eval_steps=steps, save_steps=1000, output_dir=str(tmp_path / "dpo"))
    run = train(job)
    events = run.events.read_all()
    logs = step_logs(events)
    for key in ("rewards_chosen", "rewards_rejected", "rewards_margins", "rewards_accuracies", "logps_chosen",
                "logps_rejected"):
        assert all(key in e for e in logs), key

    evals = [e for e in events if e["kind"] == "eval"]
    before, after = evals[0], evals[-1]
    keys = ("eval_rewards_margins", "eval_rewards_accuracies", "eval_logps_chosen", "eval_logps_rejected")
    print(f"held-out DPO metrics, step 0 -> {steps}:", {k: (round(before[k], 4), round(after[k], 4)) for k in keys})
    assert (before["step"], after["step"]) == (0, steps)
    # the 8 held-out pairs: at step 0 the policy is the reference (LoRA starts as a no-op)
    assert before["eval_rewards_margins"] == pytest.approx(0.0, abs=1e-6)
    assert after["eval_rewards_margins"] > 0.01, after
    assert after["eval_rewards_accuracies"] > 0.5, after  # most held-out pairs ranked right (0.75 measured)
    preference = after["eval_logps_chosen"] - after["eval_logps_rejected"]
    assert preference > before["eval_logps_chosen"] - before["eval_logps_rejected"]


@pytest.mark.parametrize("method", ["lora", "full"])
def test_dpo_reference_model(tiny, tmp_path, method):
    """LoRA: no second model, the reference is the base with the adapter disabled. Full fine-tuning:
    TRL's frozen copy of the base, which training leaves untouched."""
    from app.train.model_setup import apply_method, load_model, load_tokenizer
    from app.train.recipes import build_dpo_trainer, prepare_data

    job = JobConfig(stage="dpo", finetuning_type=method, model_name_or_path=str(tiny["model"]),
                    dataset="preference_demo", dataset_dir=str(REPO), cutoff_len=64, max_samples=8,
                    per_device_train_batch_size=2, gradient_accumulation_steps=1, max_steps=2, learning_rate=1e-3,
                    logging_steps=1, save_steps=1000)
    tokenizer = load_tokenizer(tiny["model"], None)
    model = apply_method(job, load_model(job, tiny["model"]))
    trainer = build_dpo_trainer(job, model, tokenizer, prepare_data(job, tokenizer), tmp_path / "ckpt", [])
    if method == "lora":
        assert trainer.ref_model is None
        trainer.train()
        return
    reference = trainer.ref_model
    assert reference is not None and reference is not model
    assert not any(p.requires_grad for p in reference.parameters())
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    policy_before = model.model.layers[0].mlp.up_proj.weight.detach().clone()
    trainer.train()
    assert all(torch.equal(before[k], v) for k, v in reference.state_dict().items())
    assert not torch.equal(policy_before, model.model.layers[0].mlp.up_proj.weight)
