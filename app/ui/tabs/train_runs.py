"""The Train tab's run monitor: run list, live curves of the selected run, stop/resume, comparison.

Curves come from the run's events.jsonl, read by byte offset on a 1 s gr.Timer into a per-session
LiveView (gr.State). The timer runs while some run is queued or running (it is switched on at page
load when one is), and each tick calls `manager.refresh()` so that queued runs start.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from app.train.runfolder import ACTIVE_STATES
from app.ui import plots
from app.ui.context import StudioContext

TICK_S = 1.0
RESUMABLE = ("stopped", "failed")
PRIVATE: dict[str, Any] = {"api_visibility": "private"}


@dataclass
class Monitor:
    ctx: StudioContext
    table: Any
    run: Any
    status: Any
    loss: Any
    lr: Any
    log: Any
    view: Any
    timer: Any
    table_sig: Any
    compare: Any
    _cache: tuple[list, list] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def outputs(self) -> list[Any]:
        """What `show` fills, in order."""
        return [self.table, self.table_sig, self.run, self.compare, self.view, self.loss, self.lr, self.status,
                self.log, self.timer]

    def _summaries(self) -> list[Any]:
        """manager.summaries(), re-read only when some run folder's files changed (it parses every
        events.jsonl, and every open page asks each second)."""
        stamp = []
        for run in self.ctx.manager.runs():
            for file in (run.state_file, run.path / "events.jsonl", run.job_file):
                try:
                    stat = file.stat()
                    stamp.append((str(file), stat.st_size, stat.st_mtime_ns))
                except FileNotFoundError:
                    stamp.append((str(file), -1, -1))
        with self._lock:
            if self._cache is None or self._cache[0] != stamp:
                self._cache = (stamp, plots.with_best(self.ctx.manager.summaries()))
            return self._cache[1]

    def _table(self, sig: str | None) -> tuple[Any, Any, Any, Any, bool, list[str]]:
        summaries = self._summaries()
        frame = plots.runs_frame(summaries)
        new_sig = frame.to_json()
        names = [s.name for s in summaries]
        active = any(s.state in ACTIVE_STATES for s in summaries)
        if new_sig == sig:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), active, names
        return frame, new_sig, gr.update(choices=names), gr.update(choices=names), active, names

    def _read(self, view: plots.LiveView | None, name: str | None) -> tuple[plots.LiveView, bool]:
        if view is None or view.run != name:
            view = plots.LiveView(run=name)
        if not name:
            return view, True
        try:
            run = self.ctx.manager.run(name)
        except KeyError:
            return plots.LiveView(run=None), True
        events, offset = run.events.read_from(view.offset)
        fresh = view.offset == 0
        return view, view.feed(events, offset) or fresh

    def _render(self, view: plots.LiveView) -> tuple[Any, Any, str, Any]:
        if not view.run:
            empty = plots.LiveView()
            return (plots.loss_frame(empty), plots.lr_frame(empty), self.ctx.t("msg.no_runs"),
                    gr.update(visible=False, value=""))
        run = self.ctx.manager.run(view.run)
        state = run.read_state()
        failed = state.get("state") == "failed" or (view.done or {}).get("state") == "failed"
        log = gr.update(visible=True, value=run.tail_log()) if failed else gr.update(visible=False)
        return plots.loss_frame(view), plots.lr_frame(view), plots.status_line(view, state), log

    def show(self, name: str | None, activate: bool = False) -> list[Any]:
        """Select run `name` (or the active / newest one when None): every output, curves from offset 0."""
        self.ctx.manager.refresh()
        table, new_sig, _, compare_choices, active, names = self._table(None)
        if name not in names:
            found = self.ctx.manager.active()
            name = found.name if found else (names[0] if names else None)
        view, _ = self._read(None, name)
        return [table, new_sig, gr.update(choices=names, value=name), compare_choices, view, *self._render(view),
                gr.Timer(active=active or activate)]

    def tick(self, view: plots.LiveView | None, name: str | None, sig: str | None) -> list[Any]:
        self.ctx.manager.refresh()
        table, new_sig, run_choices, compare_choices, active, names = self._table(sig)
        if name not in names:
            return self.show(name)
        view, changed = self._read(view, name)
        rendered = list(self._render(view)) if changed else [gr.skip()] * 4
        return [table, new_sig, run_choices, compare_choices, view, *rendered, gr.Timer(active=active)]


def build_monitor(ctx: StudioContext) -> Monitor:
    """The run list and live view (call inside the Train tab)."""
    table = ctx.make(gr.Dataframe, "train.runs", headers=plots.RUN_COLUMNS, interactive=False, wrap=True,
                     max_height=260, elem_id="train-runs")
    with gr.Row():
        run = ctx.make(gr.Dropdown, "train.run", choices=[], scale=4, elem_id="train-run")
        refresh = ctx.make(gr.Button, "train.refresh", size="sm", scale=1, elem_id="train-refresh")
        stop = ctx.make(gr.Button, "train.stop", variant="stop", size="sm", scale=1, elem_id="train-stop")
        resume = ctx.make(gr.Button, "train.resume", size="sm", scale=1, elem_id="train-resume")
    message = gr.Markdown("", elem_id="train-monitor-message")
    status = gr.Markdown(ctx.t("msg.no_runs"), elem_id="train-status")
    with gr.Row():
        # no fixed height: with one, gr.LinePlot cuts its colour legend off
        loss = ctx.make(gr.LinePlot, "train.loss", x="step", y="loss", color="series", color_title="",
                        value=plots.loss_frame(plots.LiveView()), elem_id="train-loss")
        lr = ctx.make(gr.LinePlot, "train.lr", x="step", y="lr", value=plots.lr_frame(plots.LiveView()),
                      elem_id="train-lr")
    log = ctx.make(gr.Textbox, "train.log", lines=10, max_lines=30, interactive=False, visible=False,
                   autoscroll=True, elem_id="train-log")
    with ctx.make(gr.Accordion, "train.compare", open=False):
        compare = ctx.make(gr.Dropdown, "train.compare", choices=[], multiselect=True, elem_id="train-compare")
        compare_plot = ctx.make(gr.LinePlot, "train.compare_plot", x="step", y="loss", color="run", color_title="",
                                value=None, elem_id="train-compare-plot")
    monitor = Monitor(ctx, table, run, status, loss, lr, log, gr.State(None), gr.Timer(TICK_S, active=False),
                      gr.State(None), compare)
    ctx.shared["train_monitor"] = monitor

    monitor.timer.tick(monitor.tick, [monitor.view, run, monitor.table_sig], monitor.outputs,
                       show_progress="hidden", trigger_mode="always_last", **PRIVATE)
    ctx.demo.load(lambda name: monitor.show(name), run, monitor.outputs, **PRIVATE)
    run.input(monitor.show, run, monitor.outputs, **PRIVATE)
    refresh.click(monitor.show, run, monitor.outputs, **PRIVATE)

    def on_stop(name: str | None, lang: str) -> str:
        if not name:
            return ctx.t("msg.no_run", lang)
        ctx.manager.stop(name)
        return ctx.t("msg.stopping", lang, name=name)

    def on_resume(name: str | None, lang: str) -> list[Any]:
        if not name:
            return [ctx.t("msg.no_run", lang), *monitor.show(name)]
        state = ctx.manager.run(name).read_state().get("state")
        if state not in RESUMABLE:
            return [f"{name}: {state}", *monitor.show(name)]
        ctx.manager.resume(name)
        return [ctx.t("msg.resumed", lang, name=name), *monitor.show(name, activate=True)]

    lang = ctx.shared["lang"]
    stop.click(on_stop, [run, lang], message, **PRIVATE).then(
        lambda: gr.Timer(active=True), None, monitor.timer, **PRIVATE)
    resume.click(on_resume, [run, lang], [message, *monitor.outputs], **PRIVATE)

    def compare_frame(names: list[str] | None) -> Any:
        events = {}
        for name in names or []:
            try:
                events[name] = ctx.manager.run(name).events.read_all()
            except KeyError:
                continue
        frame = plots.compare_frame(events)
        return None if frame.empty else frame

    def compare_colors(names: list[str] | None) -> Any:
        return gr.update(color_map=plots.color_map(names or []))

    # The new runs' data first, then their colours (which redraws the chart with that data).
    compare.change(compare_frame, compare, compare_plot, **PRIVATE).then(
        compare_colors, compare, compare_plot, **PRIVATE)
    return monitor
