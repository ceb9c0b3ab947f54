"""What `ftstudio eval X.yaml` means: an LLaMA-Factory predict YAML loads unchanged; a training job means
"evaluate that run" (its adapter, base, template; a new evaluation run folder beside it); user mistakes are
one clear line, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from app.config import ConfigError, EvalConfig, JobConfig, JudgeConfig
from app.eval.jobfile import is_training_job, load_eval_config

REPO = Path(__file__).resolve().parents[1]

LF_PREDICT = """\
### model
model_name_or_path: Qwen/Qwen2.5-0.5B-Instruct
adapter_name_or_path: saves/qwen/lora/sft
trust_remote_code: true
### method
stage: sft
do_predict: true
finetuning_type: lora
### dataset
eval_dataset: identity,alpaca_en_demo
template: qwen
cutoff_len: 2048
max_samples: 50
overwrite_cache: true
preprocessing_num_workers: 16
### output
output_dir: saves/qwen/lora/predict
overwrite_output_dir: true
report_to: none
### eval
per_device_eval_batch_size: 1
predict_with_generate: true
ddp_timeout: 180000000
"""


def test_a_llamafactory_predict_yaml_loads_unchanged(tmp_path):
    path = tmp_path / "predict.yaml"
    path.write_text(LF_PREDICT)
    notes: list[str] = []
    config = load_eval_config(str(path), {}, notes)
    assert (config.model_name_or_path, config.adapter_name_or_path) == ("Qwen/Qwen2.5-0.5B-Instruct",
                                                                         "saves/qwen/lora/sft")
    assert config.datasets == ["identity", "alpaca_en_demo"] and config.template == "qwen"
    assert (config.cutoff_len, config.max_samples, config.per_device_eval_batch_size) == (2048, 50, 1)
    assert config.output_dir == "saves/qwen/lora/predict"
    ignored = {note.split(":")[0] for note in notes}
    assert {"do_predict", "predict_with_generate", "stage", "finetuning_type", "report_to"} <= ignored
    flagged = load_eval_config(str(path), {"max_samples": "5", "temperature": "0.7"})
    assert flagged.max_samples == 5 and flagged.temperature == 0.7  # flags override the YAML


def trained_run(root: Path, **job_keys) -> Path:
    """A run folder as training leaves it (job.yaml + adapter/), without the training."""
    run = root / "runs" / "lumi"
    (run / "adapter").mkdir(parents=True)
    job = JobConfig(output_dir=str(run), template="chatml", cutoff_len=256, seed=7, **job_keys)
    job.save(run / "job.yaml")
    return run


def test_a_training_job_means_evaluate_that_run(tmp_path):
    run = trained_run(tmp_path, val_size=0.1)
    data = yaml.safe_load((run / "job.yaml").read_text())
    assert is_training_job(data) and not is_training_job(yaml.safe_load(LF_PREDICT))
    notes: list[str] = []
    config = load_eval_config(str(run / "job.yaml"), {}, notes)
    assert Path(config.adapter_name_or_path) == run.resolve()
    assert (config.model_name_or_path, config.template, config.cutoff_len, config.seed) == (None, "chatml", 256, 7)
    assert Path(config.validation_run) == run.resolve() and config.eval_dataset is None  # its held-out split
    out = Path(config.output_dir)
    assert out.parent == run.parent.resolve() and out.name.startswith("eval-lumi-") and out != run
    assert any("evaluating training run" in n for n in notes)
    chosen = load_eval_config(str(run / "job.yaml"), {"eval_dataset": "identity_eval"})
    assert chosen.datasets == ["identity_eval"] and chosen.validation_run is None


def test_a_training_job_with_an_eval_dataset_or_none_at_all(tmp_path):
    run = trained_run(tmp_path, eval_dataset="identity_eval")
    assert load_eval_config(str(run / "job.yaml"), {}).datasets == ["identity_eval"]
    plain = trained_run(tmp_path / "plain")
    notes: list[str] = []
    assert load_eval_config(str(plain / "job.yaml"), {}, notes).datasets == [EvalConfig().eval_dataset]
    assert any("no validation split" in n for n in notes)


def test_an_untrained_job_is_a_clear_error(tmp_path):
    job = tmp_path / "job.yaml"
    JobConfig(output_dir=str(tmp_path / "runs" / "never")).save(job)
    with pytest.raises(ConfigError) as err:
        load_eval_config(str(job), {})
    assert err.value.problems[0].startswith("adapter_name_or_path:") and "train it first" in err.value.problems[0]


def test_labels_and_default_run_names():
    assert EvalConfig().model_label() == "base"
    assert EvalConfig(adapter_name_or_path="runs/lumi").model_label() == "lumi"
    assert EvalConfig(adapter_name_or_path="runs/lumi/adapter").model_label() == "lumi"
    assert EvalConfig(adapter_name_or_path="runs/lumi/checkpoints/checkpoint-40").model_label() == "lumi@40"
    assert EvalConfig(model_name_or_path="exports/lumi-gguf/lumi-q8_0.gguf").model_label() == "lumi-q8_0.gguf"
    assert Path(EvalConfig(adapter_name_or_path="runs/lumi").with_run_folder("/r").output_dir).name.startswith(
        "eval-lumi-")
    with pytest.raises(ConfigError):
        EvalConfig.from_dict({"eval_dataset": None})


def test_judge_config_names_what_is_missing():
    with pytest.raises(ConfigError) as err:
        JudgeConfig.from_dict({"judge_api_key_env": "not a name"})
    fields = {p.split(":")[0] for p in err.value.problems}
    assert fields == {"predictions", "baseline", "judge_api_key_env"}


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})


def test_cli_mistakes_are_one_line_without_traceback(tmp_path):
    job = tmp_path / "job.yaml"
    JobConfig(output_dir=str(tmp_path / "never")).save(job)
    done = run_cli("eval", str(job), cwd=tmp_path)
    assert done.returncode == 2 and "adapter_name_or_path" in done.stderr and "Traceback" not in done.stderr
    done = run_cli("eval", "--eval_dataset", "nosuch", "--dataset_dir", str(REPO), "--output_dir",
                   str(tmp_path / "e"), cwd=tmp_path)
    assert done.returncode == 1 and "nosuch" in done.stderr and "Traceback" not in done.stderr
    assert (tmp_path / "e" / "state.json").is_file()  # the failed run is listed, with its reason
    done = run_cli("judge", "--predictions", str(tmp_path / "missing"), "--baseline", str(tmp_path), cwd=tmp_path)
    assert done.returncode == 1 and "generated_predictions.jsonl" in done.stderr and "Traceback" not in done.stderr


def test_the_readme_has_a_reference_table_for_each_schema():
    import importlib.util

    spec = importlib.util.spec_from_file_location("config_reference", REPO / "scripts" / "config_reference.py")
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    SECTIONS, markers = reference.SECTIONS, reference.markers
    text = (REPO / "README.md").read_text(encoding="utf-8")
    for section, (schema, _) in SECTIONS.items():
        start, end = markers(section)
        block = text.split(start, 1)[1].split(end, 1)[0]
        assert all(f"| `{key}` |" in block for key in schema.spec()), section


def test_the_forms_name_the_model_and_the_export_tab_pairs_gguf_with_merged(tmp_path):
    from app.ui.eval_export import eval_pair
    from app.ui.eval_view import build_config, model_keys

    runs = tmp_path / "runs"
    assert model_keys("base", None, runs, None, None, None) == {"model_name_or_path": None,
                                                                "adapter_name_or_path": None}
    assert model_keys("run", None, runs, "lumi", "checkpoint-40", None)["adapter_name_or_path"] == str(
        runs / "lumi" / "checkpoints" / "checkpoint-40")
    assert model_keys("path", None, runs, None, None, "x/lumi-q8_0.gguf")["model_name_or_path"] == "x/lumi-q8_0.gguf"
    with pytest.raises(ValueError, match="adapter_name_or_path"):
        model_keys("run", None, runs, None, None, None)
    config = build_config(model_keys("base", None, runs, None, None, None), ["identity_eval"],
                          {"max_samples": 6.0, "temperature": 0.0}, REPO, runs, "my-eval")
    assert config.max_samples == 6 and config.output_dir == str((runs / "my-eval").resolve())
    held = build_config({"adapter_name_or_path": str(runs / "lumi"), "validation_run": str(runs / "lumi")}, [], {},
                        REPO, runs, "")
    assert held.validation_run and held.eval_dataset is None
    report = {"name": "lumi", "quant": "q8_0", "merged_dir": "/x/merged", "gguf": {"path": "/x/lumi-q8_0.gguf"}}
    merged, gguf = eval_pair(report, ["identity_eval"], 6, runs, REPO)
    assert (merged.model_name_or_path, gguf.model_name_or_path) == ("/x/merged", "/x/lumi-q8_0.gguf")
    assert merged.datasets == gguf.datasets == ["identity_eval"] and merged.max_samples == gguf.max_samples == 6
    with pytest.raises(ValueError):
        eval_pair({"name": "lumi", "format": "safetensors", "merged_dir": "/x"}, [], None, runs, REPO)


def test_every_string_of_the_evaluate_views_has_chinese():
    from app.ui import eval_export
    from app.ui.tabs import evaluate

    for table in (evaluate.STRINGS, eval_export.STRINGS):
        for key, entry in table.items():
            assert entry.get("en") and entry.get("zh"), key
            assert entry["zh"] != entry["en"] or key == "eval.top_p", key
