"""The job schema: YAML round trip, LLaMA-Factory files, and every bad value named."""

from __future__ import annotations

import shlex

import pytest

from app.cli import build_job, build_parser
from app.config import GROUPS, ConfigError, JobConfig

LF_YAML = """
### model
model_name_or_path: meta-llama/Meta-Llama-3-8B-Instruct
trust_remote_code: true
### method
stage: sft
do_train: true
finetuning_type: lora
lora_rank: 8
lora_target: all
### dataset
dataset: identity,alpaca_en_demo
template: llama3
cutoff_len: 2048
max_samples: 1000
overwrite_cache: true
preprocessing_num_workers: 16
dataloader_num_workers: 4
### output
output_dir: saves/llama3-8b/lora/sft
logging_steps: 10
save_steps: 500
plot_loss: true
overwrite_output_dir: true
save_only_model: false
report_to: none
### train
per_device_train_batch_size: 1
gradient_accumulation_steps: 8
learning_rate: 1.0e-4
num_train_epochs: 3.0
lr_scheduler_type: cosine
warmup_ratio: 0.1
bf16: true
ddp_timeout: 180000000
resume_from_checkpoint: null
### eval
val_size: 0.1
per_device_eval_batch_size: 1
eval_strategy: steps
eval_steps: 500
"""


def test_llamafactory_training_yaml_loads_unchanged():
    notes: list[str] = []
    job = JobConfig.from_yaml_text(LF_YAML, notes)
    assert job.model_name_or_path == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert job.datasets == ["identity", "alpaca_en_demo"]
    assert job.template == "llama3" and job.cutoff_len == 2048 and job.max_samples == 1000
    assert job.learning_rate == pytest.approx(1e-4) and job.bf16 is True and job.val_size == 0.1
    assert job.eval_steps == 500 and job.gradient_accumulation_steps == 8
    assert job.lora_alpha_value == 16
    assert any(n.startswith("plot_loss:") for n in notes)
    assert any(n.startswith("do_train:") for n in notes)


def test_yaml_round_trip_keeps_every_field():
    job = JobConfig(stage="dpo", learning_rate=5e-6, lora_rank=16, lora_alpha=32, dataset="a,b", val_size=0.2,
                    resume_from_checkpoint=True, quantization_bit=4, pref_loss="ipo")
    again = JobConfig.from_yaml_text(job.to_yaml())
    assert again == job


def test_strings_from_the_cli_are_coerced():
    job = JobConfig.from_dict({"learning_rate": "5e-4", "lora_rank": "16", "bf16": "false", "max_samples": "",
                               "resume_from_checkpoint": "true", "quantization_bit": "4"})
    assert job.learning_rate == 5e-4 and job.lora_rank == 16 and job.bf16 is False
    assert job.max_samples is None and job.resume_from_checkpoint is True and job.quantization_bit == 4


def test_yaml_1_1_exponent_without_dot_is_a_number():
    # PyYAML reads `5e-4` as the string '5e-4'; the schema must still treat it as a float.
    assert JobConfig.from_yaml_text("learning_rate: 5e-4\n").learning_rate == 5e-4


