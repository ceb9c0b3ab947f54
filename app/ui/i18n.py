"""English and Chinese strings of the studio, LLaMA-Factory style: {key: {"en": ..., "zh": ...}}.

A key names a label; `<key>.info` (optional) is the help line under it. JobConfig fields and groups
are added from `app.ui.i18n_fields` (English help from the schema's metadata). Tabs built elsewhere
(chat, export) add their own tables with `Translator.add`. No gradio here: plain lookups.
"""

from __future__ import annotations

from app.ui.i18n_fields import field_strings
from app.ui.i18n_train import RUN_STRINGS

LANGUAGES = {"en": "English", "zh": "中文"}

STRINGS: dict[str, dict[str, str]] = {
    # header
    "app.title": {"en": "# Finetune Studio", "zh": "# Finetune Studio 微调工作室"},
    "app.lang": {"en": "Language", "zh": "语言"},
    "tab.model": {"en": "Model", "zh": "模型"},
    "tab.dataset": {"en": "Dataset", "zh": "数据集"},
    "tab.train": {"en": "Train", "zh": "训练"},
    "tab.chat": {"en": "Chat", "zh": "对话"},
    "tab.export": {"en": "Export", "zh": "导出"},
    # model tab
    "model.source": {"en": "Model source", "zh": "模型来源"},
    "model.source.info": {"en": "The embedded SmolLM2-135M-Instruct works offline.",
                          "zh": "内置的 SmolLM2-135M-Instruct 可离线使用。"},
    "model.source.embedded": {"en": "Embedded default", "zh": "内置默认模型"},
    "model.source.folder": {"en": "Local folder", "zh": "本地目录"},
    "model.source.hub": {"en": "Hugging Face id", "zh": "Hugging Face 模型 ID"},
    "model.path": {"en": "Folder or hub id", "zh": "目录或模型 ID"},
    "model.path.info": {"en": "e.g. /models/Qwen2.5-0.5B-Instruct or Qwen/Qwen2.5-0.5B-Instruct",
                        "zh": "例如 /models/Qwen2.5-0.5B-Instruct 或 Qwen/Qwen2.5-0.5B-Instruct"},
    "model.load": {"en": "Load info", "zh": "读取模型信息"},
    "model.info": {"en": "Model", "zh": "模型信息"},
    "model.template": {"en": "Chat template", "zh": "对话模板"},
    "model.settings": {"en": "Loading and template", "zh": "加载与模板"},
    "model.hardware": {"en": "Hardware", "zh": "硬件"},
    "msg.need_path": {"en": "⚠ Enter a local folder or a Hugging Face id (org/name) first.",
                      "zh": "⚠ 请先输入本地目录或 Hugging Face 模型 ID（组织/名称）。"},
    "model.hint": {"en": "Press *Load info* to read the model's configuration.",
                   "zh": "点击“读取模型信息”查看模型配置。"},
    # dataset tab
    "data.catalogue": {"en": "Catalogue", "zh": "数据集目录"},
    "data.refresh": {"en": "Refresh", "zh": "刷新"},
    "data.preview": {"en": "Preview", "zh": "预览"},
    "data.preview_name": {"en": "Dataset to preview", "zh": "预览的数据集"},
    "data.prev": {"en": "◀ Previous", "zh": "◀ 上一页"},
    "data.next": {"en": "Next ▶", "zh": "下一页 ▶"},
    "data.page": {"en": "Page", "zh": "页"},
    "data.upload_title": {"en": "Add a dataset", "zh": "添加数据集"},
    "data.file": {"en": "Data file (.json, .jsonl, .csv, .parquet)", "zh": "数据文件（.json、.jsonl、.csv、.parquet）"},
    "data.name": {"en": "Dataset name", "zh": "数据集名称"},
    "data.name.info": {"en": "The name jobs use in `dataset`.", "zh": "训练任务中 `dataset` 使用的名称。"},
    "data.formatting": {"en": "Formatting", "zh": "数据格式"},
    "data.formatting.info": {"en": "alpaca: instruction/input/output columns; sharegpt and openai: a list of "
                                   "messages.",
                             "zh": "alpaca：指令/输入/输出列；sharegpt 与 openai：消息列表。"},
    "data.ranking": {"en": "Preference pairs (chosen / rejected) for DPO",
                     "zh": "偏好数据对（chosen / rejected），用于 DPO"},
    "data.columns": {"en": "Column mapping", "zh": "列映射"},
    "data.validate": {"en": "Validate", "zh": "校验"},
    "data.register": {"en": "Register", "zh": "注册数据集"},
    "data.result": {"en": "Validation result", "zh": "校验结果"},
    "data.col.prompt": {"en": "Instruction column (prompt)", "zh": "指令列 (prompt)"},
    "data.col.query": {"en": "Input column (query)", "zh": "输入列 (query)"},
    "data.col.response": {"en": "Output column (response)", "zh": "输出列 (response)"},
    "data.col.system": {"en": "System column (system)", "zh": "系统提示列 (system)"},
    "data.col.history": {"en": "History column (history)", "zh": "历史列 (history)"},
    "data.col.messages": {"en": "Messages column (messages)", "zh": "消息列 (messages)"},
    "data.col.chosen": {"en": "Chosen column (chosen)", "zh": "优选回答列 (chosen)"},
    "data.col.rejected": {"en": "Rejected column (rejected)", "zh": "劣选回答列 (rejected)"},
    "data.col.kto_tag": {"en": "Good/bad tag column, KTO (kto_tag)", "zh": "好/坏标记列，KTO (kto_tag)"},
    "data.col.text": {"en": "Text column (text)", "zh": "文本列 (text)"},
    "msg.no_file": {"en": "Upload a file first.", "zh": "请先上传文件。"},
    "msg.valid": {"en": "✓ {rows} rows are valid for {stage}.", "zh": "✓ {rows} 行数据可用于 {stage}。"},
    "msg.invalid": {"en": "✗ {count} problem(s):", "zh": "✗ 发现 {count} 个问题："},
    "msg.registered": {"en": "✓ Registered {name} ({rows} rows) in {catalogue}.",
                       "zh": "✓ 已将 {name}（{rows} 行）注册到 {catalogue}。"},
    # train tab
    "train.memory": {"en": "Memory estimate (MB)", "zh": "显存/内存估算 (MB)"},
    "train.preview": {"en": "Preview command", "zh": "预览命令"},
    "train.command": {"en": "Command line", "zh": "命令行"},
    "train.yaml": {"en": "Job YAML", "zh": "任务 YAML"},
    "train.save": {"en": "Save YAML", "zh": "保存 YAML"},
    "train.load": {"en": "Load YAML", "zh": "加载 YAML"},
    "train.yaml_file": {"en": "Job file", "zh": "任务文件"},
    "train.start": {"en": "Start", "zh": "开始训练"},
    "train.stop": {"en": "Stop", "zh": "停止"},
    "train.resume": {"en": "Resume", "zh": "继续训练"},
    "train.runs": {"en": "Runs", "zh": "训练记录"},
    "train.run": {"en": "Run", "zh": "当前运行"},
    "train.refresh": {"en": "Refresh", "zh": "刷新"},
    "train.status": {"en": "Status", "zh": "状态"},
    "train.loss": {"en": "Loss", "zh": "损失"},
    "train.lr": {"en": "Learning rate", "zh": "学习率"},
    "train.log": {"en": "Worker log (tail)", "zh": "训练日志（末尾）"},
    "train.compare": {"en": "Compare runs", "zh": "对比运行"},
    "train.compare.info": {"en": "Overlay the loss curves of several runs.", "zh": "叠加显示多个运行的损失曲线。"},
    "train.compare_plot": {"en": "Loss by run", "zh": "各运行的损失"},
    "train.output": {"en": "Output", "zh": "输出"},
    "msg.invalid_job": {"en": "The settings are not valid:", "zh": "设置无效："},
    "msg.started": {"en": "Started {name}.", "zh": "已开始 {name}。"},
    "msg.queued": {"en": "Queued {name} behind the running job.", "zh": "{name} 已排队，等待当前任务结束。"},
    "msg.stopping": {"en": "Stopping {name} (it saves a checkpoint first)…",
                     "zh": "正在停止 {name}（会先保存检查点）…"},
    "msg.resumed": {"en": "Resuming {name} from its newest checkpoint.", "zh": "从最新检查点继续 {name}。"},
    "msg.no_run": {"en": "Select a run first.", "zh": "请先选择一个运行。"},
    "msg.no_runs": {"en": "No runs yet: set up a job above and press Start.",
                    "zh": "还没有运行：在上方配置任务后点击“开始训练”。"},
    "msg.loaded_yaml": {"en": "Loaded {file}.", "zh": "已加载 {file}。"},
    "msg.over_budget": {"en": "⚠ About {need:,.0f} MB needed, more than the {have:,.0f} MB available on {device}.",
                        "zh": "⚠ 预计需要约 {need:,.0f} MB，超过 {device} 上可用的 {have:,.0f} MB。"},
    "msg.fits": {"en": "Fits: about {need:,.0f} MB of {have:,.0f} MB on {device}.",
                 "zh": "可以运行：约需 {need:,.0f} MB，{device} 上可用 {have:,.0f} MB。"},
    "msg.estimate_rows": {"en": "(From the dataset's real row lengths under this model's chat template.)",
                          "zh": "（按数据集在该模型对话模板下的真实行长度估算。）"},
    "msg.estimate_cutoff": {"en": "(Every row taken as cutoff_len tokens long; the worker re-estimates from the "
                                  "tokenized rows.)",
                            "zh": "（按每行 cutoff_len 个词元估算；训练进程会按分词后的真实长度重新估算。）"},
}


class Translator:
    """Looks strings up by key and language, falling back to English, then to the key itself."""

    def __init__(self, table: dict[str, dict[str, str]] | None = None):
        self.table: dict[str, dict[str, str]] = {**STRINGS, **RUN_STRINGS, **field_strings(), **(table or {})}

    def add(self, table: dict[str, dict[str, str]]) -> None:
        """Add (or override) strings, e.g. a tab's own table."""
        self.table.update(table)

    def has(self, key: str) -> bool:
        return key in self.table

    def t(self, key: str, lang: str = "en", **values: object) -> str:
        entry = self.table.get(key)
        text = key if entry is None else entry.get(lang) or entry.get("en") or key
        return text.format(**values) if values else text

    def info(self, key: str, lang: str = "en") -> str | None:
        """The help line of `key` (its `<key>.info` entry), or None."""
        return self.t(f"{key}.info", lang) if self.has(f"{key}.info") else None
