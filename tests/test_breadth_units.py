"""Fast checks of the breadth additions: stage curves, hub errors offline, the converter fetch offline,
the continue command, the picker per stage, and the CLI's new flags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.export.errors import ExportError

REPO = Path(__file__).resolve().parents[1]


def test_stage_curves_pick_each_stages_numbers() -> None:
    from app.ui.stage_plots import length_frame, metrics_frame, series_for

    events = [{"kind": "stage", "name": "training"},
              {"kind": "log", "step": 1, "loss": 0.1, "reward": 0.2, "kl": 0.0, "rewards_exact_match_mean": 0.0,
               "completions_mean_length": 12.0},
              {"kind": "log", "step": 2, "loss": 0.1, "reward": 0.5, "kl": 0.01, "rewards_exact_match_mean": 1.0,
               "completions_mean_length": 9.0},
              {"kind": "log", "final": True, "train_loss": 0.1}]
    assert series_for("grpo", events) == ["reward", "kl", "rewards_exact_match_mean"]
    frame = metrics_frame("grpo", events)
    assert frame[frame.series == "reward"].value.tolist() == [0.2, 0.5]
    assert length_frame(events).value.tolist() == [12.0, 9.0]
    rm = [{"kind": "log", "step": 1, "loss": 0.7, "accuracy": 0.5, "margin": 0.1}]
    assert series_for("rm", rm) == ["accuracy", "margin"]
    assert metrics_frame("sft", rm).empty  # SFT: the loss curve only


def test_picker_lists_the_sets_each_stage_can_use() -> None:
    from app.ui.datasets import datasets_for_stage

    assert "kto_demo" in datasets_for_stage(REPO, "kto") and "kto_demo" not in datasets_for_stage(REPO, "sft")
    assert "preference_demo" in datasets_for_stage(REPO, "rm")
    assert {"grpo_math_demo", "identity"} <= set(datasets_for_stage(REPO, "grpo"))
    assert "raw_text_demo" not in datasets_for_stage(REPO, "grpo")


def test_grpo_rows_carry_the_reference_answer() -> None:
    from app.data.catalogue import load_catalogue
    from app.data.formats import load_examples

    rows = load_examples(load_catalogue(REPO)["grpo_math_demo"], "grpo")
    assert rows[0]["prompt"][-1]["role"] == "user" and rows[0]["answer"].lstrip("-").isdigit()


def test_hub_dataset_offline_names_the_id(tmp_path: Path) -> None:
    from app.data.catalogue import load_catalogue
    from app.data.errors import DataError
    from app.data.formats import load_examples

    entry = {"hf_hub_url": "Intel/orca_dpo_pairs", "ranking": True,
             "columns": {"prompt": "question", "chosen": "chosen", "rejected": "rejected"}}
    (tmp_path / "dataset_info.json").write_text(json.dumps({"orca": entry}))
    spec = load_catalogue(tmp_path)["orca"]
    assert spec.problems == [] and spec.stages == {"dpo", "rm"}
    with pytest.raises(DataError, match="cannot load hub dataset 'Intel/orca_dpo_pairs'.*HF_HUB_OFFLINE"):
        load_examples(spec, "dpo")


def test_push_to_hub_offline_names_the_repository(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from app.cli import main
    from app.export.hub import model_card, push_to_hub, upload_folder_of

    adapter = tmp_path / "run" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "Qwen/Qwen3-0.6B", "r": 8}))
    (tmp_path / "run" / "job.yaml").write_text("stage: sft\n")
    assert upload_folder_of(tmp_path / "run") == (adapter, "adapter")
    card = model_card(adapter, "adapter", "me/lumi")
    assert "base_model: Qwen/Qwen3-0.6B" in card and "stage: sft" in card and "- lora" in card
    with pytest.raises(ExportError, match="cannot push to hub repository 'me/lumi'.*HF_HUB_OFFLINE is set"):
        push_to_hub(tmp_path / "run", "me/lumi")
    with pytest.raises(ExportError, match="repository id must look like user/name"):
        push_to_hub(tmp_path / "run", "lumi")
    assert main(["export", str(tmp_path / "run"), "--format", "adapter", "--push-to-hub", "me/lumi"]) == 1
    assert "cannot push to hub repository 'me/lumi'" in capsys.readouterr().err


def test_converter_fetch_offline_says_how(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.export import llamacpp_convert

    monkeypatch.setenv("FTSTUDIO_CACHE", str(tmp_path))
    monkeypatch.delenv("FTSTUDIO_LLAMA_CPP_DIR", raising=False)
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # as offline: no package index
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(ExportError, match=r"llama-cpp-python==0\.3\.36.*FTSTUDIO_LLAMA_CPP_DIR"):
        llamacpp_convert.converter_dir()
    monkeypatch.setenv("FTSTUDIO_LLAMA_CPP_DIR", str(tmp_path))
    with pytest.raises(ExportError, match="no convert_hf_to_gguf.py in that folder"):
        llamacpp_convert.converter_dir()


def test_continue_needs_a_finished_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from app.cli import main
    from app.config import JobConfig
    from app.train.continuation import continue_job

    with pytest.raises(ValueError, match="not a run folder"):
        continue_job(tmp_path)
    assert main(["continue", str(tmp_path), "--epochs", "2"]) == 2
    assert "is not a run folder (no job.yaml)" in capsys.readouterr().err
    JobConfig(stage="sft", finetuning_type="full", num_train_epochs=3).save(tmp_path / "job.yaml")
    with pytest.raises(ValueError, match="no saved result yet"):
        continue_job(tmp_path)
    (tmp_path / "adapter").mkdir()
    job = continue_job(tmp_path, 2)
    assert job.model_name_or_path == str(tmp_path.resolve() / "adapter") and job.num_train_epochs == 2
    assert job.adapter_name_or_path is None and Path(job.output_dir).name == f"{tmp_path.name}-more-2"


def test_lora_options_need_lora() -> None:
    from app.config import ConfigError, JobConfig

    with pytest.raises(ConfigError, match="use_dora: a LoRA option; finetuning_type is full"):
        JobConfig.from_dict({"finetuning_type": "full", "use_dora": True})
    job = JobConfig.from_dict({"use_dora": True, "use_rslora": True, "pissa_init": False, "loraplus_lr_ratio": 16,
                               "neftune_noise_alpha": 5, "rope_scaling": "yarn", "pref_loss": "simpo",
                               "simpo_gamma": 0.3, "pref_ftx": 0.1, "stage": "kto"})
    assert job.rope_scaling == "yarn" and job.loraplus_lr_ratio == 16.0
