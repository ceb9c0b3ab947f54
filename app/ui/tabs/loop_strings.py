"""The Continuous fine-tuning panel's strings, English and Chinese (English help comes from app.config.loop)."""

from __future__ import annotations

from app.config.loop import LoopPolicy

_HELP = {name: f.metadata["help"] for name, f in LoopPolicy.spec().items()}

FIELDS: dict[str, tuple[str, str, str]] = {  # field: (English label, Chinese label, Chinese help)
    "model_name": ("Served model name", "服务的模型名",
                   "客户端请求时使用的模型名；提升与回滚会在不重启的情况下替换其背后的适配器。"),
    "adapter": ("Version 0", "版本 0",
                "收到反馈之前提供服务的适配器：一个训练运行或适配器目录；留空则为基座模型本身。"),
    "method": ("Method", "训练方法",
                "sft：用纠正和点赞的回答训练（feedback_sft）；dpo：用偏好对训练（feedback_pref）。"),
    "min_new_rows": ("New rows to train", "触发训练的新增行数",
                "自上次候选以来新增的反馈行数达到该值时开始训练下一个候选。"),
    "enabled": ("Check automatically", "自动检查",
                "开启后，带 --loop 启动的 API 服务会在新增反馈达到阈值时自动训练候选；关闭时仅“立即检查”生效。"),
    "replay_share": ("Replay share", "回放比例",
                "训练混合数据中来自原始数据的比例（0-0.95），防止模型遗忘（0 = 只用反馈）。"),
    "replay_dataset": ("Replay datasets", "回放数据集", "用于回放的数据集；留空则使用版本 0 所属运行的训练数据集。"),
    "eval_dataset": ("Held-out datasets", "留出评估集", "候选和当前版本都在这些留出数据集上评分。"),
    "metric": ("Promotion metric", "提升指标",
               "判断“更差”的指标：ROUGE/BLEU 越高越好，参考答案的 eval_loss / perplexity 越低越好。"),
    "tolerance": ("Tolerance", "容差",
                  "候选比当前版本差多少仍可提升（指标单位）；负数表示必须至少提升这么多。"),
    "check_interval_s": ("Seconds between checks", "检查间隔（秒）", "两次自动检查之间的秒数。"),
    "learning_rate": ("Learning rate", "学习率", "每个候选训练的峰值学习率。"),
    "num_train_epochs": ("Epochs", "训练轮数", "在混合数据上训练的轮数。"),
    "max_steps": ("Max steps", "最大步数", "训练到该步数即停止（-1 = 按轮数）。"),
    "per_device_train_batch_size": ("Batch size", "批大小", "每步的行数。"),
    "lora_rank": ("LoRA rank (new adapter)", "LoRA 秩（新适配器）", "新适配器的 LoRA 秩（已有适配器保持原值）。"),
    "pref_beta": ("DPO beta", "DPO beta", "DPO 的 beta（方法为 dpo 时）。"),
    "eval_max_samples": ("Held-out rows", "评估行数", "最多评估这么多留出行（留空 = 全部）。"),
    "eval_max_new_tokens": ("Max new tokens (scoring)", "评分时最大生成长度", "评分时生成回答的最大长度。"),
    "template": ("Chat template", "对话模板", "新适配器的对话模板：留空则用分词器自带的（或运行的）。"),
}

STRINGS: dict[str, dict[str, str]] = {
    f"loop.field.{name}": {"en": en, "zh": zh} for name, (en, zh, _) in FIELDS.items()
} | {
    f"loop.field.{name}.info": {"en": _HELP[name], "zh": zh_help} for name, (_, _, zh_help) in FIELDS.items()
} | {
    "loop.title": {"en": "Continuous fine-tuning (feedback → candidate → promote)",
                   "zh": "持续微调（反馈 → 候选 → 提升）"},
    "loop.intro": {"en": "Users' thumbs up/down and corrections (Chat tab, `POST /v1/feedback`) become "
                         "**feedback_sft** / **feedback_pref**. When enough new rows arrive, a candidate adapter "
                         "trains from the served one with a replay share of the original data, is scored beside it "
                         "on held-out rows, and replaces it behind the same model name only if it does not score "
                         "worse.",
                   "zh": "用户的赞/踩与纠正（对话标签页、`POST /v1/feedback`）会写入 **feedback_sft** / "
                         "**feedback_pref**。新增行数足够时，从当前服务的适配器出发、混入一部分原始数据训练候选适配器，"
                         "在留出数据上与当前版本一同评分，只有不更差时才在同一模型名下替换它。"},
    "loop.serve": {"en": "Serve the loop", "zh": "提供持续微调模型"},
    "loop.serve.info": {"en": "Also serve the policy's model name; promotions and rollbacks swap it without a restart.",
                        "zh": "同时提供策略中的模型名；提升与回滚无需重启即可替换。"},
    "loop.more": {"en": "Training and scoring settings", "zh": "训练与评分设置"},
    "loop.save": {"en": "Save policy", "zh": "保存策略"},
    "loop.check": {"en": "Check now", "zh": "立即检查"},
    "loop.force": {"en": "Train even with fewer new rows", "zh": "新增行数不足也训练"},
    "loop.refresh": {"en": "↻", "zh": "↻"},
    "loop.history": {"en": "History (newest first; ★ = served)", "zh": "历史（最新在前；★ = 当前服务）"},
    "loop.version": {"en": "Version to serve again", "zh": "要恢复服务的版本"},
    "loop.rollback": {"en": "Roll back", "zh": "回滚"},
    "loop.base": {"en": "Base model (no adapter)", "zh": "基座模型（无适配器）"},
    "loop.msg.saved": {"en": "✓ Saved {path}.", "zh": "✓ 已保存 {path}。"},
    "loop.msg.error": {"en": "⚠ {error}", "zh": "⚠ {error}"},
    "loop.msg.busy": {"en": "A check is already running.", "zh": "已有检查正在运行。"},
    "loop.msg.no_policy": {"en": "Save a policy first.", "zh": "请先保存策略。"},
    "loop.msg.checking": {"en": "Checking: a candidate trains and is scored when enough feedback arrived…",
                          "zh": "检查中：反馈足够时将训练候选并评分…"},
    "loop.msg.not_due": {"en": "Last check: not enough new feedback rows yet.", "zh": "上次检查：新增反馈行数还不够。"},
    "loop.msg.cycle": {"en": "Last check: v{version}: {reason}", "zh": "上次检查：v{version}：{reason}"},
    "loop.msg.pick": {"en": "Pick a version first.", "zh": "请先选择版本。"},
    "loop.msg.rolled_back": {"en": "✓ Version {version} is served again (a following API server swaps within a "
                                   "second).",
                             "zh": "✓ 已恢复服务版本 {version}（跟随的 API 服务会在一秒内切换）。"},
    "loop.msg.api_off": {"en": "API server: not running (start it above with “Serve the loop” ticked).",
                         "zh": "API 服务：未运行（在上方勾选“提供持续微调模型”后启动）。"},
    "loop.msg.api_plain": {"en": "API server: running without the loop; restart it with “Serve the loop” ticked.",
                           "zh": "API 服务：运行中但未启用持续微调；勾选“提供持续微调模型”后重启。"},
    "loop.msg.api_key": {"en": "API server: running (it needs a key, so its loop state is not shown here).",
                         "zh": "API 服务：运行中（需要密钥，此处不显示其持续微调状态）。"},
    "loop.msg.api_follows": {"en": "API server: serves **{model}** at version **v{version}** ({url}).",
                             "zh": "API 服务：在 {url} 以 **v{version}** 提供 **{model}**。"},
}
