"""Dataset tab, Generate panel: synthetic rows from seed topics or documents, written by the base model
(Model tab), a finished run's adapter, or an OpenAI-compatible endpoint, as a background job.

Start builds a GenerateConfig (defaults and help from its fields) and hands it to the job manager, which
spawns `ftstudio data generate runs/<run>/generate.yaml`; a 1 s timer follows the run's events (rows kept,
attempts, drops, the newest rows) until it ends. Stop keeps and registers the rows made so far. Uploaded
documents are copied into the run folder first, so the job never reads Gradio's temporary files.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from app.config import ConfigError, GenerateConfig
from app.config.generate import RECIPES
from app.train.runfolder import ACTIVE_STATES, RunFolder
from app.ui.context import StudioContext, model_name

PRIVATE: dict[str, Any] = {"api_visibility": "private"}
TICK_S = 1.0
KIND = GenerateConfig.COMMAND
SHOWN_ROWS = 5
SPEC = GenerateConfig.spec()

STRINGS: dict[str, dict[str, str]] = {
    "gen.title": {"en": "Generate synthetic data", "zh": "生成合成数据"},
    "gen.recipe": {"en": "Recipe", "zh": "生成方式"},
    "gen.recipe.info": {"en": SPEC["recipe"].metadata["help"],
                        "zh": "self_instruct：围绕种子主题提问再作答；passage_qa：为每个段落提出它能回答的问题，"
                              "再依据段落作答；bilingual：以上任一方式，并将每行译成中文作为另一行。"},
    "gen.recipe.self_instruct": {"en": "Self-instruct (topics)", "zh": "自指令（主题）"},
    "gen.recipe.passage_qa": {"en": "Question–answer from passages (documents)", "zh": "段落问答（文档）"},
    "gen.recipe.bilingual": {"en": "Bilingual English/Chinese", "zh": "中英双语"},
    "gen.topics": {"en": "Seed topics", "zh": "种子主题"},
    "gen.topics.info": {"en": SPEC["topics"].metadata["help"], "zh": "每行一个主题（或用 ; 分隔）。"},
    "gen.documents": {"en": "Documents (.txt, .md, .pdf)", "zh": "文档（.txt、.md、.pdf）"},
    "gen.include_passage": {"en": "Put the passage in each row's input", "zh": "将段落写入每行的 input 列"},
    "gen.include_passage.info": {"en": SPEC["include_passage"].metadata["help"],
                                 "zh": "passage_qa：把段落放入 input 列（阅读理解），否则训练时不带段落（知识注入）。"},
    "gen.generator": {"en": "Generator", "zh": "生成模型"},
    "gen.generator.info": {"en": "The Model tab's base model, a finished run's adapter on it, or an endpoint.",
                           "zh": "“模型”标签页的基座模型、其上某个已完成运行的适配器，或一个 API 端点。"},
    "gen.base": {"en": "Base model (Model tab)", "zh": "基座模型（模型标签页）"},
    "gen.endpoint": {"en": "OpenAI-compatible endpoint", "zh": "OpenAI 兼容端点"},
    "gen.api_base": {"en": "Endpoint URL", "zh": "端点地址"},
    "gen.api_base.info": {"en": SPEC["api_base"].metadata["help"],
                          "zh": "用于生成的 OpenAI 兼容端点（例如 http://127.0.0.1:8000/v1）。"},
    "gen.api_model": {"en": "Endpoint model id", "zh": "端点模型 ID"},
    "gen.api_key_env": {"en": "Key environment variable", "zh": "密钥环境变量"},
    "gen.api_key_env.info": {"en": SPEC["api_key_env"].metadata["help"],
                             "zh": "存放端点密钥的环境变量名（密钥本身不会写入任务文件）。"},
    "gen.num_rows": {"en": "Rows", "zh": "行数"},
    "gen.temperature": {"en": "Temperature", "zh": "温度"},
    "gen.max_new_tokens": {"en": "Max new tokens", "zh": "最大生成长度"},
    "gen.keep_truncated": {"en": "Keep text cut at max new tokens", "zh": "保留被最大生成长度截断的文本"},
    "gen.system": {"en": "System prompt (stored with every row)", "zh": "系统提示（随每行保存）"},
    "gen.dataset_name": {"en": "Dataset name", "zh": "数据集名称"},
    "gen.overwrite": {"en": "Replace a dataset of that name", "zh": "覆盖同名数据集"},
    "gen.start": {"en": "Start generating", "zh": "开始生成"},
    "gen.stop": {"en": "Stop (keep rows so far)", "zh": "停止（保留已生成的行）"},
    "gen.rows_table": {"en": "Newest rows", "zh": "最新生成的行"},
    "gen.hint": {"en": "No generation yet.", "zh": "尚未生成。"},
    "gen.msg.invalid": {"en": "⚠ The settings are not valid:\n{problems}", "zh": "⚠ 设置无效：\n{problems}"},
    "gen.msg.started": {"en": "Started {name}.", "zh": "已开始 {name}。"},
    "gen.msg.queued": {"en": "Queued {name} behind the running job.", "zh": "{name} 已排队，等待当前任务结束。"},
    "gen.msg.stopping": {"en": "Stopping {name}: the rows made so far are kept.",
                         "zh": "正在停止 {name}：已生成的行会保留。"},
    "gen.msg.no_run": {"en": "No generation is running.", "zh": "没有正在进行的生成。"},
    "gen.status": {"en": "**{name}** · {state} · {kept} / {target} rows · {attempts} attempts{dropped}{message}",
                   "zh": "**{name}** · {state} · {kept} / {target} 行 · 尝试 {attempts} 次{dropped}{message}"},
    "gen.dropped": {"en": " · dropped: {items}", "zh": " · 丢弃：{items}"},
}


def generator_choices(ctx: StudioContext, lang: str) -> list[tuple[str, str]]:
    """Base model, every finished training run with a saved adapter, then the endpoint."""
    runs = [s.name for s in ctx.manager.summaries()
            if s.kind == "train" and s.state == "finished" and (Path(s.path) / "adapter").is_dir()]
    return ([(ctx.t("gen.base", lang), "base")] + [(f"run: {name}", f"run:{name}") for name in runs]
            + [(ctx.t("gen.endpoint", lang), "endpoint")])


def build_config(ctx: StudioContext, values: dict[str, Any]) -> GenerateConfig:
    """The form's values as a GenerateConfig (ConfigError names every bad field)."""
    generator = values.pop("generator") or "base"
    source, path = values.pop("source"), values.pop("path")
    data: dict[str, Any] = {k: v for k, v in values.items() if v not in (None, "")}
    data["dataset_dir"] = str(ctx.dataset_dir)
    if generator == "endpoint":
        data.pop("model_name_or_path", None)
    else:
        data.pop("api_base", None)
        data.pop("api_model", None)
        data["model_name_or_path"] = model_name(source, path)
        if generator.startswith("run:"):
            data["adapter_name_or_path"] = str(ctx.runs_dir / generator[4:])
    return GenerateConfig.from_dict(data)


