"""The Train tab's run monitor: run list, live curves of the selected run, stop/resume, comparison.

Curves come from the run's events.jsonl, read by byte offset on a gr.Timer into a per-session
LiveView (gr.State). Watching must cost the training run nothing measurable (issue: 1.7x slower with a
browser open, at a 1 s timer that re-sent both plots on every step). So:

- the timer ticks every TICK_S seconds, and only while some run is queued or running. Each tick costs
  the page two passes over Gradio's loading-status table (app.ui.idle says what keeps it short): at 5 s
  instead of 2.5 s Chromium used 0.035 instead of 0.049 cores while a run trained;
- a tick sends only what changed: the status line when its text changed; the run table at once when a
  run appears or changes state, its step and loss columns (which the status line already shows live)
  with the plots, at most every PLOT_EVERY_S seconds (each update makes the browser re-draw the whole
  Vega chart or table), and at once when the run ends; the run pickers only when the list of names does;
- a tick is a plain request (queue=False), not a queue round trip with status messages per output;
- a tick is one request for the whole tab: what else follows the timer (the stage curves) joins it
  through `follow` instead of a handler of its own. Each event the page dispatches costs it a pass
  over the loading status of every component that has had one (Gradio's update_loading_stati_state,
  most of Chromium's CPU while a run trains), so two handlers on one timer cost twice that;
- the queue is driven by the studio's scheduler thread (app.jobs.scheduler), not by ticks;
- run summaries are incremental (app.jobs.summaries): a tick reads only the new bytes of each log.

The selection is the user's, with two sessions (or one page and a colleague's runs) changing the list:
- a tick never sets the run picker's value, and never reorders its choices: it keeps the order the page
  shows and appends new runs. The run list's own order changes under it (newest job.yaml first, and a
  worker rewrites its job.yaml when it starts), and the dropdown maps a click to an index: a list that
  re-ordered while open turned a click on one run into a pick of another;
- a tick carries the run the page showed when it was sent; one that names another run than the session's
  view, within STALE_S of that view's selection (a pick, Start, Refresh, ...), left the page before the
  selection reached it and changes nothing: it would put the old run's status and view back over the
  pick. A mismatch that outlives STALE_S is the page's own choice (its `show` failed): the tick follows it;
- a pick made while the previous pick's `show` is still running is queued, not dropped (always_last).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from app.train.runfolder import ACTIVE_STATES
from app.ui import plots
from app.ui.context import StudioContext

TICK_S = 5.0
PLOT_EVERY_S = 8.0
STALE_S = 10.0  # longer than a tick request waits under load, short enough to heal a failed show
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
    followers: list[tuple[Callable[..., tuple], list[Any], list[Any]]] = field(default_factory=list)

    @property
    def outputs(self) -> list[Any]:
        """What `show` fills, in order."""
        return [self.table, self.table_sig, self.run, self.compare, self.view, self.loss, self.lr, self.status,
                self.log, self.timer]

    def follow(self, fn: Callable[..., tuple], inputs: list[Any], outputs: list[Any]) -> None:
        """Run fn(run name, view, *inputs) -> outputs on every tick, inside the monitor's own (before `wire`)."""
        self.followers.append((fn, inputs, outputs))

    def wire(self) -> None:
        """Register the one tick handler: the monitor's outputs, then each follower's."""
        extra_in = [c for _, inputs, _ in self.followers for c in inputs]
        extra_out = [c for _, _, outputs in self.followers for c in outputs]

        def tick(view: Any, name: str | None, sig: tuple | None, lang_: str, *values: Any) -> list[Any]:
            out = self.tick(view, name, sig, lang_)
            for fn, inputs, _ in self.followers:
                out.extend(fn(name, view, *values[:len(inputs)]))
                values = values[len(inputs):]
            return out

        # queue=False: one plain request per tick, not a queue round trip whose status messages the page
        # processes for every output; the tick is quick (it reads a few bytes) and needs no queue slot.
        lang = self.ctx.shared["lang"]
        self.timer.tick(tick, [self.view, self.run, self.table_sig, lang, *extra_in], [*self.outputs, *extra_out],
                        show_progress="hidden", queue=False, **PRIVATE)

    @staticmethod
    def stale(view: plots.LiveView | None, name: str | None) -> bool:
        """Whether a tick for run `name` left the page before the session's newest selection (`view`)."""
        return view is not None and name != view.run and time.monotonic() - view.selected_at < STALE_S

    def _table(self, sig: tuple | None, lang: str, numbers_due: bool = True) -> tuple[Any, ...]:
        """(table, its signature, run picker, compare picker, whether a run is active, run names); each
        of the first four is gr.skip() when the page already shows it. The signature holds the table's
        shape, the pickers' choices in the page's order, and the table's full text."""
        summaries = self.ctx.manager.summaries()
        names = [s.name for s in summaries]
        active = any(s.state in ACTIVE_STATES for s in summaries)
        frame = plots.runs_frame(summaries, self.translator(lang))
        shape = json.dumps([lang, [(s.name, s.state, s.error) for s in summaries]])
        full = frame.to_json()
        old_shape, old_choices, old_full = sig or ("", None, "")
        skip = gr.skip()
        if shape == old_shape and (full == old_full or not numbers_due):
            return skip, skip, skip, skip, active, names
        choices = names if old_choices is None else keep_order(old_choices, names)
        pickers = (skip, skip) if choices == old_choices else (gr.update(choices=choices), gr.update(choices=choices))
        return frame, (shape, choices, full), *pickers, active, names

    def _read(self, view: plots.LiveView | None, name: str | None) -> tuple[plots.LiveView, bool]:
        if view is None or view.run != name:
            view = plots.LiveView(run=name, selected_at=time.monotonic())
        if not name:
            return view, True
        try:
            run = self.ctx.manager.run(name)
        except KeyError:
            return plots.LiveView(run=None), True
        events, offset = run.events.read_from(view.offset)
        fresh = view.offset == 0
        return view, view.feed(events, offset) or fresh

    def _status(self, view: plots.LiveView, lang: str) -> tuple[str, Any, bool]:
        """(status line, log box update, whether the run has ended)."""
        if not view.run:
            return self.ctx.t("msg.no_runs", lang), gr.update(visible=False, value=""), True
        run = self.ctx.manager.run(view.run)
        state = run.read_state()
        failed = state.get("state") == "failed" or (view.done or {}).get("state") == "failed"
        log = gr.update(visible=True, value=run.tail_log()) if failed else gr.update(visible=False)
        ended = view.done is not None or state.get("state") not in ACTIVE_STATES
        return plots.status_line(view, state, self.translator(lang), lang), log, ended

    def translator(self, lang: str) -> plots.Translate:
        return lambda key, **values: self.ctx.t(key, lang, **values)

    def show(self, name: str | None, activate: bool = False, lang: str = "en") -> list[Any]:
        """Select run `name` (or the active / newest one when None): every output, curves from offset 0."""
        self.ctx.manager.refresh()
        table, new_sig, _, compare_choices, active, names = self._table(None, lang)
        if name not in names:
            found = self.ctx.manager.active()
            name = found.name if found else (names[0] if names else None)
        view, _ = self._read(None, name)
        status, log, _ = self._status(view, lang)
        view.plotted_at, view.status = time.monotonic(), status
        view.plotted_offset = view.offset
        return [table, new_sig, gr.update(choices=names, value=name), compare_choices, view,
                plots.loss_frame(view), plots.lr_frame(view), status, log, gr.Timer(active=active or activate)]

    def tick(self, view: plots.LiveView | None, name: str | None, sig: tuple | None, lang: str = "en") -> list[Any]:
        if self.stale(view, name):
            return [gr.skip()] * len(self.outputs)
        due = time.monotonic() - (view.plotted_at if view else 0.0) >= PLOT_EVERY_S
        table, new_sig, run_choices, compare_choices, active, names = self._table(sig, lang, numbers_due=due)
        if name not in names:
            return self.show(name, lang=lang)
        view, changed = self._read(view, name)
        status, log, ended = self._status(view, lang)
        skip = gr.skip()
        status_out = skip if status == view.status else status
        log_out = log if status_out is not skip else skip
        due = due or ended
        if view.offset != view.plotted_offset and due:
            plots_out = [plots.loss_frame(view), plots.lr_frame(view)]
            view.plotted_at, view.plotted_offset = time.monotonic(), view.offset
        else:
            plots_out = [skip, skip]
        view.status = status
        # Keep ticking until the plots show everything the run wrote (a run that just ended included).
        pending = view.offset != view.plotted_offset
        timer = skip if active or pending else gr.Timer(active=False)
        return [table, new_sig, run_choices, compare_choices, view, *plots_out, status_out, log_out, timer]


