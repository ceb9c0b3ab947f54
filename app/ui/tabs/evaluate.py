"""Evaluate tab: score a model on held-out rows (an `ftstudio eval` job through the job manager), compare runs
(metrics table, a bar chart per metric, predictions side by side, best/worst rows, CSV), and judge two runs
pairwise with an LLM over any OpenAI-compatible endpoint. Logic lives in app.eval and app.ui.eval_view.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import gradio as gr

from app.config import ConfigError, EvalConfig, JudgeConfig
from app.eval import compare
from app.eval.judge import RUBRICS
from app.train.runfolder import ACTIVE_STATES
from app.ui import eval_view
from app.ui.context import StudioContext, model_name
from app.ui.datasets import datasets_for_stage
from app.ui.tabs.chat import finished_runs

PRIVATE: dict[str, Any] = {"api_visibility": "private"}
TICK_S = 1.0
NUMBERS = ("max_samples", "max_new_tokens", "temperature", "per_device_eval_batch_size")
MORE = ("top_p", "cutoff_len", "seed")
BARS = ("predict_bleu-4", "predict_rouge-1", "predict_rouge-2", "predict_rouge-l", "perplexity", "judge_win_rate")

STRINGS: dict[str, dict[str, str]] = {
    "tab.evaluate": {"en": "Evaluate", "zh": "评估"},
    "eval.run_title": {"en": "### Evaluate a model on held-out questions", "zh": "### 在留出的问题上评估模型"},
    "eval.source": {"en": "Model", "zh": "模型"},
    "eval.source.info": {"en": "The base (Model tab), a finished run (its adapter or a checkpoint), or a path.",
                         "zh": "基座模型（模型标签页）、已完成的运行（其适配器或检查点），或指定路径。"},
    "eval.source.base": {"en": "Base model", "zh": "基座模型"},
    "eval.source.run": {"en": "Training run", "zh": "训练运行"},
    "eval.source.path": {"en": "Folder or GGUF", "zh": "目录或 GGUF"},
    "eval.run": {"en": "Run", "zh": "运行"},
    "eval.checkpoint": {"en": "Adapter", "zh": "适配器"},
    "eval.checkpoint.info": {"en": "The final adapter or a checkpoint (★ = lowest eval loss).",
                             "zh": "最终适配器或某个检查点（★ = 评估损失最低）。"},
    "eval.path": {"en": "Path", "zh": "路径"},
    "eval.path.info": {"en": "A merged export or model folder, a .gguf file, or a run / adapter folder.",
                       "zh": "合并导出的模型目录、.gguf 文件，或运行/适配器目录。"},
    "eval.validation": {"en": "The run's validation split", "zh": "该运行的验证集"},
    "eval.validation.info": {"en": "The rows it held out (val_size), instead of the datasets.",
                             "zh": "训练时留出的行（val_size），代替所选数据集。"},
    "eval.datasets": {"en": "Eval datasets", "zh": "评估数据集"},
    "eval.datasets.info": {"en": EvalConfig.spec()["eval_dataset"].metadata["help"],
                           "zh": "用于评估的数据集（每行最后一个助手回答作为参考答案）。"},
    "eval.max_samples": {"en": "Max samples", "zh": "最大样本数"},
    "eval.max_new_tokens": {"en": "Max new tokens", "zh": "最大生成长度"},
    "eval.temperature": {"en": "Temperature", "zh": "温度"},
    "eval.temperature.info": {"en": "0 = greedy (reproducible)", "zh": "0 = 贪心解码（可复现）"},
    "eval.per_device_eval_batch_size": {"en": "Batch size", "zh": "批大小"},
    "eval.more": {"en": "More settings", "zh": "更多设置"},
    "eval.top_p": {"en": "Top-p", "zh": "Top-p"},
    "eval.cutoff_len": {"en": "Cutoff length (prompt)", "zh": "提示截断长度"},
    "eval.seed": {"en": "Seed", "zh": "随机种子"},
    "eval.name": {"en": "Run name (empty = eval-<model>-<time>)", "zh": "运行名称（留空为 eval-<模型>-<时间>）"},
    "eval.preview": {"en": "Preview command", "zh": "预览命令"},
    "eval.start": {"en": "Evaluate", "zh": "开始评估"},
    "eval.stop": {"en": "Stop", "zh": "停止"},
    "eval.refresh": {"en": "↻ Runs", "zh": "↻ 刷新"},
    "eval.command": {"en": "Command", "zh": "命令"},
    "eval.compare_title": {"en": "### Compare evaluation runs", "zh": "### 对比评估结果"},
    "eval.compare": {"en": "Evaluation runs", "zh": "评估运行"},
    "eval.compare.info": {"en": "Pick one or more; the first is ranked against the others.",
                          "zh": "选择一个或多个；第一个与其余运行对比排序。"},
    "eval.metrics": {"en": "Metrics (LLaMA-Factory's scale, 0-100)", "zh": "指标（LLaMA-Factory 口径，0-100）"},
    "eval.predictions": {"en": "Predictions", "zh": "预测结果"},
    "eval.best": {"en": "Best rows", "zh": "最好的行"},
    "eval.worst": {"en": "Worst rows", "zh": "最差的行"},
    "eval.all": {"en": "All rows", "zh": "全部行"},
    "eval.csv": {"en": "Download CSV", "zh": "下载 CSV"},
    "eval.judge": {"en": "Pairwise judge (LLM as judge)", "zh": "成对评审（大模型评审）"},
    "eval.judge_a": {"en": "Answers A (judged)", "zh": "回答 A（被评审）"},
    "eval.judge_b": {"en": "Answers B (baseline)", "zh": "回答 B（基线）"},
    "eval.judge_url": {"en": "Endpoint (OpenAI-compatible)", "zh": "接口地址（兼容 OpenAI）"},
    "eval.judge_url.info": {"en": JudgeConfig.spec()["judge_base_url"].metadata["help"],
                            "zh": "评审模型的 OpenAI 兼容接口：本工作室的 API（ftstudio api）、vLLM、Ollama "
                                  "或云服务。"},
    "eval.judge_model": {"en": "Judge model (empty = the first listed)", "zh": "评审模型（留空为列出的第一个）"},
    "eval.judge_key": {"en": "API key variable", "zh": "API 密钥环境变量"},
    "eval.judge_key.info": {"en": "The name of the environment variable holding the key (never the key itself).",
                            "zh": "保存密钥的环境变量名（不要填写密钥本身）。"},
    "eval.judge_lang": {"en": "Rubric language", "zh": "评审标准语言"},
    "eval.rubric": {"en": "Rubric", "zh": "评审标准"},
    "eval.judge_start": {"en": "Judge A vs B", "zh": "评审 A 对 B"},
    "eval.msg.started": {"en": "Started **{name}**.", "zh": "已开始 **{name}**。"},
    "eval.msg.queued": {"en": "Queued **{name}** behind the running job.",
                        "zh": "**{name}** 已排队，等待当前任务结束。"},
    "eval.msg.pick": {"en": "Pick at least one finished evaluation run.", "zh": "请至少选择一个已完成的评估运行。"},
    "eval.msg.judged": {"en": "A vs B over {n} rows (each judged in both orders): **win {win:.0%}**, tie {tie:.0%}, "
                              "loss {loss:.0%} (model {model}).",
                        "zh": "A 对 B，共 {n} 行（每行正反顺序各评一次）：**胜 {win:.0%}**，平 {tie:.0%}，"
                              "负 {loss:.0%}（评审模型 {model}）。"},
}


def widths(frame: Any, t: eval_view.Translate) -> Any:
    """The predictions table with its columns sized (narrow numbers, the texts sharing the rest), headed in the
    page's language."""
    sizes = [eval_view.column_width(str(c)) for c in frame.columns]
    return gr.update(value=eval_view.localised(frame, t), column_widths=sizes)


