"""Chinese mode is complete in the Train, Model, Dataset and Evaluate tabs: run states, the run table's and the
memory table's headers, the status line, the model and hardware tables, validation and reliability messages
(which keep every name and number of the English original), and the Evaluate tab's compare tables, checkpoint
choices and status line."""

from __future__ import annotations

import errno
import json
from pathlib import Path

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
    ("early_stopping_steps: stage grpo has no eval loss to watch (it scores its generations with rewards): "
     "remove early_stopping_steps",
     "early_stopping_steps：grpo 阶段没有可监测的评估损失（它用奖励为生成结果打分）：请移除 early_stopping_steps"),
    ("load_best_model_at_end: needs an eval loss: set val_size or eval_dataset",
     "load_best_model_at_end：需要评估损失：请设置 val_size 或 eval_dataset"),
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


def test_memory_table_names_the_reference_model_in_chinese():
    class Estimate:
        def rows(self):
            return [("weights", 500.0), ("reference model", 500.0), ("total", 1000.0)]

    assert plots.memory_frame(Estimate(), zh).iloc[:, 0].tolist() == ["权重", "参考模型", "总计"]


def _reliability_messages(tmp_path: Path) -> list[tuple[str, str]]:
    """(message as the backend writes it, the Chinese the Train tab shows)."""
    from app.train.lifecycle import describe_failure
    from app.train.runfolder import RunFolder
    from app.user_errors import report_user_error

    broken = RunFolder(tmp_path / "broken")
    broken.path.mkdir()
    broken.state_file.write_text("{half", encoding="utf-8")
    state_error = broken.read_state()["error"]
    full = describe_failure(OSError(errno.ENOSPC, "No space left on device"))
    return [
        ("the worker process ended without reporting (killed or out of memory?)",
         "训练进程未报告结果就已结束（被终止，或内存不足？）"),
        ("stopped by force (still saving when the stop ceiling ran out, 630 s after the stop request)",
         "已强制停止（到达停止上限时仍在保存，距停止请求 630 秒）"),
        ("stopped by force (it did not end within the grace period, 31 s after the stop request)",
         "已强制停止（宽限期内未能结束，距停止请求 31 秒）"),
        (full, "磁盘空间不足，无法写入（磁盘已满或文件过大）：OSError: [Errno 28] No space left on device。"
               "请释放空间后点击“继续训练”：最新的完整检查点已保留。"),
        (report_user_error(OSError(errno.ENOSPC, "No space left on device")),
         "磁盘空间不足，无法写入（磁盘已满或文件过大）：[Errno 28] No space left on device"),
        (report_user_error(FileNotFoundError(errno.ENOENT, "No such file or directory", "/data/x.json")),
         "文件或目录不存在：/data/x.json"),
        (report_user_error(PermissionError(errno.EACCES, "Permission denied", "/runs/a")), "没有权限：/runs/a"),
        (state_error, f"{broken.state_file}：不是有效的 JSON（Expecting property name enclosed in double quotes，"
                      "第 1 行，第 2 列）"),
        ("dataset_info.json, field 'identity': dataset 'identity' is an sft dataset: it cannot be used for dpo",
         "dataset_info.json，字段 “identity”：数据集 “identity” 是 sft 数据集：不能用于 dpo"),
        ("dataset_info.json, field 'kto_demo': dataset 'kto_demo' holds answers tagged good or bad (kto_tag): "
         "use it for kto, not sft",
         "dataset_info.json，字段 “kto_demo”：数据集 “kto_demo” 的回答标注了好/坏（kto_tag）：请用于 kto，而不是 sft"),
        ("dataset_info.json, field 'identity': dataset 'identity' has no kto_tag column (answers tagged "
         "true/false): it cannot be used for kto",
         "dataset_info.json，字段 “identity”：数据集 “identity” 没有 kto_tag 列（标注 true/false 的回答）："
         "不能用于 kto"),
    ]


def test_reliability_messages_in_chinese(tmp_path):
    for english, chinese in _reliability_messages(tmp_path):
        assert translate_problem(english, "zh") == chinese, english
        assert translate_problem(english, "en") == english


def test_a_forced_stop_says_why_in_the_status_line():
    view = plots.LiveView(run="lumi")
    error = "stopped by force (it did not end within the grace period, 31 s after the stop request)"
    line = plots.status_line(view, {"state": "stopped", "error": error}, zh, "zh")
    assert "已停止" in line and "宽限期内未能结束" in line and "grace" not in line


def _eval_run(root: Path, name: str, answers: list[str]) -> Path:
    from app.eval.results import PREDICTIONS, RESULTS

    folder = root / name
    folder.mkdir(parents=True)
    (folder / RESULTS).write_text(json.dumps({"model_label": name, "eval_dataset": "identity_heldout",
                                              "predict_samples": 2, "predict_rouge-l": 50.0, "eval_loss": 1.2,
                                              "perplexity": 3.3, "predict_samples_per_second": 1.5}))
    (folder / PREDICTIONS).write_text("".join(json.dumps({"prompt": f"q{i}", "predict": a, "label": f"a{i}"}) + "\n"
                                              for i, a in enumerate(answers)))
    return folder


def test_evaluate_tables_choices_and_status_in_chinese(tmp_path):
    from app.eval import compare
    from app.train.runfolder import RunFolder
    from app.ui import eval_view

    T.add(eval_view.STRINGS)
    runs = [compare.load_run(_eval_run(tmp_path, name, answers))
            for name, answers in (("tuned", ["a0", "a1"]), ("base", ["x", "a1"]))]
    metrics = eval_view.localised(compare.metrics_frame(runs), zh)
    assert list(metrics.columns) == ["运行", "模型", "数据", "行数", "ROUGE-L", "评估损失", "困惑度", "样本/秒"]
    predictions = compare.ranked(compare.predictions_frame(runs), ["tuned", "base"])
    assert list(eval_view.localised(predictions, zh).columns) == [
        "序号", "问题", "参考答案", "tuned", "tuned ROUGE-L", "base", "base ROUGE-L", "提升"]
    english_titles = eval_view.localised(predictions, lambda key, **values: T.t(key, "en", **values)).columns
    assert list(english_titles) == list(predictions.columns)  # the titles compare writes (and the CSV keeps)
    assert "评估损失 **1.20**" in eval_view.results_line(runs[0].results, zh)

    run = RunFolder(tmp_path / "eval-tuned")
    run.path.mkdir()
    assert eval_view.checkpoint_choices(run, zh) == [("最终适配器", eval_view.FINAL)]
    run.write_state(state="running")
    run.events.append("stage", name="generating", message="generating answers for 2 rows, batch 2")
    run.events.append("progress", phase="generate", done=1, total=2, samples_per_s=0.5, eta_s=2)
    line = eval_view.status_line(run, zh, "zh")
    for words in ("运行中", "正在生成回答", "生成 1/2", "0.50 样本/秒", "预计剩余 2 秒"):
        assert words in line, (words, line)
    run.write_state(state="failed", error="the worker process ended without reporting (killed or out of memory?)")
    line = eval_view.status_line(run, zh, "zh")
    assert "失败" in line and "错误：训练进程未报告结果就已结束" in line and "worker" not in line
    english = eval_view.status_line(run)
    assert "**failed**" in english and "error: the worker process ended" in english
