"""The Export tab's "evaluate the GGUF": after a GGUF export, score the GGUF and the merged model it came from on
the same rows (two `ftstudio eval` jobs through the job manager) and show their scores side by side.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import gradio as gr

from app.config import ConfigError, EvalConfig
from app.eval import compare
from app.eval.results import is_eval_run
from app.train.runfolder import ACTIVE_STATES
from app.ui import eval_view
from app.ui.context import StudioContext
from app.ui.datasets import datasets_for_stage

PRIVATE: dict[str, Any] = {"api_visibility": "private"}

STRINGS: dict[str, dict[str, str]] = {
    "export.eval": {"en": "Evaluate the GGUF beside the merged model", "zh": "对比评估 GGUF 与合并后的模型"},
    "export.eval_datasets": {"en": "Eval datasets", "zh": "评估数据集"},
    "export.eval_samples": {"en": "Max samples", "zh": "最大样本数"},
    "export.eval_start": {"en": "Evaluate both", "zh": "评估两者"},
    "export.eval_scores": {"en": "Scores (same rows, greedy)", "zh": "得分（相同数据，贪心解码）"},
    "export.msg.no_gguf": {"en": "Export a GGUF first: its report names the GGUF and the merged folder.",
                           "zh": "请先导出 GGUF：导出报告中会给出 GGUF 文件与合并模型目录。"},
}


def eval_pair(report: dict[str, Any] | None, datasets: list[str], max_samples: float | None,
              runs_dir: Path, dataset_dir: Path) -> list[EvalConfig]:
    """The two evaluations (merged model, GGUF) an export report calls for; ValueError when it has no GGUF."""
    if not report or not (report.get("gguf") or {}).get("path") or not report.get("merged_dir"):
        raise ValueError("no GGUF")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = str(report.get("name") or "export")
    common = {"eval_dataset": ",".join(datasets) or None, "dataset_dir": str(dataset_dir),
              "max_samples": int(max_samples) if max_samples else None}
    return [EvalConfig.from_dict(common | {"model_name_or_path": report["merged_dir"],
                                           "output_dir": str(runs_dir / f"eval-{name}-merged-{stamp}")}),
            EvalConfig.from_dict(common | {"model_name_or_path": report["gguf"]["path"],
                                           "output_dir": str(runs_dir / f"eval-{name}-{report.get('quant')}-{stamp}")})]


def build_gguf_eval(ctx: StudioContext, report: Any) -> None:
    """An accordion under the export report (`report`: the gr.JSON holding export_report.json's content)."""
    ctx.add_strings(STRINGS)
    ctx.add_strings(eval_view.STRINGS)
    lang = ctx.shared["lang"]
    with ctx.make(gr.Accordion, "export.eval", open=False, elem_id="export-eval"):
        with gr.Row(equal_height=True):
            fits = datasets_for_stage(ctx.dataset_dir, "sft")
            datasets = ctx.make(gr.Dropdown, "export.eval_datasets", choices=fits, multiselect=True, scale=3,
                                value=[d for d in EvalConfig().datasets if d in fits], elem_id="export-eval-datasets")
            samples = ctx.make(gr.Number, "export.eval_samples", value=None, precision=0, scale=1,
                               elem_id="export-eval-samples")
            start = ctx.make(gr.Button, "export.eval_start", scale=1, elem_id="export-eval-start")
        status = gr.Markdown("", elem_id="export-eval-status")
        scores = ctx.make(gr.Dataframe, "export.eval_scores", interactive=False, elem_id="export-eval-scores")
    pair = gr.State(None)
    timer = gr.Timer(2.0, active=False)

    def on_start(data: dict | None, sets: list[str] | None, n: float | None, lang_: str) -> list[Any]:
        try:
            configs = eval_pair(data, list(sets or []), n, ctx.runs_dir, ctx.dataset_dir)
        except ConfigError as exc:
            return ["\n".join(f"⚠ {p}" for p in exc.problems), gr.skip(), gr.skip()]
        except ValueError:
            return [ctx.t("export.msg.no_gguf", lang_), gr.skip(), gr.skip()]
        names = [ctx.manager.submit(config).name for config in configs]
        return [" · ".join(names), names, gr.Timer(active=True)]

    start.click(on_start, [report, datasets, samples, lang], [status, pair, timer], **PRIVATE)

    def on_tick(names: list[str] | None, lang_: str) -> list[Any]:
        ctx.manager.refresh()
        if not names:
            return [gr.skip(), gr.skip(), gr.Timer(active=False)]
        t = lambda key, **values: ctx.t(key, lang_, **values)  # noqa: E731 - the page's language
        runs = [ctx.manager.run(n) for n in names]
        lines = "\n\n".join(eval_view.status_line(r, t, lang_) for r in runs)
        if any(r.read_state().get("state") in ACTIVE_STATES for r in runs):
            return [lines, gr.skip(), gr.skip()]
        done = [r.path for r in runs if is_eval_run(r.path)]
        frame = compare.metrics_frame([compare.load_run(p) for p in done]) if done else None
        return [lines, None if frame is None else eval_view.localised(frame, t), gr.Timer(active=False)]

    timer.tick(on_tick, [pair, lang], [status, scores, timer], show_progress="hidden", **PRIVATE)
    lang.change(lambda names, lang_: on_tick(names, lang_)[:2] if names else [gr.skip(), gr.skip()],
                [pair, lang], [status, scores], show_progress="hidden", **PRIVATE)