def translator(ctx: StudioContext, lang: str) -> eval_view.Translate:
    return lambda key, **values: ctx.t(key, lang, **values)


def _problems(lines: list[str]) -> str:
    return "\n".join(f"- ⚠ {line}" for line in lines)


def build(ctx: StudioContext) -> None:
    ctx.add_strings(STRINGS)
    ctx.add_strings(eval_view.STRINGS)
    tab = ctx.shared["tabs"]["evaluate"]
    tab.label = ctx.t("tab.evaluate")  # the Tab was made before this tab's strings were added
    lang = ctx.shared["lang"]
    defaults = EvalConfig()
    ctx.make(gr.Markdown, "eval.run_title")
    with gr.Row(equal_height=True):
        source = ctx.make(gr.Radio, "eval.source", [(f"eval.source.{s}", s) for s in eval_view.SOURCES], value="base",
                          scale=2, elem_id="eval-source")
        run = ctx.make(gr.Dropdown, "eval.run", choices=[], visible=False, scale=2, elem_id="eval-run")
        checkpoint = ctx.make(gr.Dropdown, "eval.checkpoint", choices=[(ctx.t("eval.final_adapter"), eval_view.FINAL)],
                              value=eval_view.FINAL, visible=False, scale=2, elem_id="eval-checkpoint")
        path = ctx.make(gr.Textbox, "eval.path", visible=False, scale=3, elem_id="eval-path")
        validation = ctx.make(gr.Checkbox, "eval.validation", value=False, visible=False, scale=2,
                              elem_id="eval-validation")
    with gr.Row(equal_height=True):
        fits = datasets_for_stage(ctx.dataset_dir, "sft")
        datasets = ctx.make(gr.Dropdown, "eval.datasets", choices=fits, multiselect=True, scale=3,
                            value=[d for d in defaults.datasets if d in fits], elem_id="eval-datasets")
        numbers = {name: ctx.make(gr.Number, f"eval.{name}", value=getattr(defaults, name), scale=1,
                                  precision=None if name == "temperature" else 0, elem_id=f"eval-{name}")
                   for name in NUMBERS}
    with ctx.make(gr.Accordion, "eval.more", open=False):
        with gr.Row():
            more = {name: ctx.make(gr.Number, f"eval.{name}", value=getattr(defaults, name),
                                   precision=None if name == "top_p" else 0, elem_id=f"eval-{name}") for name in MORE}
            name = ctx.make(gr.Textbox, "eval.name", value="", elem_id="eval-name")
    with gr.Row():
        preview = ctx.make(gr.Button, "eval.preview", elem_id="eval-preview")
        start = ctx.make(gr.Button, "eval.start", variant="primary", elem_id="eval-start")
        stop = ctx.make(gr.Button, "eval.stop", variant="stop", elem_id="eval-stop")
    command = ctx.make(gr.Textbox, "eval.command", interactive=False, buttons=["copy"], elem_id="eval-command")
    status = gr.Markdown("", elem_id="eval-status")
    following = gr.State(None)
    timer = gr.Timer(TICK_S, active=False)

    ctx.make(gr.Markdown, "eval.compare_title")
    with gr.Row(equal_height=True):
        chosen = ctx.make(gr.Dropdown, "eval.compare", choices=[], multiselect=True, scale=5, elem_id="eval-compare")
        refresh = ctx.make(gr.Button, "eval.refresh", size="sm", scale=0, min_width=90, elem_id="eval-refresh")
    message = gr.Markdown("", elem_id="eval-compare-message")
    metrics = ctx.make(gr.Dataframe, "eval.metrics", value=compare.metrics_frame([]), interactive=False, wrap=True,
                       elem_id="eval-metrics")
    bars = []
    for start_at in (0, 3):
        with gr.Row():
            for key in BARS[start_at:start_at + 3]:
                # the label names the metric (in the page's language); a blank axis title repeats no English
                bars.append(ctx.make(gr.BarPlot, f"evcol.{compare.METRIC_COLUMNS[key]}", value=None, x="label",
                                       y="value", y_title=" ", x_title="", height=220,
                                       x_label_angle=0, sort="x", visible=key != "judge_win_rate",
                                       y_lim=[0, compare.axis_top(key, [])] if key != "perplexity" else None,
                                       elem_id=f"eval-bar-{key.replace('predict_', '').replace('_', '-')}"))
    with gr.Row():
        best = ctx.make(gr.Button, "eval.best", size="sm", elem_id="eval-best")
        worst = ctx.make(gr.Button, "eval.worst", size="sm", elem_id="eval-worst")
        every = ctx.make(gr.Button, "eval.all", size="sm", elem_id="eval-all")
        csv = ctx.make(gr.DownloadButton, "eval.csv", value=None, size="sm", elem_id="eval-csv")
    predictions = ctx.make(gr.Dataframe, "eval.predictions", value=compare.predictions_frame([]), interactive=False,
                           wrap=True, max_height=520, elem_id="eval-predictions")
    table = gr.State(None)

    with ctx.make(gr.Accordion, "eval.judge", open=False, elem_id="eval-judge"):
        with gr.Row():
            judge_a = ctx.make(gr.Dropdown, "eval.judge_a", choices=[], elem_id="eval-judge-a")
            judge_b = ctx.make(gr.Dropdown, "eval.judge_b", choices=[], elem_id="eval-judge-b")
        judge_spec = JudgeConfig.spec()
        with gr.Row():
            judge_url = ctx.make(gr.Textbox, "eval.judge_url", value=judge_spec["judge_base_url"].default, scale=3,
                                 elem_id="eval-judge-url")
            judge_model = ctx.make(gr.Textbox, "eval.judge_model", value="", scale=2, elem_id="eval-judge-model")
            judge_key = ctx.make(gr.Textbox, "eval.judge_key", value=judge_spec["judge_api_key_env"].default,
                                 scale=2, elem_id="eval-judge-key")
            judge_lang = ctx.make(gr.Radio, "eval.judge_lang", choices=["en", "zh"], value=ctx.lang, scale=1,
                                  elem_id="eval-judge-lang")
        rubric = ctx.make(gr.Textbox, "eval.rubric", value=RUBRICS.get(ctx.lang, RUBRICS["en"]), lines=3,
                          elem_id="eval-rubric")
        judge_start = ctx.make(gr.Button, "eval.judge_start", variant="primary", elem_id="eval-judge-start")
        judged = gr.Markdown("", elem_id="eval-judged")

    # -- choices ---------------------------------------------------------------------------------
    def on_refresh(current_run: str | None, picked: list[str] | None, a: str | None, b: str | None) -> list[Any]:
        runs = finished_runs(ctx)
        evals = compare.finished_eval_runs(ctx.runs_dir)
        keep = [p for p in picked or [] if p in evals]
        return [gr.update(choices=runs, value=current_run if current_run in runs else (runs[0] if runs else None)),
                gr.update(choices=evals, value=keep),
                gr.update(choices=evals, value=a if a in evals else (evals[0] if evals else None)),
                gr.update(choices=evals, value=b if b in evals else (evals[1] if len(evals) > 1 else None))]

    choice_outputs = [run, chosen, judge_a, judge_b]
    for event in (refresh.click, tab.select):
        event(on_refresh, [run, chosen, judge_a, judge_b], choice_outputs, show_progress="hidden", **PRIVATE)

    def on_source(src: str) -> list[Any]:
        run_only = gr.update(visible=src == "run")
        return [run_only, run_only, gr.update(visible=src == "path"), run_only]

    source.change(on_source, source, [run, checkpoint, path, validation], show_progress="hidden", **PRIVATE)

    def on_run(name_: str | None, lang_: str) -> Any:
        t = translator(ctx, lang_)
        final = [(t("eval.final_adapter"), eval_view.FINAL)]
        if not name_:
            return gr.update(choices=final, value=eval_view.FINAL)
        try:
            return gr.update(choices=eval_view.checkpoint_choices(ctx.manager.run(name_), t), value=eval_view.FINAL)
        except KeyError:
            return gr.update(choices=final, value=eval_view.FINAL)

    for event in (run.change, lang.change):
        event(on_run, [run, lang], checkpoint, show_progress="hidden", **PRIVATE)

    # -- running ---------------------------------------------------------------------------------
    form = [source, run, checkpoint, path, validation, datasets, name, *numbers.values(), *more.values(),
            *ctx.model_inputs()]

    def config_of(args: tuple[Any, ...]) -> EvalConfig:
        src, run_, ckpt, path_, held_out, sets, run_name, *rest = args
        values = dict(zip([*NUMBERS, *MORE], rest[: len(NUMBERS) + len(MORE)]))
        base = model_name(*rest[len(NUMBERS) + len(MORE):])
        model = eval_view.model_keys(src, base, ctx.runs_dir, run_, ckpt, path_)
        if held_out and src == "run" and run_:
            model |= {"validation_run": str(ctx.runs_dir / run_)}
            sets = []
        return eval_view.build_config(model, sets, values, ctx.dataset_dir, ctx.runs_dir, run_name)

    def on_preview(*args: Any) -> tuple[str, str]:
        try:
            return config_of(args).command_line(), ""
        except ConfigError as exc:
            return "", _problems(exc.problems)
        except ValueError as exc:
            return "", _problems([str(exc)])

    preview.click(on_preview, form, [command, status], **PRIVATE)

    def on_start(lang_: str, *args: Any) -> list[Any]:
        try:
            config = config_of(args)
        except ConfigError as exc:
            return [gr.skip(), _problems(exc.problems), gr.skip(), gr.skip()]
        except ValueError as exc:
            return [gr.skip(), _problems([str(exc)]), gr.skip(), gr.skip()]
        if (Path(str(config.output_dir)) / "events.jsonl").exists():
            return [gr.skip(), _problems([f"output_dir: run {Path(str(config.output_dir)).name} exists; choose "
                                          "another name"]), gr.skip(), gr.skip()]
        try:
            new = ctx.manager.submit(config)
        except RuntimeError as exc:
            return [gr.skip(), _problems([str(exc)]), gr.skip(), gr.skip()]
        queued = new.read_state().get("state") == "queued"
        said = ctx.t("eval.msg.queued" if queued else "eval.msg.started", lang_, name=new.name)
        return [config.command_line(), said + "\n\n" + eval_view.status_line(new, translator(ctx, lang_), lang_),
                new.name, gr.Timer(active=True)]

    start.click(on_start, [lang, *form], [command, status, following, timer], **PRIVATE)

    def on_tick(name_: str | None, picked: list[str] | None, lang_: str) -> list[Any]:
        ctx.manager.refresh()
        if not name_:
            return [gr.skip(), gr.Timer(active=False), gr.skip()]
        try:
            current = ctx.manager.run(name_)
        except KeyError:
            return [gr.skip(), gr.Timer(active=False), gr.skip()]
        t = translator(ctx, lang_)
        line = eval_view.status_line(current, t, lang_)
        if current.read_state().get("state") in ACTIVE_STATES:
            return [line, gr.skip(), gr.skip()]
        results = compare.read_results(current.path)
        line += ("\n\n" + eval_view.results_line(results, t)) if results else ""
        evals = compare.finished_eval_runs(ctx.runs_dir)
        value = [p for p in (picked or []) if p in evals]
        value += [name_] if name_ in evals and name_ not in value else []
        return [line, gr.Timer(active=False), gr.update(choices=evals, value=value)]

    timer.tick(on_tick, [following, chosen, lang], [status, timer, chosen], show_progress="hidden",
               trigger_mode="always_last", **PRIVATE)

    def on_stop(name_: str | None, lang_: str) -> str:
        if not name_:
            return ""
        ctx.manager.stop(name_)
        return eval_view.status_line(ctx.manager.run(name_), translator(ctx, lang_), lang_)

    stop.click(on_stop, [following, lang], status, **PRIVATE)
    build_compare(ctx, lang, chosen, message, metrics, bars, predictions, table, csv, best, worst, every)

    # -- judge -----------------------------------------------------------------------------------
    def on_judge_lang(new: str, text: str) -> Any:
        return gr.update(value=RUBRICS[new]) if text.strip() in [*RUBRICS.values(), ""] else gr.skip()

    judge_lang.change(on_judge_lang, [judge_lang, rubric], rubric, show_progress="hidden", **PRIVATE)

    def on_judge(lang_: str, a: str | None, b: str | None, url: str, model_: str, key_env: str, language: str,
                 text: str, progress: gr.Progress = gr.Progress()) -> str:  # noqa: B008 - gradio's idiom
        from app.eval.judge import JudgeError, run_judge

        if not a or not b:
            return _problems([ctx.t("eval.msg.pick", lang_)])
        try:
            config = JudgeConfig.from_dict({
                "predictions": str(ctx.runs_dir / a), "baseline": str(ctx.runs_dir / b), "judge_base_url": url,
                "judge_model": model_ or None, "judge_api_key_env": key_env, "judge_language": language,
                "rubric": None if text.strip() == RUBRICS[language] else text})
            summary = run_judge(config, progress=lambda done, total: progress(done / total, desc=f"{done}/{total}"))
        except ConfigError as exc:
            return _problems(exc.problems)
        except JudgeError as exc:
            return _problems([str(exc)])
        return ctx.t("eval.msg.judged", lang_, n=summary["judge_samples"], win=summary["judge_win_rate"],
                     tie=summary["judge_tie_rate"], loss=summary["judge_loss_rate"], model=summary["judge_model"])

    judge_start.click(on_judge, [lang, judge_a, judge_b, judge_url, judge_model, judge_key, judge_lang, rubric],
                      judged, concurrency_limit=1, **PRIVATE)