def keep_order(shown: list[str], names: list[str]) -> list[str]:
    """`names` in the order the page shows them (`shown`), new ones appended: the choices of an open
    dropdown never move under the pointer."""
    present, known = set(names), set(shown)
    return [n for n in shown if n in present] + [n for n in names if n not in known]


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

    lang = ctx.shared["lang"]
    show = lambda name, lang_: monitor.show(name, lang=lang_)  # noqa: E731
    ctx.demo.load(show, [run, lang], monitor.outputs, **PRIVATE)
    run.input(show, [run, lang], monitor.outputs, trigger_mode="always_last", **PRIVATE)
    refresh.click(show, [run, lang], monitor.outputs, **PRIVATE)
    lang.change(show, [run, lang], monitor.outputs, **PRIVATE)

    def on_stop(name: str | None, lang: str) -> str:
        if not name:
            return ctx.t("msg.no_run", lang)
        try:
            ctx.manager.stop(name)
        except KeyError:
            return ctx.t("msg.no_such_run", lang, name=name)
        return ctx.t("msg.stopping", lang, name=name)

    def on_resume(name: str | None, lang: str) -> list[Any]:
        if not name:
            return [ctx.t("msg.no_run", lang), *monitor.show(name, lang=lang)]
        try:
            state = ctx.manager.run(name).read_state().get("state")
            if state not in RESUMABLE:
                return [ctx.t("msg.not_resumable", lang, name=name, state=ctx.t(f"state.{state}", lang)),
                        *monitor.show(name, lang=lang)]
            ctx.manager.resume(name)
        except (KeyError, RuntimeError) as exc:
            return [f"⚠ {exc}", *monitor.show(name, lang=lang)]
        return [ctx.t("msg.resumed", lang, name=name), *monitor.show(name, activate=True, lang=lang)]
    stop.click(on_stop, [run, lang], message, **PRIVATE).then(
        lambda: gr.Timer(active=True), None, monitor.timer, **PRIVATE)

    def settle(name: str | None, view: plots.LiveView | None, said: str, lang_: str) -> tuple[Any]:
        """Stop's "stopping ..." line goes once the run it names has ended (the status line says how)."""
        ended = view is not None and view.run == name and view.done is not None
        return ("" if ended and name and said == ctx.t("msg.stopping", lang_, name=name) else gr.skip(),)

    monitor.follow(settle, [message, lang], [message])
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
