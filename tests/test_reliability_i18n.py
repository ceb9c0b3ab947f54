"""Chinese mode is complete in the Train, Model and Dataset tabs: run states, the run table's and the
memory table's headers, the status line, the model and hardware tables, and validation messages (which
keep every name and number of the English original)."""

from __future__ import annotations

import pytest

from app.jobs.summaries import RunSummary
from app.ui import plots
from app.ui.i18n import Translator
from app.ui.i18n_train import RUN_STRINGS, translate_problem

T = Translator()


def zh(key: str, **values) -> str:
    return T.t(key, "zh", **values)


def test_every_run_string_has_both_languages():
    for key, entry in RUN_STRINGS.items():
        if key.startswith("stage.zh."):
            continue
        assert entry.get("en") and entry.get("zh"), key


def test_status_line_and_run_table_in_chinese():
    view = plots.LiveView(run="lumi")
    view.feed([{"kind": "stage", "name": "model_ready", "trainable_params": 1000, "total_params": 100000,
                "device": "cpu", "message": "lora: 1,000 of 100,000 parameters trainable (1.00%) on cpu"},
               {"kind": "log", "step": 3, "total_steps": 10, "loss": 1.5, "lr": 1e-4, "tokens_per_s": 120.0,
                "eta_s": 65, "mem_mb": 2048}], 100)
    line = plots.status_line(view, {"state": "running"}, zh, "zh")
    for word in ("运行中", "模型已就绪", "第 3/10 步", "损失 1.5000", "120 词元/秒", "预计剩余 1:05", "内存 2.00 GiB"):
        assert word in line, (word, line)
    assert "step" not in line and "loss" not in line and "trainable" not in line
    saving = plots.status_line(view, {"state": "running", "saving": {"what": "checkpoint-3"}}, zh, "zh")
    assert "正在保存 checkpoint-3" in saving
    failed = plots.status_line(view, {"state": "failed", "error": "val_size: 0.5 needs at least 2 rows to split, "
                                                                 "the datasets have 1"}, zh, "zh")
    assert "失败" in failed and "错误：val_size：划分验证集至少需要 2 行数据，当前只有 1 行" in failed
    frame = plots.runs_frame([RunSummary("lumi", "/x", "stopped", "sft", "lora", "identity", None, 3, 10, 1.5, None)],
                             zh)
    assert list(frame.columns) == ["名称", "状态", "阶段", "方法", "数据集", "步数", "损失", "最佳检查点"]
    assert frame.iloc[0]["状态"] == "已停止"


def test_memory_table_in_chinese():
    class Estimate:
        def rows(self):
            return [("weights", 500.0), ("activations", 100.0), ("runtime overhead", 50.0), ("total", 650.0)]

    frame = plots.memory_frame(Estimate(), zh)
    assert list(frame.columns) == ["组成部分", "MB"]
    assert frame.iloc[:, 0].tolist() == ["权重", "激活值", "运行时开销", "总计"]


@pytest.mark.parametrize("english, chinese", [
    ("learning_rate: must be > 0, got 0", "learning_rate：必须 > 0，当前为 0"),
    ("stage: must be one of sft, dpo, pt, got 'x'", "stage：必须是 sft, dpo, pt 之一，当前为 'x'"),
    ("lora_rank: must be a whole number, got 'a'", "lora_rank：必须是整数，当前为 'a'"),
    ("learning_rat: unknown key (did you mean learning_rate?)", "learning_rat：未知的配置项 (是否想用 learning_rate?)"),
    ("dataset: data/x.json, row 3, field 'output': missing", "dataset：data/x.json，第 3 行，字段 “output”：missing"),
    ("job.yaml: not valid YAML: mapping values are not allowed here at line 2, column 9",
     "job.yaml：YAML 格式错误：mapping values are not allowed here（第 2 行，第 9 列）"),
    ("template: unknown template 'x' (built-ins: chatml, qwen; or a path to a .jinja file)",
     "template：未知的对话模板 “x”（内置：chatml, qwen；或 .jinja 文件路径）"),
    ("output_dir: '../x' must be a plain run name, without '/', '\\' or '..': runs are folders directly inside "
     "the runs folder /srv/runs",
     "output_dir：“../x” 必须是简单的运行名称，不能包含 “/”、“\\” 或 “..”：运行目录必须直接位于 /srv/runs 中"),
])
def test_validation_messages_in_chinese(english, chinese):
    assert translate_problem(english, "zh") == chinese
    assert translate_problem(english, "en") == english


def test_model_and_hardware_tables_in_chinese():
    from app.models.hardware import Hardware
    from app.ui.tabs.model import hardware_markdown

    hw = Hardware(gpus=[], cpu_name="x86_64", cpu_cores=2, ram_total_mb=8192, ram_available_mb=4096, nvml_error=None)
    text = hardware_markdown(hw, zh)
    for word in ("仅 CPU", "已用内存", "CPU 占用", "2 核"):
        assert word in text
    assert "RAM used" not in text