@pytest.mark.parametrize(
    "data, message",
    [
        ({"learning_rate": -1}, "learning_rate: must be > 0, got -1"),
        ({"learning_rate": 0}, "learning_rate: must be > 0, got 0"),
        ({"learning_rate": "fast"}, "learning_rate: must be a number, got 'fast'"),
        ({"stage": "ppo"}, "stage: must be one of sft, dpo, pt, kto, rm, grpo, got 'ppo'"),
        ({"finetuning_type": "qlora"}, "finetuning_type: must be one of lora, freeze, full, got 'qlora'"),
        ({"lora_rank": 1.5}, "lora_rank: must be a whole number, got 1.5"),
        ({"lora_rank": 0}, "lora_rank: must be >= 1, got 0"),
        ({"lora_dropout": 1.5}, "lora_dropout: must be <= 1, got 1.5"),
        ({"warmup_ratio": -0.1}, "warmup_ratio: must be >= 0, got -0.1"),
        ({"cutoff_len": 4}, "cutoff_len: must be >= 8, got 4"),
        ({"per_device_train_batch_size": 0}, "per_device_train_batch_size: must be >= 1, got 0"),
        ({"bf16": "maybe"}, "bf16: must be true or false, got 'maybe'"),
        ({"quantization_bit": 3}, "quantization_bit: must be one of 4, 8, got 3"),
        ({"lr_scheduler_type": "warm"}, "lr_scheduler_type: must be one of linear, cosine"),
        ({"pref_loss": "kto_pair"}, "pref_loss: must be one of sigmoid, ipo, hinge, orpo, simpo, got 'kto_pair'"),
        ({"bf16": True, "fp16": True}, "fp16: cannot be combined with bf16; choose one"),
        ({"quantization_bit": 4, "finetuning_type": "full"},
         "quantization_bit: quantized training needs finetuning_type lora, got full"),
        ({"dataset": " , "}, "dataset: name at least one catalogue dataset"),
        ({"val_size": 2.5}, "val_size: a count must be whole, got 2.5"),
        ({"learning_rat": 1e-4}, "learning_rat: unknown key (did you mean learning_rate?)"),
        ({"use_galore": True}, "use_galore: known LLaMA-Factory key, not supported yet"),
        ({"distributed_strategy": "horovod"}, "distributed_strategy: must be one of auto, none, ddp, fsdp"),
        ({"num_processes": 0}, "num_processes: must be >= 1, got 0"),
        ({"deepspeed": "ds_z3.json", "distributed_strategy": "fsdp"},
         "deepspeed: a DeepSpeed config needs distributed_strategy auto"),
        ({"quantization_bit": 4, "distributed_strategy": "fsdp"}, "quantization_bit: QLoRA cannot be sharded"),
        ({"use_galore": True}, "use_galore: known LLaMA-Factory key, not supported yet"),
        ({"stage": None}, "stage: must not be empty"),
    ],
)
def test_bad_values_are_named(data, message):
    with pytest.raises(ConfigError) as caught:
        JobConfig.from_dict(data)
    assert any(p.startswith(message) for p in caught.value.problems), caught.value.problems


def test_all_problems_reported_at_once():
    with pytest.raises(ConfigError) as caught:
        JobConfig.from_dict({"learning_rate": "x", "stage": "rm", "bogus": 1})
    names = sorted(p.split(":")[0] for p in caught.value.problems)
    assert names == ["bogus", "learning_rate"]  # type errors first; choices checked once types are right


def test_not_a_mapping_and_bad_yaml():
    with pytest.raises(ConfigError, match="yaml: expected a mapping"):
        JobConfig.from_yaml_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="yaml: not valid YAML"):
        JobConfig.from_yaml_text("a: [1, 2\n")


def test_preview_command_reproduces_the_job(tmp_path):
    job = JobConfig(dataset="identity", learning_rate=5e-4, lora_rank=16, max_steps=30, bf16=False,
                    template="chatml", output_dir=str(tmp_path / "run x"))
    line = job.command_line()
    assert line.startswith("ftstudio train ")
    argv = shlex.split(line)[1:]  # drop the program name
    args = build_parser().parse_args(argv)
    assert build_job(args) == job


def test_cli_flags_override_the_yaml(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("learning_rate: 1.0e-3\nlora_rank: 4\n")
    args = build_parser().parse_args(["train", str(path), "--lora_rank", "32"])
    job = build_job(args)
    assert job.learning_rate == 1e-3 and job.lora_rank == 32


def test_every_field_has_help_and_a_group():
    for name, f in JobConfig.spec().items():
        assert f.metadata["help"], name
        assert f.metadata["group"] in GROUPS, name


def test_llamafactory_deepspeed_key_is_a_field(tmp_path):
    job = JobConfig.from_yaml_text("deepspeed: examples/ds_z3.json\nstage: sft\n")
    assert job.deepspeed == "examples/ds_z3.json" and job.distributed_strategy == "auto"
    resolved = job.replace(output_dir=str(tmp_path / "run")).with_run_folder()
    assert resolved.deepspeed.endswith("examples/ds_z3.json") and resolved.deepspeed.startswith("/")


def test_a_text_field_whose_default_is_empty_survives_a_round_trip():
    from dataclasses import dataclass

    from app.config.schema import Schema, param

    @dataclass
    class Small(Schema):
        note: str = param("", "Free text.", "basic")
        name: str = param("x", "Must be given.", "basic")

    assert Small().replace(name="y").note == ""
    with pytest.raises(ConfigError, match="name: must not be empty"):
        Small.from_dict({"name": ""})
