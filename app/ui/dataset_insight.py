"""Dataset tab, Insight panel: a catalogue set under the Model tab's model and chat template -- rows,
prompt/response token histograms, rows cut at the Train tab's cutoff_len, a suggested cutoff_len that
one click applies there, duplicates, empty fields, language mix. The figures come from
app.data.insight (cached by content fingerprint); the CLI twin is `ftstudio data stats`.
"""

from __future__ import annotations

from typing import Any

import gradio as gr
import pandas as pd

from app.data.catalogue import load_catalogue
from app.data.errors import DataError
from app.data.insight import Insight
from app.models.source import ModelSourceError
from app.ui.context import StudioContext, model_name

PRIVATE: dict[str, Any] = {"api_visibility": "private"}
BINS = 12

STRINGS: dict[str, dict[str, str]] = {
    "insight.title": {"en": "Insight", "zh": "数据洞察"},
    "insight.dataset": {"en": "Dataset", "zh": "数据集"},
    "insight.dataset.info": {"en": "Rendered with the Model tab's model and chat template.",
                             "zh": "使用“模型”标签页所选模型及其对话模板渲染。"},
    "insight.compute": {"en": "Compute statistics", "zh": "计算统计"},
    "insight.prompt_hist": {"en": "Prompt tokens (rows per length)", "zh": "提示词元数（各长度的行数）"},
    "insight.response_hist": {"en": "Response tokens (rows per length)", "zh": "回答词元数（各长度的行数）"},
    "insight.apply": {"en": "Apply the suggested cutoff_len to the Train tab",
                      "zh": "将建议的 cutoff_len 应用到训练页"},
    "insight.hint": {"en": "Pick a dataset and press *Compute statistics*.", "zh": "选择数据集后点击“计算统计”。"},
    "insight.applied": {"en": "cutoff_len = {value} set on the Train tab.",
                        "zh": "已在训练页设置 cutoff_len = {value}。"},
    "insight.no_dataset": {"en": "⚠ Pick a dataset first.", "zh": "⚠ 请先选择数据集。"},
    "insight.error": {"en": "⚠ {error}", "zh": "⚠ {error}"},
    "insight.cached": {"en": "(from the cache)", "zh": "（来自缓存）"},
    "insight.rows": {"en": "Rows", "zh": "行数"},
    "insight.rows_value": {"en": "{rows} ({valid} usable, {problems} with problems)",
                           "zh": "{rows}（可用 {valid}，有问题 {problems}）"},
    "insight.prompt": {"en": "Prompt tokens", "zh": "提示词元数"},
    "insight.response": {"en": "Response tokens", "zh": "回答词元数"},
    "insight.total": {"en": "Total tokens", "zh": "总词元数"},
    "insight.spread": {"en": "min {min} · median {median} · mean {mean} · max {max}",
                       "zh": "最小 {min} · 中位数 {median} · 平均 {mean} · 最大 {max}"},
    "insight.truncated": {"en": "Cut at cutoff_len = {cutoff}", "zh": "超出 cutoff_len = {cutoff} 被截断"},
    "insight.truncated_value": {"en": "{n} rows", "zh": "{n} 行"},
    "insight.packed": {"en": "none: pre-training text is packed into cutoff_len blocks",
                       "zh": "无：预训练文本会被拼接成 cutoff_len 长度的块"},
    "insight.suggested": {"en": "Suggested cutoff_len", "zh": "建议的 cutoff_len"},
    "insight.suggested_value": {"en": "**{value}** (keeps 99% of rows whole)", "zh": "**{value}**（99% 的行不被截断）"},
    "insight.duplicates": {"en": "Duplicates", "zh": "重复"},
    "insight.duplicates_value": {"en": "{exact} exact · {prompts} repeated prompts with another answer · {near} near "
                                       "(prompt ≥ 90% similar)",
                                 "zh": "完全重复 {exact} · 相同提示不同回答 {prompts} · "
                                       "近似重复 {near}（提示相似度 ≥ 90%）"},
    "insight.not_computed": {"en": "not computed (too many rows)", "zh": "未计算（行数过多）"},
    "insight.empty": {"en": "Empty fields", "zh": "空字段"},
    "insight.none": {"en": "none", "zh": "无"},
    "insight.languages": {"en": "Languages", "zh": "语言分布"},
    "insight.method": {"en": "detected by py3langid, one label per row", "zh": "由 py3langid 检测，每行一个标签"},
    "insight.problems": {"en": "Problems", "zh": "问题"},
}


def histogram_frame(insight: Insight | None, which: str) -> pd.DataFrame:
    """Bars of a token-length histogram: one row per bin, labelled "low–high"."""
    bins = insight.histogram(which, BINS) if insight else []
    return pd.DataFrame({"tokens": [f"{lo}–{hi}" for lo, hi, _ in bins], "rows": [n for _, _, n in bins]})