def status_view(ctx: StudioContext, lang: str, name: str | None) -> tuple[str, pd.DataFrame | None, bool]:
    """(status line, newest rows, still active) of generation run `name`."""
    if not name:
        return ctx.t("gen.hint", lang), None, False
    run = RunFolder(ctx.runs_dir / name)
    if not run.exists():
        return ctx.t("gen.hint", lang), None, False
    state = run.read_state().get("state", "?")
    events = run.events.read_all()
    progress = next((e for e in reversed(events) if e["kind"] == "progress"), {})
    stage = next((e for e in reversed(events) if e["kind"] in ("stage", "done")
                  and (e.get("message") or e.get("error"))), {})
    message = stage.get("message") or stage.get("error") or ""
    dropped = progress.get("dropped") or {}
    items = ", ".join(f"{n} {why}" for why, n in dropped.items())
    try:
        config = run.job()
        target = config.num_rows
    except (ConfigError, OSError):
        config, target = None, "?"
    line = ctx.t("gen.status", lang, name=name, state=state, kept=progress.get("step", 0), target=target,
                 attempts=progress.get("attempts", 0), dropped=ctx.t("gen.dropped", lang, items=items) if items else "",
                 message=f"\n\n{message}" if message else "")
    rows = None
    if config is not None:
        from app.datatools.worker import rows_file

        try:
            kept = json.loads(rows_file(run, config).read_text(encoding="utf-8"))
            rows = pd.DataFrame([{"instruction": r.get("instruction", ""), "output": r.get("output", "")}
                                 for r in kept[-SHOWN_ROWS:]])
        except (OSError, ValueError):
            rows = None
    return line, rows, state in ACTIVE_STATES