def build_compare(ctx: StudioContext, lang: Any, chosen: Any, message: Any, metrics: Any, bars: list[Any],
                  predictions: Any, table: Any, csv: Any, best: Any, worst: Any, every: Any) -> None:
    """Wire the comparison: runs picked -> metrics, bars, predictions, CSV; best/worst/all re-rank the rows."""

    def on_compare(names: list[str] | None, lang_: str) -> list[Any]:
        t = translator(ctx, lang_)
        # nothing picked (or unreadable): the tables keep their headers, in the page's language
        empty = [eval_view.localised(compare.metrics_frame([]), t), *[None] * len(bars),
                 widths(compare.predictions_frame([]), t)]
        if not names:
            return [ctx.t("eval.msg.pick", lang_), *empty, None, gr.update(value=None)]
        try:
            runs = [compare.load_run(ctx.runs_dir / n) for n in names]
            frame = compare.predictions_frame(runs)
        except compare.CompareError as exc:
            return [_problems([str(exc)]), *empty, None, gr.update(value=None)]
        numbers = compare.metrics_frame(runs)
        charts = []
        for key in BARS:
            chart = compare.bar_frame(numbers, key)
            charts.append(gr.update(value=chart, visible=not chart.empty))
        out = Path(tempfile.mkdtemp(prefix="ftstudio-eval-")) / "predictions.csv"
        compare.write_csv(frame, out)
        return ["", eval_view.localised(numbers, t), *charts, widths(frame, t), (names, frame),
                gr.update(value=str(out))]

    def perplexity_axis(names: list[str] | None) -> Any:
        """A property update of its own, after the data: a gr.BarPlot whose properties change redraws with the
        data it had (see app.ui.plots.color_map); bars start at 0."""
        try:
            runs = [compare.load_run(ctx.runs_dir / n) for n in names or []]
        except compare.CompareError:
            return gr.skip()
        chart = compare.bar_frame(compare.metrics_frame(runs), "perplexity") if runs else None
        return gr.update(y_lim=[0, compare.axis_top("perplexity", chart["value"])]) if chart is not None else gr.skip()

    outputs = [message, metrics, *bars, predictions, table, csv]
    chosen.change(on_compare, [chosen, lang], outputs, **PRIVATE).then(
        perplexity_axis, chosen, bars[BARS.index("perplexity")], **PRIVATE)
    # the tables' headers follow the language (the CSV keeps the English column names scripts read)
    lang.change(on_compare, [chosen, lang], outputs, **PRIVATE)

    def rank(how: str):
        def on_rank(held: Any, lang_: str) -> Any:
            if not held:
                return gr.skip()
            names, frame = held
            t = translator(ctx, lang_)
            if how == "all":
                return widths(frame, t)
            return widths(compare.ranked(frame, names, worst=how == "worst", top=10), t)
        return on_rank

    for button, how in ((best, "best"), (worst, "worst"), (every, "all")):
        button.click(rank(how), [table, lang], predictions, **PRIVATE)
