"""Train tab: every JobConfig field (from its metadata), a live memory estimate, the command preview,
job YAML save/load, Start, and the run monitor below (app.ui.tabs.train_runs)."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from app.config import GROUPS, ConfigError, JobConfig
from app.datatools.insight_report import estimate_rows
from app.models.source import ModelSourceError, is_embedded
from app.train.memory import estimate_memory
from app.train.preflight import preflight
from app.ui import plots
from app.ui.components import field_control, field_group
from app.ui.context import StudioContext, model_name
from app.ui.datasets import datasets_for_stage
from app.ui.forms import SPECIAL_FIELDS, estimate_job, form_fields, form_to_job, group_fields, job_to_controls
from app.ui.i18n_train import translate_problem
from app.ui.idle import Pack
from app.ui.tabs.train_extras import build_continue, build_stage_curves
from app.ui.tabs.train_runs import PRIVATE, build_monitor

INLINE_GROUPS = ("model", "method", "data")  # model: the Model tab; method and data: the top rows


def problems_markdown(ctx: StudioContext, lang: str, problems: list[Any]) -> str:
    """The problems of a job, one bullet each, in the page's language (names and numbers kept)."""
    lines = [translate_problem(str(p), lang) for p in problems]
    return "\n".join([f"**{ctx.t('msg.invalid_job', lang)}**", "", *(f"- {line}" for line in lines)])


