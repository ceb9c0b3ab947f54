"""Model tab: where the base model comes from, what it is, and what this machine can train it on."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import gradio as gr
import psutil

from app.config import ConfigError
from app.models.hardware import Hardware
from app.models.info import ModelInfo
from app.models.source import ModelSourceError
from app.train.memory import trainable_parameters
from app.ui.components import field_group
from app.ui.context import MODEL_SOURCES, StudioContext, model_name
from app.ui.forms import estimate_job, form_fields
from app.ui.i18n_train import RUN_STRINGS
from app.ui.poll import poll

HARDWARE_REFRESH_S = 5.0


def _english(key: str, **values: Any) -> str:
    text = RUN_STRINGS.get(key, {}).get("en", key)
    return text.format(**values) if values else text


def info_markdown(info: ModelInfo, trainable: int | None, method: str, t: Callable[..., str] = _english) -> str:
    rows = [
        (t("info.architecture"), f"{info.architecture} (`{info.model_type}`)"),
        (t("info.parameters"), f"{info.n_params:,} ({info.n_params / 1e6:,.1f} M)"),
        (t("info.shape"), f"{info.n_layers} / {info.hidden_size} / {info.n_heads} ({info.n_kv_heads} KV)"),
        (t("info.context"), f"{info.context_length:,} {t('info.tokens')}"),
        (t("info.vocab"), f"{info.vocab_size:,}"),
        (t("info.dtype"), info.dtype),
        (t("info.targets"), ", ".join(f"`{k}`" for k in info.linear_kinds)),
    ]
    if trainable is not None:
        share = 100 * trainable / max(info.n_params, 1)
        rows.append((t("info.trainable", method=method), f"{trainable:,} ({share:.2f}%)"))
    lines = [f"| {t('info.folder')} | `{info.path}` |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


def hardware_markdown(hw: Hardware, t: Callable[..., str] = _english) -> str:
    if hw.gpus:
        lines = [f"| {t('hw.gpu')} | {t('hw.gpu_used')} | {t('hw.utilisation')} |", "|---|---|---|"]
        for g in hw.gpus:
            busy = "?" if g.utilization_pct is None else f"{g.utilization_pct}%"
            lines.append(f"| {g.index}: {g.name} | {g.used_mb / 1024:.1f} / {g.total_mb / 1024:.1f} GiB | {busy} |")
        return "\n".join(lines)
    why = f" ({hw.nvml_error})" if hw.nvml_error else ""
    used = hw.ram_total_mb - hw.ram_available_mb
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"**{t('hw.cpu_only')}**{why}\n\n| {t('hw.cpu')} | {t('hw.ram_used')} | {t('hw.cpu_busy')} | "
            f"{t('hw.load')} |\n|---|---|---|---|\n"
            f"| {t('hw.cores', n=hw.cpu_cores)} {hw.cpu_name} | {used / 1024:.1f} / {hw.ram_total_mb / 1024:.1f} GiB "
            f"| {psutil.cpu_percent():.0f}% | {load} |")


def build(ctx: StudioContext) -> None:
    def tr(lang: str) -> Callable[..., str]:
        return lambda key, **values: ctx.t(key, lang, **values)

    with gr.Row():
        source = ctx.make(gr.Radio, "model.source", value="embedded", scale=2, elem_id="model-source",
                          choice_keys=[(f"model.source.{s}", s) for s in MODEL_SOURCES])
        path = ctx.make(gr.Textbox, "model.path", value="", interactive=False, scale=3, elem_id="model-path")
        load = ctx.make(gr.Button, "model.load", variant="primary", scale=1, elem_id="model-load")
    ctx.shared["model_source"], ctx.shared["model_path"] = source, path
    with ctx.make(gr.Accordion, "model.settings", open=False):
        field_group(ctx, "model", columns=4, skip=("model_name_or_path",))
    with gr.Row():
        with gr.Column(scale=1):
            info = gr.Markdown(ctx.t("model.hint"), elem_id="model-info")  # not re-labelled: holds results
        with gr.Column(scale=1):
            template = ctx.make(gr.Code, "model.template", language="jinja2", lines=12, max_lines=24,
                                interactive=False, wrap_lines=True, elem_id="model-template")
    with ctx.make(gr.Accordion, "model.hardware", open=True):
        hardware = gr.Markdown(hardware_markdown(ctx.hardware(), tr(ctx.lang)), elem_id="model-hardware")
    timer = gr.Timer(HARDWARE_REFRESH_S)  # ticks in the page (app.ui.poll): no Gradio event per refresh
    poll(timer, lambda lang: [hardware_markdown(ctx.hardware(), tr(lang))], [ctx.shared["lang"]], [hardware])

    def pick_source(choice: str) -> Any:
        return gr.update(interactive=choice != "embedded")

    source.change(pick_source, source, path, show_progress="hidden", api_visibility="private")

    def load_info(lang: str, src: str, where: str, *values: Any) -> tuple[str, str]:
        name = model_name(src, where)
        if src != "embedded" and not name:
            return ctx.t("msg.need_path", lang), ""
        try:
            info = ctx.model_info(name)
        except ModelSourceError as exc:
            return f"⚠ {exc}", ""
        except Exception as exc:  # noqa: BLE001 - a broken folder: the message, never a traceback
            return ctx.t("msg.model_unreadable", lang, name=name, error=f"{type(exc).__name__}: {exc}"), ""
        trainable, method = None, "lora"
        try:
            job = estimate_job(dict(zip(form_fields(), values)), name, ctx.dataset_dir, ctx.runs_dir)
            trainable = trainable_parameters(info, job)
            method = job.finetuning_type + (f", r={job.lora_rank}, {job.lora_target}"
                                            if job.finetuning_type == "lora" else "")
        except ConfigError:
            pass
        return info_markdown(info, trainable, method, tr(lang)), info.chat_template or ctx.t("info.no_template", lang)

    def wire() -> None:  # the LoRA controls live in the Train tab, built after this one
        form = ctx.shared["form"]  # (source, path, *every field), packed in the page (app.ui.idle.Pack)
        assert form.inputs == [source, path, *(ctx.fields[n] for n in form_fields())]
        form.on([load.click, path.submit], load_info, [ctx.shared["lang"]], [info, template], api_visibility="private")
        # The hardware table refreshes only while it is on screen (a hidden tab's timer would still cost a
        # round trip every few seconds, next to a training run), switched in the page: a backend event per tab
        # switch would leave the timer in Gradio's loading-status table.
        for name, tab in ctx.shared.get("tabs", {}).items():
            tab.select(None, None, timer, js=f"() => ({{__type__: 'update', active: {json.dumps(name == 'model')}}})",
                       show_progress="hidden", api_visibility="private")

    ctx.after_build(wire)