def newest_generation(ctx: StudioContext) -> str | None:
    found = [r for r in ctx.manager.runs() if r.kind == KIND]
    return found[0].name if found else None


def build(ctx: StudioContext) -> None:
    ctx.add_strings(STRINGS)
    default = lambda name: SPEC[name].default  # noqa: E731 - one source of defaults: the schema
    with ctx.make(gr.Accordion, "gen.title", open=False, elem_id="gen-panel"):
        with gr.Row():
            recipe = ctx.make(gr.Radio, "gen.recipe", value=default("recipe"), scale=2, elem_id="gen-recipe",
                              choice_keys=[(f"gen.recipe.{r}", r) for r in RECIPES])
            generator = ctx.make(gr.Dropdown, "gen.generator", choices=generator_choices(ctx, ctx.lang), value="base",
                                 scale=1, elem_id="gen-generator")
        with gr.Row(visible=False) as endpoint_row:
            api_base = ctx.make(gr.Textbox, "gen.api_base", placeholder="http://127.0.0.1:8000/v1",
                                elem_id="gen-api-base")
            api_model = ctx.make(gr.Textbox, "gen.api_model", elem_id="gen-api-model")
            api_key_env = ctx.make(gr.Textbox, "gen.api_key_env", value=default("api_key_env"),
                                   elem_id="gen-api-key-env")
        with gr.Row():
            topics = ctx.make(gr.Textbox, "gen.topics", lines=3, scale=2, elem_id="gen-topics")
            documents = ctx.make(gr.File, "gen.documents", file_count="multiple", file_types=[".txt", ".md", ".pdf"],
                                 height=110, scale=2, elem_id="gen-documents")
        include_passage = ctx.make(gr.Checkbox, "gen.include_passage", value=default("include_passage"),
                                   elem_id="gen-include-passage")
        with gr.Row():
            num_rows = ctx.make(gr.Number, "gen.num_rows", value=default("num_rows"), precision=0, minimum=1,
                                elem_id="gen-num-rows")
            temperature = ctx.make(gr.Number, "gen.temperature", value=default("temperature"), step=0.1, minimum=0,
                                   elem_id="gen-temperature")
            max_new_tokens = ctx.make(gr.Number, "gen.max_new_tokens", value=default("max_new_tokens"), precision=0,
                                      minimum=8, elem_id="gen-max-new-tokens")
            dataset_name = ctx.make(gr.Textbox, "gen.dataset_name", value=default("dataset_name"),
                                    elem_id="gen-dataset-name")
        with gr.Row():
            keep_truncated = ctx.make(gr.Checkbox, "gen.keep_truncated", value=default("keep_truncated"),
                                      elem_id="gen-keep-truncated")
            overwrite = ctx.make(gr.Checkbox, "gen.overwrite", value=default("overwrite"), elem_id="gen-overwrite")
        system = ctx.make(gr.Textbox, "gen.system", elem_id="gen-system")
        with gr.Row():
            start = ctx.make(gr.Button, "gen.start", variant="primary", elem_id="gen-start")
            stop = ctx.make(gr.Button, "gen.stop", variant="stop", elem_id="gen-stop")
        status = gr.Markdown(ctx.t("gen.hint"), elem_id="gen-status")
        rows = ctx.make(gr.Dataframe, "gen.rows_table", interactive=False, wrap=True, elem_id="gen-rows")
        current = gr.State(None)
        timer = gr.Timer(TICK_S, active=False)
    lang = ctx.shared["lang"]

    generator.focus(lambda value, lang_: gr.update(choices=generator_choices(ctx, lang_), value=value),
                    [generator, lang], generator, **PRIVATE)
    generator.change(lambda value: gr.update(visible=value == "endpoint"), generator, endpoint_row, **PRIVATE)

    form = [recipe, generator, api_base, api_model, api_key_env, topics, include_passage, num_rows, temperature,
            max_new_tokens, keep_truncated, system, dataset_name, overwrite]
    keys = ["recipe", "generator", "api_base", "api_model", "api_key_env", "topics", "include_passage", "num_rows",
            "temperature", "max_new_tokens", "keep_truncated", "system", "dataset_name", "overwrite"]

    def on_start(files: list[str] | None, lang_: str, source: str, path: str, *values: Any) -> list[Any]:
        form_values = dict(zip(keys, values)) | {"source": source, "path": path}
        for key in ("num_rows", "max_new_tokens"):
            if form_values.get(key) is not None:
                form_values[key] = int(form_values[key])
        run_dir = ctx.runs_dir / f"generate-{time.strftime('%Y%m%d-%H%M%S')}"
        copies = []
        if files:  # into the run folder: the job must not depend on Gradio's temporary files
            folder = run_dir / "documents"
            folder.mkdir(parents=True, exist_ok=True)
            for file in files:
                target = folder / Path(file).name
                shutil.copyfile(file, target)
                copies.append(str(target))
        form_values["documents"] = "\n".join(copies)
        form_values["output_dir"] = str(run_dir)
        try:
            config = build_config(ctx, form_values)
            run = ctx.manager.submit(config)
        except ConfigError as exc:
            shutil.rmtree(run_dir, ignore_errors=True)
            problems = "\n".join(f"- {p}" for p in exc.problems)
            return [ctx.t("gen.msg.invalid", lang_, problems=problems), gr.skip(), gr.skip(), gr.Timer(active=False)]
        ctx.manager.refresh()
        queued = run.read_state().get("state") == "queued"
        return [ctx.t("gen.msg.queued" if queued else "gen.msg.started", lang_, name=run.name), None, run.name,
                gr.Timer(active=True)]

    start.click(on_start, [documents, lang, *ctx.model_inputs(), *form], [status, rows, current, timer], **PRIVATE)

    def on_tick(name: str | None, lang_: str) -> list[Any]:
        ctx.manager.refresh()
        line, table, active = status_view(ctx, lang_, name)
        return [line, table if table is not None else gr.skip(), gr.Timer(active=active)]

    timer.tick(on_tick, [current, lang], [status, rows, timer], show_progress="hidden", **PRIVATE)

    def on_stop(name: str | None, lang_: str) -> str:
        if not name:
            return ctx.t("gen.msg.no_run", lang_)
        state = RunFolder(ctx.runs_dir / name).read_state().get("state")
        if state not in ACTIVE_STATES:
            return ctx.t("gen.msg.no_run", lang_)
        ctx.manager.stop(name)
        return ctx.t("gen.msg.stopping", lang_, name=name)

    stop.click(on_stop, [current, lang], status, **PRIVATE)

    def on_load(lang_: str) -> list[Any]:
        name = newest_generation(ctx)  # a browser refresh or a UI restart finds the last generation again
        line, table, active = status_view(ctx, lang_, name)
        return [name, line, table, gr.Timer(active=active)]

    ctx.shared["tabs"]["dataset"].select(on_load, lang, [current, status, rows, timer], **PRIVATE)
