"""LoRA variants and training tricks (LLaMA-Factory's keys), through the real worker on a tiny model.

Each trains a few SFT steps with a falling loss and leaves its mark where it should: DoRA's magnitude
vectors and rsLoRA's flag in the adapter; PiSSA saved converted to a plain LoRA that reproduces the
trained model on the untouched base; LoRA+'s faster B matrices; RoPE scaling in the saved config;
an adapter started from another run's adapter; a finished run continued for more epochs.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train_support import make_tiny_catalogue, make_tiny_model, run_in_process, step_logs

from app.config import JobConfig
from app.train.runfolder import RunFolder

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("variants")
    return {"model": make_tiny_model(root / "model"), "catalogue": make_tiny_catalogue(root / "cat")}


def sft_job(tiny: dict, output_dir: Path, **changes) -> JobConfig:
    base = dict(model_name_or_path=str(tiny["model"]), dataset="tiny", dataset_dir=str(tiny["catalogue"]),
                cutoff_len=64, per_device_train_batch_size=8, gradient_accumulation_steps=1, logging_steps=1,
                save_steps=1000, learning_rate=1e-2, max_steps=5, output_dir=str(output_dir))
    return JobConfig(**(base | changes))


def train(job: JobConfig) -> tuple[RunFolder, list[float]]:
    code = run_in_process(job)
    run = RunFolder(Path(job.output_dir))
    assert code == 0 and run.read_state()["state"] == "finished", run.tail_log()
    losses = [e["loss"] for e in step_logs(run.events.read_all())]
    assert statistics.mean(losses[-2:]) < statistics.mean(losses[:2]), losses
    return run, losses


def adapter_config(run: RunFolder) -> dict:
    return json.loads((run.adapter / "adapter_config.json").read_text())


@pytest.mark.parametrize("changes", [dict(use_dora=True), dict(use_rslora=True, lora_rank=16, learning_rate=2e-3),
                                     dict(loraplus_lr_ratio=16.0), dict(neftune_noise_alpha=5.0)],
                         ids=["dora", "rslora", "loraplus", "neftune"])
def test_lora_variants_train(tiny: dict, tmp_path: Path, changes: dict) -> None:
    run, _ = train(sft_job(tiny, tmp_path / "run", **changes))
    config = adapter_config(run)
    weights = load_file(str(run.adapter / "adapter_model.safetensors"))
    assert config["use_dora"] == changes.get("use_dora", False)
    assert config["use_rslora"] == changes.get("use_rslora", False)
    assert any("lora_magnitude_vector" in k for k in weights) == ("use_dora" in changes)
    if "loraplus_lr_ratio" in changes:  # B matrices moved far more than A matrices from their start
        b = statistics.mean(float(v.abs().mean()) for k, v in weights.items() if "lora_B" in k)
        assert b > 0.005


def test_pissa_is_saved_as_a_plain_lora_that_reproduces_the_model(tiny: dict, tmp_path: Path) -> None:
    """Trained PiSSA model = residual base (W - initial BA) + trained BA; the saved adapter, converted,
    must give exactly that on the untouched base W."""
    import shutil

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run, _ = train(sft_job(tiny, tmp_path / "run", pissa_init=True, pissa_iter=4, lora_rank=4, max_steps=4,
                           save_steps=4))
    config = adapter_config(run)
    assert config["r"] == 8 and config["init_lora_weights"] is True  # converted: rank doubled, plain init

    def merged(adapter: Path) -> dict[str, torch.Tensor]:
        base = AutoModelForCausalLM.from_pretrained(tiny["model"], dtype=torch.float32)
        return PeftModel.from_pretrained(base, str(adapter)).merge_and_unload().state_dict()

    trained = tmp_path / "trained"  # the final checkpoint (PiSSA form), read as a plain adapter
    shutil.copytree(sorted(run.checkpoints.glob("checkpoint-*"))[-1], trained)
    trained_config = json.loads((trained / "adapter_config.json").read_text())
    (trained / "adapter_config.json").write_text(json.dumps(trained_config | {"init_lora_weights": True}))
    base = load_file(str(tiny["model"] / "model.safetensors"))
    initial, final, converted = merged(run.path / "pissa_init"), merged(trained), merged(run.adapter)
    key = "model.layers.0.self_attn.q_proj.weight"
    expected = base[key] - (initial[key] - base[key]) + (final[key] - base[key])
    assert not torch.allclose(converted[key], base[key], atol=1e-4)
    assert torch.allclose(converted[key], expected, atol=1e-4)


def test_rope_scaling_stretches_the_context(tiny: dict, tmp_path: Path) -> None:
    model_dir = tmp_path / "short"
    source = json.loads((tiny["model"] / "config.json").read_text())
    model_dir.mkdir()
    for f in tiny["model"].iterdir():
        (model_dir / f.name).write_bytes(f.read_bytes())
    (model_dir / "config.json").write_text(json.dumps(source | {"max_position_embeddings": 32}))
    run, _ = train(sft_job(tiny, tmp_path / "run", model_name_or_path=str(model_dir), finetuning_type="full",
                           rope_scaling="linear", cutoff_len=64, learning_rate=1e-3))
    saved = json.loads((run.adapter / "config.json").read_text())
    assert saved["max_position_embeddings"] == 64
    assert saved["rope_parameters"]["rope_type"] == "linear" and saved["rope_parameters"]["factor"] == 2.0


def test_start_from_an_adapter_and_continue_a_finished_run(tiny: dict, tmp_path: Path) -> None:
    from app.train.continuation import continue_job

    first, losses = train(sft_job(tiny, tmp_path / "first", max_steps=6))
    second, more = train(sft_job(tiny, tmp_path / "second", adapter_name_or_path=str(first.path), max_steps=4))
    assert more[0] < losses[0]  # it starts where the first run ended, not from scratch

    job = continue_job(first.path, epochs=1)
    assert job.adapter_name_or_path == str(first.adapter) and job.num_train_epochs == 1 and job.max_steps == -1
    assert Path(job.output_dir).name == "first-more-1" and job.learning_rate == 1e-2
    job = job.replace(max_steps=3)
    third, _ = train(job)
    assert adapter_config(third)["r"] == adapter_config(first)["r"]
