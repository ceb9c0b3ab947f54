"""Chinese for the backend's reliability messages (app.jobs, app.train.lifecycle, app.user_errors,
app.train.runfolder) and the dataset-fitness messages (app.data.formats), as they reach the Train tab's
status line. English message shape -> Chinese; every name, path and number captured is kept. Groups named
`msg` (or `rest`) are translated again, so a wrapped message is translated through and through.
Appended after app.ui.i18n_train's PROBLEM_PATTERNS: the more specific shapes there match first.
"""

from __future__ import annotations

import re

_NO_SPACE = "磁盘空间不足，无法写入（磁盘已满或文件过大）"

MESSAGE_PATTERNS: list[tuple[re.Pattern[str], str]] = [(re.compile(p), zh) for p, zh in [
    # app.jobs.manager
    (r"^the worker process ended without reporting \(killed or out of memory\?\)$",
     "训练进程未报告结果就已结束（被终止，或内存不足？）"),
    (r"^stopped by force \(still saving when the stop ceiling ran out, (?P<s>\d+) s after the stop request\)$",
     "已强制停止（到达停止上限时仍在保存，距停止请求 {s} 秒）"),
    (r"^stopped by force \(it did not end within the grace period, (?P<s>\d+) s after the stop request\)$",
     "已强制停止（宽限期内未能结束，距停止请求 {s} 秒）"),
    # app.train.lifecycle.describe_failure / app.user_errors
    (r"^no space left to write \(disk full or file too large\): (?P<what>.+)\. Free some space, then Resume: "
     r"the newest complete checkpoint is kept\.$",
     _NO_SPACE + "：{what}。请释放空间后点击“继续训练”：最新的完整检查点已保留。"),
    (r"^no space left to write \(disk full or file too large\): (?P<what>.+)$", _NO_SPACE + "：{what}"),
    (r"^No such file or directory: (?P<f>.+)$", "文件或目录不存在：{f}"),
    (r"^Permission denied: (?P<f>.+)$", "没有权限：{f}"),
    (r"^Is a directory: (?P<f>.+)$", "这是一个目录，不是文件：{f}"),
    (r"^Not a directory: (?P<f>.+)$", "不是目录：{f}"),
    # app.train.runfolder.read_state
    (r"^(?P<f>.+): cannot read it \((?P<why>.+)\)$", "{f}：无法读取（{why}）"),
    (r"^(?P<f>.+): not valid JSON \((?P<what>.+) at line (?P<l>\d+), column (?P<c>\d+)\)$",
     "{f}：不是有效的 JSON（{what}，第 {l} 行，第 {c} 列）"),
    (r"^(?P<f>.+): expected a JSON object with a 'state'$", "{f}：应为包含 “state” 的 JSON 对象"),
    # app.data.formats: a dataset that does not fit the stage
    (r"^dataset '(?P<d>[^']+)' holds answers tagged good or bad \(kto_tag\): use it for kto, not (?P<s>\w+)$",
     "数据集 “{d}” 的回答标注了好/坏（kto_tag）：请用于 kto，而不是 {s}"),
    (r"^dataset '(?P<d>[^']+)' holds preference pairs \(ranking: true\): use it for dpo or rm, not (?P<s>\w+)$",
     "数据集 “{d}” 是偏好数据对（ranking: true）：请用于 dpo 或 rm，而不是 {s}"),
    (r"^dataset '(?P<d>[^']+)' has no kto_tag column \(answers tagged true/false\): it cannot be used for kto$",
     "数据集 “{d}” 没有 kto_tag 列（标注 true/false 的回答）：不能用于 kto"),
    (r"^dataset '(?P<d>[^']+)' has no preference pairs \(needs ranking: true with chosen/rejected columns\): "
     r"it cannot be used for (?P<s>\w+)$",
     "数据集 “{d}” 没有偏好数据对（需要 ranking: true 以及 chosen/rejected 列）：不能用于 {s}"),
    (r"^dataset '(?P<d>[^']+)' is an? (?P<k>.+) dataset: it cannot be used for (?P<s>\w+)$",
     "数据集 “{d}” 是 {k} 数据集：不能用于 {s}"),
    # app.config.job: early stopping and the best checkpoint
    (r"^(?P<key>\w+): stage grpo has no eval loss to watch .*$",
     "{key}：grpo 阶段没有可监测的评估损失（它用奖励为生成结果打分）：请移除 {key}"),
    (r"^(?P<key>\w+): needs an eval loss: set val_size or eval_dataset$",
     "{key}：需要评估损失：请设置 val_size 或 eval_dataset"),
    # a problem located in a file without a row (app.data.errors.Problem)
    (r"^(?P<where>[^,]+?), field '(?P<field>[^']+)': (?P<msg>.+)$", "{where}，字段 “{field}”：{msg}"),
]]