def build(ctx: StudioContext) -> None:
    lang = ctx.shared["lang"]
    with gr.Row():
        for name in group_fields("method"):
            field_control(ctx, name, scale=1)
        fits = datasets_for_stage(ctx.dataset_dir, JobConfig().stage)
        dataset = field_control(ctx, "dataset", scale=3, choices=fits,
                                value=[d for d in JobConfig().datasets if d in fits])
    stage = ctx.fields["stage"]
    with gr.Row():
        for name in group_fields("data"):
            if name not in ctx.fields and name not in SPECIAL_FIELDS:
                field_control(ctx, name)
        ctx.make(gr.Textbox, "field.dataset_dir", value=str(ctx.dataset_dir), interactive=False)
    for group in GROUPS:  # every other group of the schema, new ones included, as an accordion
        if group not in INLINE_GROUPS:
            with ctx.make(gr.Accordion, f"group.{group}", open=group == "basic", elem_id=f"group-{group}"):
                field_group(ctx, group, columns=4)

    command = ctx.make(gr.Textbox, "train.command", lines=1, max_lines=6, interactive=False, buttons=["copy"],
                       elem_id="train-command")
    with gr.Row():
        with gr.Column(scale=2):
            memory = ctx.make(gr.Dataframe, "train.memory", headers=["part", "MB"], interactive=False,
                              elem_id="train-memory")
            memory_note = gr.Markdown("", elem_id="train-memory-note")
        with gr.Column(scale=3):
            job_yaml = ctx.make(gr.Code, "train.yaml", language="yaml", lines=12, max_lines=20, interactive=False,
                                elem_id="train-yaml")
    with gr.Row():
        preview = ctx.make(gr.Button, "train.preview", elem_id="train-preview")
        save = ctx.make(gr.Button, "train.save", elem_id="train-save")
        load = ctx.make(gr.UploadButton, "train.load", file_types=[".yaml", ".yml"], elem_id="train-load")
        start = ctx.make(gr.Button, "train.start", variant="primary", elem_id="train-start")
    with gr.Row():
        output = gr.Markdown("", elem_id="train-output")
        saved = ctx.make(gr.File, "train.yaml_file", visible=False, interactive=False, elem_id="train-saved")
    monitor = build_monitor(ctx)
    build_stage_curves(ctx, monitor)  # rewards / margins / accuracy / KL / completion length, per stage
    build_continue(ctx, monitor)  # "continue this finished run for N more epochs"
    monitor.wire()  # the timer's one handler, with what follows it

    names = form_fields()
    model = ctx.model_inputs()
    fields = [ctx.fields[n] for n in names]

    def values_of(args: tuple[Any, ...]) -> tuple[str | None, dict[str, Any]]:
        """Split (source, path, *field values) into the model name and the field values."""
        return model_name(args[0], args[1]), dict(zip(names, args[2:]))

    def on_estimate(lang_: str, *args: Any) -> tuple[Any, str]:
        name, values = values_of(args)
        empty = pd.DataFrame(columns=[ctx.t("col.part", lang_), ctx.t("col.mb", lang_)])
        try:
            job = estimate_job(values, name, ctx.dataset_dir, ctx.runs_dir)
            info = ctx.model_info(name, fetch=False)
        except ConfigError as exc:
            return empty, problems_markdown(ctx, lang_, exc.problems)
        except ModelSourceError as exc:
            return empty, f"⚠ {exc}"
        except Exception as exc:  # noqa: BLE001 - unreadable model folder: say so, no traceback
            return empty, f"⚠ {type(exc).__name__}: {exc}"
        hw = ctx.hardware()
        rows = None
        if job.stage == "sft":  # the real row lengths, as the worker will measure them (a local folder only)
            rows = estimate_rows(job.dataset_dir, job.datasets, None if is_embedded(name) else info.path,
                                 job.template, job.cutoff_len, job.max_samples)
        estimate = estimate_memory(info, job, on_gpu=hw.device == "cuda", rows=rows)
        device = "GPU" if hw.gpus else "RAM"
        key = "msg.over_budget" if estimate.total_mb > hw.budget_mb else "msg.fits"
        note = ctx.t(key, lang_, need=estimate.total_mb, have=hw.budget_mb, device=device)
        note += " " + ctx.t("msg.estimate_rows" if rows else "msg.estimate_cutoff", lang_)
        return plots.memory_frame(estimate, lambda key, **v: ctx.t(key, lang_, **v)), note

    form = ctx.shared["form"] = Pack([*model, *fields])  # the whole form as one page-side value (app.ui.idle)
    triggers = [c.change for c in fields] + [model[0].change, model[1].submit, model[1].blur, lang.change]
    form.on([*triggers, ctx.demo.load], on_estimate, [lang], [memory, memory_note], show_progress="hidden",
            trigger_mode="always_last", **PRIVATE)

    def refresh_datasets(chosen_stage: str, chosen: list[str] | None) -> Any:
        fit = datasets_for_stage(ctx.dataset_dir, chosen_stage)
        return gr.update(choices=fit, value=[d for d in chosen or [] if d in fit])

    stage.change(refresh_datasets, [stage, dataset], dataset, **PRIVATE)
    tab = ctx.shared.get("tabs", {}).get("train")
    if tab is not None:
        tab.select(refresh_datasets, [stage, dataset], dataset, **PRIVATE)

    def build_job(args: tuple[Any, ...], lang_: str) -> tuple[JobConfig | None, str]:
        name, values = values_of(args)
        try:
            return form_to_job(values, name, ctx.dataset_dir, ctx.runs_dir), ""
        except ConfigError as exc:
            return None, problems_markdown(ctx, lang_, exc.problems)

    def on_preview(lang_: str, *args: Any) -> tuple[str, str, str]:
        job, problems = build_job(args, lang_)
        if job is None:
            return "", "", problems
        return job.command_line(), job.to_yaml(), ""

    form.on([preview.click], on_preview, [lang], [command, job_yaml, output], **PRIVATE)

    def on_save(lang_: str, *args: Any) -> tuple[Any, str]:
        job, problems = build_job(args, lang_)
        if job is None:
            return gr.update(visible=False), problems
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(job.output_dir or f"{job.stage}-{job.finetuning_type}").name)
        path = Path(tempfile.mkdtemp(prefix="ftstudio-job-")) / f"{stem}.yaml"
        job.save(path)
        return gr.update(value=str(path), visible=True), ""

    form.on([save.click], on_save, [lang], [saved, output], **PRIVATE)

    def on_load(file: str | None, lang_: str) -> list[Any]:
        keep = [gr.skip()] * (2 + len(fields))
        if not file:
            return ["", *keep]
        notes: list[str] = []
        try:
            job = JobConfig.load(file, notes)
        except ConfigError as exc:
            return [problems_markdown(ctx, lang_, exc.problems), *keep]
        controls = job_to_controls(job)
        src = job.model_name_or_path
        source = "embedded" if src is None else "folder" if Path(src).expanduser().exists() else "hub"
        updates = [gr.update(value=controls[n]) for n in names]
        fit = datasets_for_stage(ctx.dataset_dir, job.stage)
        updates[names.index("dataset")] = gr.update(choices=sorted(set(fit) | set(job.datasets)),
                                                    value=controls["dataset"])
        message = "\n".join([ctx.t("msg.loaded_yaml", lang_, file=Path(file).name), *(f"- {n}" for n in notes)])
        return [message, gr.update(value=source), gr.update(value=src or ""), *updates]

    load.upload(on_load, [load, lang], [output, *model, *fields], **PRIVATE)

    def on_start(key: str, lang_: str, *args: Any) -> list[Any]:
        skip = [gr.skip()] * (len(monitor.outputs) + 2)
        job, problems = build_job(args, lang_)
        if job is None:
            return [problems, *skip]
        if job.output_dir and (Path(job.output_dir) / "events.jsonl").exists():
            return [problems_markdown(ctx, lang_, [ctx.t("msg.run_exists", "en", name=Path(job.output_dir).name)]),
                    *skip]
        problems = preflight(job)  # every mistake found now, before a worker spends a minute loading
        if problems:
            return [problems_markdown(ctx, lang_, problems), *skip]
        try:
            run = ctx.manager.submit(job)
        except (RuntimeError, ValueError) as exc:
            return [problems_markdown(ctx, lang_, [str(exc)]), *skip]
        queued = run.read_state().get("state") == "queued"
        message = ctx.t("msg.queued" if queued else "msg.started", lang_, name=run.name)
        job = run.job()
        return [message, job.command_line(), job.to_yaml(), *monitor.show(key, run.name, activate=True, lang=lang_)]

    form.on([start.click], on_start, [monitor.key, lang], [output, command, job_yaml, *monitor.outputs], **PRIVATE)