def summary_markdown(ctx: StudioContext, lang: str, insight: Insight, cutoff: int, cached: bool) -> str:
    s = insight.summary(cutoff)
    t = lambda key, **kw: ctx.t(key, lang, **kw)  # noqa: E731

    def spread(kind: str) -> str:
        return t("insight.spread", **s["tokens"][kind]) if s["tokens"].get(kind) else "–"

    near = t("insight.not_computed") if s["near_duplicates"] is None else s["near_duplicates"]
    empty = ", ".join(f"`{k}` {v}" for k, v in s["empty_fields"].items()) or t("insight.none")
    langs = ", ".join(f"{k} {v}" for k, v in s["languages"].items()) or "–"
    rows = [
        (t("insight.rows"), t("insight.rows_value", rows=s["rows"], valid=s["valid_rows"], problems=s["problems"])),
        (t("insight.prompt"), spread("prompt")), (t("insight.response"), spread("response")),
        (t("insight.total"), spread("total")),
        (t("insight.truncated", cutoff=cutoff),
         t("insight.truncated_value", n=s["truncated"]) if s["truncated"] is not None else t("insight.packed")),
        (t("insight.suggested"),
         t("insight.suggested_value", value=s["suggested_cutoff_len"]) if s["suggested_cutoff_len"] else "–"),
        (t("insight.duplicates"), t("insight.duplicates_value", exact=s["exact_duplicates"],
                                    prompts=s["repeated_prompts"], near=near)),
        (t("insight.empty"), empty),
        (t("insight.languages"), f"{langs} ({t('insight.method')})"),
    ]
    if insight.problems:
        rows.append((t("insight.problems"), "<br>".join(insight.problems)))
    head = f"| **{s['dataset']}** | {s['stage']} · {s['model']} {t('insight.cached') if cached else ''} |"
    return "\n".join([head, "|---|---|", *(f"| {k} | {v} |" for k, v in rows)])


def dataset_names(ctx: StudioContext) -> list[str]:
    try:
        return [name for name, spec in load_catalogue(ctx.dataset_dir).items() if not spec.problems]
    except DataError:
        return []


def build(ctx: StudioContext) -> None:
    ctx.add_strings(STRINGS)
    with ctx.make(gr.Accordion, "insight.title", open=False, elem_id="insight-panel"):
        with gr.Row():
            name = ctx.make(gr.Dropdown, "insight.dataset", choices=[], scale=3, elem_id="insight-dataset")
            compute = ctx.make(gr.Button, "insight.compute", variant="primary", scale=1, elem_id="insight-compute")
        summary = gr.Markdown(ctx.t("insight.hint"), elem_id="insight-summary")
        with gr.Row():
            prompt_plot = ctx.make(gr.BarPlot, "insight.prompt_hist", x="tokens", y="rows", value=None,
                                   elem_id="insight-prompt-hist")
            response_plot = ctx.make(gr.BarPlot, "insight.response_hist", x="tokens", y="rows", value=None,
                                     elem_id="insight-response-hist")
        with gr.Row():
            apply = ctx.make(gr.Button, "insight.apply", interactive=False, scale=1, elem_id="insight-apply")
            applied = gr.Markdown("", elem_id="insight-applied")
        suggested = gr.State(None)
    lang = ctx.shared["lang"]

    def refresh(current: str | None) -> Any:
        names = dataset_names(ctx)
        return gr.update(choices=names, value=current if current in names else (names[0] if names else None))

    ctx.shared["tabs"]["dataset"].select(refresh, name, name, **PRIVATE)
    name.focus(refresh, name, name, **PRIVATE)

    def run(dataset: str | None, lang_: str, source: str, path: str, template: str | None,
            cutoff: float | None) -> list[Any]:
        if not dataset:
            return [ctx.t("insight.no_dataset", lang_), None, None, None, gr.update(interactive=False)]
        from app.datatools.insight_report import insight_for

        cutoff_len = int(cutoff or 0) or 1024
        try:
            insight, cached = insight_for(ctx.dataset_dir, dataset, model_name(source, path), template or None)
        except DataError as exc:
            return [ctx.t("insight.error", lang_, error="<br>".join(map(str, exc.problems[:5]))), None, None, None,
                    gr.update(interactive=False)]
        except ModelSourceError as exc:
            return [ctx.t("insight.error", lang_, error=str(exc)), None, None, None, gr.update(interactive=False)]
        value = insight.suggested_cutoff()
        prompt, response = histogram_frame(insight, "prompt"), histogram_frame(insight, "response")
        return [summary_markdown(ctx, lang_, insight, cutoff_len, cached),
                gr.update(value=prompt, sort=prompt["tokens"].tolist()),
                gr.update(value=response, sort=response["tokens"].tolist()), value,
                gr.update(interactive=value is not None)]

    def wire() -> None:
        # The Train tab's cutoff_len is built after this tab: read and write it once every tab exists.
        cutoff_field = ctx.fields["cutoff_len"]
        template_field = ctx.fields.get("template")
        inputs = [name, lang, *ctx.model_inputs(), template_field or gr.State(None), cutoff_field]
        compute.click(run, inputs, [summary, prompt_plot, response_plot, suggested, apply], **PRIVATE)
        apply.click(lambda value, lang_: (value, ctx.t("insight.applied", lang_, value=value)), [suggested, lang],
                    [cutoff_field, applied], **PRIVATE)

    ctx.after_build(wire)
