"""Train tab additions beside the run monitor: each stage's own curves, and "continue for N more epochs".

Both hang off the monitor (app.ui.tabs.train_runs) without changing it: they read its selected run
and follow its timer.
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import gradio as gr

from app.ui import stage_plots
from app.ui.context import StudioContext
from app.ui.plots import color_map
from app.ui.tabs.train_runs import PLOT_EVERY_S

PRIVATE: dict[str, Any] = {"api_visibility": "private"}

STRINGS: dict[str, dict[str, str]] = {
    "train.metrics": {"en": "Stage metrics (rewards, margins, accuracy, KL)",
                      "zh": "阶段指标（奖励、间隔、准确率、KL）"},
    "train.lengths": {"en": "Completion length (tokens)", "zh": "生成长度（token）"},
    "train.more_epochs": {"en": "More epochs", "zh": "追加轮数"},
    "train.continue": {"en": "Continue this run", "zh": "在此运行上继续训练"},
    "train.msg.continued": {"en": "Started **{name}**: {run} for {epochs} more epoch(s).",
                            "zh": "已启动 **{name}**：在 {run} 上再训练 {epochs} 轮。"},
    "train.msg.not_finished": {"en": "{run} is {state}: only a finished run can be continued (Resume continues "
                                     "a stopped or failed one).",
                               "zh": "{run} 的状态是 {state}：只有已完成的运行可以继续训练"
                                     "（停止或失败的运行请用“继续训练”恢复）。"},
}


def _events(ctx: StudioContext, name: str | None) -> tuple[str | None, list[dict[str, Any]], int]:
    """(stage, every event, the byte offset read up to); no events for a stage without curves of its own."""
    if not name:
        return None, [], 0
    try:
        run = ctx.manager.run(name)
        stage = run.job().stage
        return (stage, *run.events.read_from(0)) if stage_plots.has_curves(stage) else (stage, [], 0)
    except Exception:  # noqa: BLE001 - a run folder being written or removed: show nothing this tick
        return None, [], 0


class Drawn(NamedTuple):
    """What the stage curves last drew: a tick compares it with the monitor's view before reading anything."""
    run: str | None
    offset: int  # bytes of events.jsonl drawn
    at: float  # time.monotonic() of the draw
    empty: bool  # nothing to show
    stage: str | None  # a run's stage never changes


def build_stage_curves(ctx: StudioContext, monitor: Any) -> None:
    """Two plots under the loss curve, filled for stages that report more than a loss."""
    ctx.add_strings(STRINGS)
    with gr.Row():
        metrics = ctx.make(gr.LinePlot, "train.metrics", x="step", y="value", color="series", color_title="",
                           value=None, visible=False, elem_id="train-metrics")
        lengths = ctx.make(gr.LinePlot, "train.lengths", x="step", y="value", value=None, visible=False,
                           elem_id="train-lengths")

    def refresh(name: str | None, sig: Any) -> tuple[Any, Any, Any]:
        """(metrics plot, lengths plot, what is now drawn)."""
        stage, events, offset = _events(ctx, name)
        frame = stage_plots.metrics_frame(stage, events)
        length = stage_plots.length_frame(events) if stage == "grpo" else None
        empty = frame.empty and (length is None or length.empty)
        ended = bool(events) and events[-1].get("kind") == "done"
        # Like the loss curve (app.ui.tabs.train_runs): re-draw at most every PLOT_EVERY_S, at once when
        # the run ends, and never to replace an empty hidden plot with another one.
        if sig and sig.run == name:
            if sig.empty and empty:
                return gr.skip(), gr.skip(), Drawn(name, offset, time.monotonic(), True, stage)
            if sig.offset == offset or (time.monotonic() - sig.at < PLOT_EVERY_S and not ended):
                return gr.skip(), gr.skip(), sig
        new_sig = Drawn(name, offset, time.monotonic(), empty, stage)
        series = list(dict.fromkeys(frame["series"]))
        return (gr.update(value=frame if not frame.empty else None, visible=not frame.empty,
                          color_map=color_map(series)),
                gr.update(value=length if length is not None and not length.empty else None,
                          visible=length is not None and not length.empty), new_sig)

    def tick(name: str | None, session: Any) -> tuple[Any, Any]:
        view, sig = session.view, session.memo.get("stage")
        # A tick that left the page before its newest pick reached the server would draw the old run's curves.
        if monitor.stale(view, name):
            return gr.skip(), gr.skip()
        # A run's stage never changes: SFT and pre-training have no curves here, and nothing is read.
        # The monitor has just read the run's new bytes into `view`: with none since the last draw, or a draw
        # less than PLOT_EVERY_S ago and the run still going, the events file is not read again.
        if sig and sig.run == name:
            no_curves = sig.stage is not None and not stage_plots.has_curves(sig.stage)
            unmoved = view is not None and view.run == name and (
                sig.offset == view.offset or (time.monotonic() - sig.at < PLOT_EVERY_S and view.done is None))
            if no_curves or unmoved:
                return gr.skip(), gr.skip()
        *plots, session.memo["stage"] = refresh(name, sig)
        return tuple(plots)

    def on_pick(key: str, name: str | None) -> tuple[Any, Any]:
        *plots, monitor.sessions.get(key).memo["stage"] = refresh(name, None)
        return tuple(plots)

    monitor.follow(tick, [], [metrics, lengths])  # inside the monitor's own tick: one request, not two
    monitor.run.change(on_pick, [monitor.key, monitor.run], [metrics, lengths], show_progress="hidden", **PRIVATE)


def build_continue(ctx: StudioContext, monitor: Any) -> None:
    """A number and a button: train the selected finished run for N more epochs (app.train.continuation)."""
    ctx.add_strings(STRINGS)
    with gr.Row():
        epochs = ctx.make(gr.Number, "train.more_epochs", value=1, minimum=0.1, precision=None, scale=1,
                          elem_id="train-more-epochs")
        button = ctx.make(gr.Button, "train.continue", size="sm", scale=1, elem_id="train-continue")
        message = gr.Markdown("", elem_id="train-continue-message")
    lang = ctx.shared["lang"]

    def on_continue(key: str, name: str | None, more: float | None, lang_: str) -> list[Any]:
        from app.train.continuation import continue_job

        if not name:
            return [ctx.t("msg.no_run", lang_), *monitor.show(key, name, lang=lang_)]
        state = ctx.manager.run(name).read_state().get("state")
        if state != "finished":
            return [ctx.t("train.msg.not_finished", lang_, run=name, state=state), *monitor.show(key, name, lang=lang_)]
        try:
            run = ctx.manager.submit(continue_job(ctx.runs_dir / name, float(more or 1)))
        except (ValueError, RuntimeError) as exc:
            return [f"✗ {exc}", *monitor.show(key, name, lang=lang_)]
        text = ctx.t("train.msg.continued", lang_, name=run.name, run=name, epochs=f"{float(more or 1):g}")
        return [text, *monitor.show(key, run.name, activate=True, lang=lang_)]

    button.click(on_continue, [monitor.key, monitor.run, epochs, lang], [message, *monitor.outputs], **PRIVATE)
