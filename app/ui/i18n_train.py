"""What the Train, Model and Dataset tabs say about runs and checks, in English and Chinese: run states,
table headers, the status line, memory-table parts, and the validation messages the backend writes.

The backend (config, data, preflight) writes its messages in English, naming keys, files, rows and
fields. In Chinese mode `translate_problem` turns the common shapes into Chinese, keeping every name
and number; a message of an unknown shape stays as it is rather than being guessed at.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from app.ui.i18n_messages import MESSAGE_PATTERNS

RUN_STRINGS: dict[str, dict[str, str]] = {
    # run states
    "state.queued": {"en": "queued", "zh": "排队中"},
    "state.running": {"en": "running", "zh": "运行中"},
    "state.finished": {"en": "finished", "zh": "已完成"},
    "state.failed": {"en": "failed", "zh": "失败"},
    "state.stopped": {"en": "stopped", "zh": "已停止"},
    "state.new": {"en": "new", "zh": "未开始"},
    "state.unreadable": {"en": "unreadable", "zh": "状态文件无法读取"},
    "state.missing": {"en": "missing", "zh": "不存在"},
    "state.?": {"en": "?", "zh": "未知"},
    # run table
    "col.name": {"en": "name", "zh": "名称"},
    "col.state": {"en": "state", "zh": "状态"},
    "col.stage": {"en": "stage", "zh": "阶段"},
    "col.method": {"en": "method", "zh": "方法"},
    "col.dataset": {"en": "dataset", "zh": "数据集"},
    "col.step": {"en": "step", "zh": "步数"},
    "col.loss": {"en": "loss", "zh": "损失"},
    "col.best": {"en": "best", "zh": "最佳检查点"},
    # memory table
    "col.part": {"en": "part", "zh": "组成部分"},
    "col.mb": {"en": "MB", "zh": "MB"},
    "mem.weights": {"en": "weights", "zh": "权重"},
    "mem.reference model": {"en": "reference model", "zh": "参考模型"},
    "mem.gradients": {"en": "gradients", "zh": "梯度"},
    "mem.optimizer": {"en": "optimizer", "zh": "优化器状态"},
    "mem.activations": {"en": "activations", "zh": "激活值"},
    "mem.freed in backward": {"en": "freed in backward", "zh": "反向传播中释放"},
    "mem.dequantization buffers": {"en": "dequantization buffers", "zh": "反量化缓冲区"},
    "mem.packed weights (oneDNN)": {"en": "packed weights (oneDNN)", "zh": "预打包权重（oneDNN）"},
    "mem.runtime overhead": {"en": "runtime overhead", "zh": "运行时开销"},
    "mem.offloaded to CPU RAM (not in total)": {"en": "offloaded to CPU RAM (not in total)",
                                                "zh": "卸载到 CPU 内存（不计入总计）"},
    "mem.total": {"en": "total", "zh": "总计"},
    # dataset catalogue table
    "col.format": {"en": "format", "zh": "格式"},
    "col.rows": {"en": "rows", "zh": "行数"},
    "col.file": {"en": "file", "zh": "文件"},
    "col.check": {"en": "check", "zh": "检查"},
    "check.ok": {"en": "ok", "zh": "正常"},
    "check.problems": {"en": "{count} problem(s): {first}", "zh": "{count} 个问题：{first}"},
    # status line
    "status.step": {"en": "step {step}", "zh": "第 {step} 步"},
    "status.step_of": {"en": "step {step}/{total}", "zh": "第 {step}/{total} 步"},
    "status.loss": {"en": "loss {loss:.4f}", "zh": "损失 {loss:.4f}"},
    "status.speed": {"en": "{speed:,.0f} tok/s", "zh": "{speed:,.0f} 词元/秒"},
    "status.eta": {"en": "ETA {eta}", "zh": "预计剩余 {eta}"},
    "status.mem": {"en": "mem {gib:.2f} GiB", "zh": "内存 {gib:.2f} GiB"},
    "status.error": {"en": "error: {error}", "zh": "错误：{error}"},
    "status.saving_now": {"en": "saving {what}", "zh": "正在保存 {what}"},
    "stage.validating": {"en": "checking datasets", "zh": "正在检查数据集"},
    "stage.launching": {"en": "launching processes", "zh": "正在启动多个训练进程"},
    "stage.loading_model": {"en": "loading the model", "zh": "正在加载模型"},
    "stage.tokenizing": {"en": "tokenizing", "zh": "正在分词"},
    "stage.model_ready": {"en": "model ready", "zh": "模型已就绪"},
    "stage.training": {"en": "training", "zh": "训练中"},
    "stage.saving": {"en": "saving", "zh": "正在保存"},
    "stage.zh.tokenizing_rows": {"en": "", "zh": "已分词 {rows:,} 行"},
    "stage.zh.model_ready": {"en": "", "zh": "可训练参数 {trainable:,} / {total:,}（{pct:.2f}%），设备 {device}"},
    # Model tab: the model and hardware tables
    "info.folder": {"en": "Folder", "zh": "目录"},
    "info.architecture": {"en": "Architecture", "zh": "架构"},
    "info.parameters": {"en": "Parameters", "zh": "参数量"},
    "info.shape": {"en": "Layers / hidden / heads", "zh": "层数 / 隐藏维度 / 注意力头"},
    "info.context": {"en": "Context length", "zh": "上下文长度"},
    "info.tokens": {"en": "tokens", "zh": "词元"},
    "info.vocab": {"en": "Vocabulary", "zh": "词表大小"},
    "info.dtype": {"en": "Stored as", "zh": "存储精度"},
    "info.targets": {"en": "LoRA targets on offer", "zh": "可用的 LoRA 目标模块"},
    "info.trainable": {"en": "Trainable ({method})", "zh": "可训练参数（{method}）"},
    "info.no_template": {"en": "(no chat template)", "zh": "（没有对话模板）"},
    "msg.model_unreadable": {"en": "⚠ Could not read model '{name}': {error}",
                             "zh": "⚠ 无法读取模型 “{name}”：{error}"},
    "hw.gpu": {"en": "GPU", "zh": "GPU"},
    "hw.gpu_used": {"en": "memory used", "zh": "已用显存"},
    "hw.utilisation": {"en": "utilisation", "zh": "利用率"},
    "hw.cpu_only": {"en": "CPU only", "zh": "仅 CPU"},
    "hw.cpu": {"en": "CPU", "zh": "CPU"},
    "hw.ram_used": {"en": "RAM used", "zh": "已用内存"},
    "hw.cpu_busy": {"en": "CPU busy", "zh": "CPU 占用"},
    "hw.load": {"en": "load (1, 5, 15 min)", "zh": "负载（1、5、15 分钟）"},
    "hw.cores": {"en": "{n} cores", "zh": "{n} 核"},
    # messages of the Train tab
    "msg.no_such_run": {"en": "There is no run named {name}.", "zh": "没有名为 {name} 的运行。"},
    "msg.not_resumable": {"en": "{name} is {state}: only a stopped or failed run can be resumed.",
                          "zh": "{name} 当前为“{state}”：只有已停止或失败的运行可以继续。"},
    "msg.run_exists": {"en": "output_dir: run {name} exists; choose another name, or select it below and Resume",
                       "zh": "output_dir：运行 {name} 已存在；请换一个名称，或在下方选中它后点击“继续训练”"},
    "msg.upload_too_large": {"en": "✗ {file} is {size:,.1f} MB, more than the {limit:,.0f} MB upload limit "
                                   "(FTSTUDIO_MAX_UPLOAD_MB, or ftstudio webui --max-upload-mb).",
                             "zh": "✗ {file} 大小为 {size:,.1f} MB，超过上传上限 {limit:,.0f} MB"
                                   "（可用 FTSTUDIO_MAX_UPLOAD_MB 或 ftstudio webui --max-upload-mb 调整）。"},
}

# English message shapes (from app.config, app.data, app.train.preflight, app.jobs) -> Chinese.
# Each pattern keeps the names and numbers it captures.
PROBLEM_PATTERNS: list[tuple[re.Pattern[str], str]] = [(re.compile(p), zh) for p, zh in [
    (r"^(?P<key>[\w.]+): must be one of (?P<choices>.+), got (?P<got>.+)$",
     "{key}：必须是 {choices} 之一，当前为 {got}"),
    (r"^(?P<key>[\w.]+): must be (?P<op>[<>]=?) (?P<bound>\S+), got (?P<got>.+)$",
     "{key}：必须 {op} {bound}，当前为 {got}"),
    (r"^(?P<key>[\w.]+): must be a whole number, got (?P<got>.+)$", "{key}：必须是整数，当前为 {got}"),
    (r"^(?P<key>[\w.]+): must be a number, got (?P<got>.+)$", "{key}：必须是数字，当前为 {got}"),
    (r"^(?P<key>[\w.]+): must be true or false, got (?P<got>.+)$",
     "{key}：必须是 true 或 false，当前为 {got}"),
    (r"^(?P<key>[\w.]+): must not be empty$", "{key}：不能为空"),
    (r"^(?P<key>[\w.]+): unknown key(?P<rest>.*)$", "{key}：未知的配置项{rest}"),
    (r"^(?P<key>[\w.]+): known LLaMA-Factory key, not supported yet \((?P<why>.+)\)$",
     "{key}：LLaMA-Factory 的配置项，暂不支持（{why}）"),
    (r"^dataset: pick at least one catalogue dataset$", "dataset：请至少选择一个数据集"),
    (r"^dataset: (?P<rest>.+)$", "dataset：{rest}"),
    (r"^(?P<where>.+), field '(?P<name>[^']+)': unknown dataset '(?P<ds>[^']+)' \(known datasets: (?P<known>.*)\)$",
     "{where}：未知的数据集 “{ds}”（已有数据集：{known}）"),
    (r"^(?P<where>.+?): missing column '(?P<col>[^']+)' \(the file has: (?P<has>.*)\)$",
     "{where}：缺少列 “{col}”（文件中的列：{has}）"),
    (r"^(?P<where>.+?), row (?P<row>\d+), field '(?P<field>[^']+)': (?P<msg>.+)$",
     "{where}，第 {row} 行，字段 “{field}”：{msg}"),
    (r"^(?P<where>.+?), row (?P<row>\d+): (?P<msg>.+)$", "{where}，第 {row} 行：{msg}"),
    (r"^val_size: (?P<n>\d+) eval rows leave no training rows out of (?P<rows>\d+).*$",
     "val_size：{n} 行验证数据会让 {rows} 行中没有训练数据（请用小于 {rows} 的行数，或 0.1 这样的比例）"),
    (r"^val_size: (?P<v>\S+) needs at least 2 rows to split, the datasets have (?P<rows>\d+)$",
     "val_size：划分验证集至少需要 2 行数据，当前只有 {rows} 行"),
    (r"^model_name_or_path: '(?P<m>.+)' is neither an existing folder nor a Hugging Face id.*$",
     "model_name_or_path：“{m}” 既不是已有的目录，也不是 Hugging Face 模型 ID（组织/名称）；留空即使用内置模型"),
    (r"^model_name_or_path: (?P<m>.+) has no config\.json.*$",
     "model_name_or_path：{m} 中没有 config.json，不是 transformers 模型目录"),
    (r"^template: unknown template '(?P<t>[^']+)' \(built-ins: (?P<b>[^;]+);.*$",
     "template：未知的对话模板 “{t}”（内置：{b}；或 .jinja 文件路径）"),
    (r"^template: file (?P<f>.+) not found$", "template：找不到模板文件 {f}"),
    (r"^output_dir: '(?P<n>.*)' must be a plain run name.* runs folder (?P<w>\S+)$",
     "output_dir：“{n}” 必须是简单的运行名称，不能包含 “/”、“\\” 或 “..”：运行目录必须直接位于 {w} 中"),
    (r"^output_dir: '(?P<n>.*)' is not a usable run name.*$",
     "output_dir：“{n}” 不能用作运行名称：请使用字母、数字、“_”、“-”、“.”"),
    (r"^output_dir: run (?P<n>\S+) exists.*$",
     "output_dir：运行 {n} 已存在；请换一个名称，或在下方选中它后点击“继续训练”"),
    (r"^(?P<src>.+): not valid YAML: (?P<what>.+) at line (?P<l>\d+), column (?P<c>\d+)$",
     "{src}：YAML 格式错误：{what}（第 {l} 行，第 {c} 列）"),
]] + MESSAGE_PATTERNS  # reliability and dataset-fitness messages (app.ui.i18n_messages)


def translate_problem(text: str, lang: str) -> str:
    """A backend message in `lang` (Chinese for the shapes above; anything else unchanged)."""
    if lang != "zh":
        return text
    text = str(text)
    for pattern, zh in PROBLEM_PATTERNS:
        match = pattern.match(text)
        if match:
            values = {k: (translate_problem(v, lang) if k in ("rest", "msg") and v.strip() else v)
                      for k, v in match.groupdict().items()}
            if "rest" in values and zh.startswith("{key}：未知的配置项"):
                values["rest"] = match.group("rest").replace("did you mean", "是否想用")
            return zh.format(**values)
    return text


def state_label(state: str | None, t: Callable[..., str]) -> str:
    return t(f"state.{state or '?'}") if state else t("state.?")


def stage_text(stage: dict[str, Any], lang: str, t: Callable[..., str]) -> str:
    """The newest stage event, for the status line: the worker's own (English) message, or in Chinese a
    sentence built from the event's fields."""
    name = str(stage.get("name", ""))
    if lang != "zh":
        return str(stage.get("message") or name)
    if name == "model_ready" and stage.get("total_params"):
        total = int(stage["total_params"])
        trainable = int(stage.get("trainable_params") or 0)
        return t("stage.model_ready") + "：" + t("stage.zh.model_ready", trainable=trainable, total=total,
                                                   pct=100 * trainable / max(total, 1),
                                                   device=stage.get("device", "?"))
    if name == "tokenizing" and stage.get("rows"):
        return t("stage.zh.tokenizing_rows", rows=int(stage["rows"]))
    key = f"stage.{name}"
    translated = t(key)
    return translated if translated != key else str(stage.get("message") or name)
