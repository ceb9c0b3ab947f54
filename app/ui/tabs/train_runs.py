"""The Train tab's run monitor: run list, live curves of the selected run, stop/resume, comparison.

Curves come from the run's events.jsonl, read by byte offset on a gr.Timer into a LiveView per page
(`Sessions`). Watching must cost the training run nothing measurable (issue: 1.7x slower with a
browser open, at a 1 s timer that re-sent both plots on every step). So:

- the timer ticks every TICK_S seconds, and only while some run is queued or running, as a frontend-only
  event (app.ui.poll): the page posts the tick's inputs to the studio's route and applies the answer,
  without the two passes over Gradio's loading-status table a backend event costs it (app.ui.idle);
- the session's view lives in the studio (`Sessions`, keyed by a random key the page makes when it loads),
  since a frontend-only event cannot read a gr.State;
- a tick sends only what changed: the status line when its text changed; the run table at once when a
  run appears or changes state, its step and loss columns (which the status line already shows live)
  with the plots, at most every PLOT_EVERY_S seconds (each update makes the browser re-draw the whole
  Vega chart or table), and at once when the run ends; the run pickers only when the list of names does;
- a tick is one request for the whole tab: what else follows the timer (the stage curves, Stop's line)
  joins it through `follow` instead of a handler of its own;
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
  pick. A mismatch that outlives STALE_S is the page's own choice (its `show` failed): the tick follows it.
  A tick during which a `show` replaced the session's view changes nothing either;
- a pick made while the previous pick's `show` is still running is queued, not dropped (always_last).
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from app.train.runfolder import ACTIVE_STATES
from app.ui import plots
from app.ui.context import StudioContext
from app.ui.poll import poll

TICK_S = 5.0
PLOT_EVERY_S = 8.0
STALE_S = 10.0  # longer than a tick request waits under load, short enough to heal a failed show
RESUMABLE = ("stopped", "failed")
PRIVATE: dict[str, Any] = {"api_visibility": "private"}
KEY_JS = "() => Math.random().toString(36).slice(2) + Date.now().toString(36)"  # one per page load


@dataclass
class Session:
    """What one page was last sent: the run it shows and its curves (`view`), the run table's signature
    (`sig`), and what each follower keeps (`memo`)."""
    view: plots.LiveView | None = None
    sig: tuple | None = None
    memo: dict[str, Any] = field(default_factory=dict)


class Sessions:
    """The pages' sessions by key, the MAX most recently used (a reloaded page makes a new key)."""
    MAX = 64

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._by_key: OrderedDict[str, Session] = OrderedDict()

    def get(self, key: str | None) -> Session:
        with self.lock:
            session = self._by_key.pop(key or "", None) or Session()
            self._by_key[key or ""] = session
            while len(self._by_key) > self.MAX:
                self._by_key.popitem(last=False)
            return session


@dataclass
class Monitor:
    ctx: StudioContext
    table: Any
    run: Any
    status: Any
    loss: Any
    lr: Any
    log: Any
    key: Any
    timer: Any
    compare: Any
    sessions: Sessions = field(default_factory=Sessions)
    followers: list[tuple[Callable[..., tuple], list[Any], list[Any]]] = field(default_factory=list)

    @property
    def outputs(self) -> list[Any]:
        """What `show` and `tick` fill, in order."""
        return [self.table, self.run, self.compare, self.loss, self.lr, self.status, self.log, self.timer]

    def follow(self, fn: Callable[..., tuple], inputs: list[Any], outputs: list[Any]) -> None:
        """Run fn(run name, session, *inputs) -> outputs on every tick, inside the monitor's own (before `wire`).
        Inputs are components whose value lives in the page; what fn keeps between ticks goes in session.memo."""
        self.followers.append((fn, inputs, outputs))

    def wire(self) -> None:
        """Register the one tick handler (app.ui.poll): the monitor's outputs, then each follower's."""
        extra_in = [c for _, inputs, _ in self.followers for c in inputs]
        extra_out = [c for _, _, outputs in self.followers for c in outputs]

        def tick(key: str | None, name: str | None, lang_: str, *values: Any) -> list[Any]:
            out = self.tick(key, name, lang_)
            session = self.sessions.get(key)
            for fn, inputs, _ in self.followers:
                out.extend(fn(name, session, *values[:len(inputs)]))
                values = values[len(inputs):]
            return out

        poll(self.timer, tick, [self.key, self.run, self.ctx.shared["lang"], *extra_in], [*self.outputs, *extra_out])

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
            return skip, sig, skip, skip, active, names
        choices = names if old_choices is None else keep_order(old_choices, names)
        pickers = (skip, skip) if choices == old_choices else (gr.update(choices=choices), gr.update(choices=choices))
        return frame, (shape, choices, full), *pickers, active, names

    def _read(self, view: plots.LiveView | None, name: str | None) -> plots.LiveView:
        """`view` with run `name`'s new events fed in (a fresh view for another run)."""
        if view is None or view.run != name:
            view = plots.LiveView(run=name, selected_at=time.monotonic())
        if not name:
            return view
        try:
            run = self.ctx.manager.run(name)
        except KeyError:
            return plots.LiveView(run=None)
        view.feed(*run.events.read_from(view.offset))
        return view

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

    def show(self, key: str | None, name: str | None, activate: bool = False, lang: str = "en") -> list[Any]:
        """Select run `name` (or the active / newest one when None) for page `key`: every output, curves from
        offset 0."""
        self.ctx.manager.refresh()
        table, new_sig, _, compare_choices, active, names = self._table(None, lang)
        if name not in names:
            found = self.ctx.manager.active()
            name = found.name if found else (names[0] if names else None)
        view = self._read(None, name)
        status, log, _ = self._status(view, lang)
        view.plotted_at, view.status = time.monotonic(), status
        view.plotted_offset = view.offset
        session = self.sessions.get(key)
        with self.sessions.lock:
            session.view, session.sig = view, new_sig
        return [table, gr.update(choices=names, value=name), compare_choices, plots.loss_frame(view),
                plots.lr_frame(view), status, log, gr.Timer(active=active or activate)]

    def tick(self, key: str | None, name: str | None, lang: str = "en") -> list[Any]:
        session = self.sessions.get(key)
        before = session.view
        skipped = [gr.skip()] * len(self.outputs)
        if self.stale(before, name):
            return skipped
        due = time.monotonic() - (before.plotted_at if before else 0.0) >= PLOT_EVERY_S
        table, new_sig, run_choices, compare_choices, active, names = self._table(session.sig, lang, numbers_due=due)
        if name not in names:
            return self.show(key, name, lang=lang)
        view = self._read(before, name)
        status, log, ended = self._status(view, lang)
        skip = gr.skip()
        status_out = skip if status == view.status else status
        log_out = log if status_out is not skip else skip
        due = due or ended
        plot = view.offset != view.plotted_offset and due
        with self.sessions.lock:
            if session.view is not before:  # a `show` replaced the view meanwhile: its outputs are the newer
                return skipped
            if plot:
                view.plotted_at, view.plotted_offset = time.monotonic(), view.offset
            view.status = status
            session.view, session.sig = view, new_sig
        plots_out = [plots.loss_frame(view), plots.lr_frame(view)] if plot else [skip, skip]
        # Keep ticking until the plots show everything the run wrote (a run that just ended included).
        pending = view.offset != view.plotted_offset
        timer = skip if active or pending else gr.update(active=False)
        return [table, run_choices, compare_choices, *plots_out, status_out, log_out, timer]


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
    key = gr.Textbox("", visible="hidden", elem_id="train-monitor-key")
    monitor = Monitor(ctx, table, run, status, loss, lr, log, key, gr.Timer(TICK_S, active=False), compare)
    ctx.shared["train_monitor"] = monitor

    lang = ctx.shared["lang"]
    show = lambda key_, name, lang_: monitor.show(key_, name, lang=lang_)  # noqa: E731
    ctx.demo.load(None, None, key, js=KEY_JS, **PRIVATE).then(show, [key, run, lang], monitor.outputs, **PRIVATE)
    run.input(show, [key, run, lang], monitor.outputs, trigger_mode="always_last", **PRIVATE)
    refresh.click(show, [key, run, lang], monitor.outputs, **PRIVATE)
    lang.change(show, [key, run, lang], monitor.outputs, **PRIVATE)

    def on_stop(name: str | None, lang: str) -> str:
        if not name:
            return ctx.t("msg.no_run", lang)
        try:
            ctx.manager.stop(name)
        except KeyError:
            return ctx.t("msg.no_such_run", lang, name=name)
        return ctx.t("msg.stopping", lang, name=name)

    def on_resume(key_: str, name: str | None, lang: str) -> list[Any]:
        if not name:
            return [ctx.t("msg.no_run", lang), *monitor.show(key_, name, lang=lang)]
        try:
            state = ctx.manager.run(name).read_state().get("state")
            if state not in RESUMABLE:
                return [ctx.t("msg.not_resumable", lang, name=name, state=ctx.t(f"state.{state}", lang)),
                        *monitor.show(key_, name, lang=lang)]
            ctx.manager.resume(name)
        except (KeyError, RuntimeError) as exc:
            return [f"⚠ {exc}", *monitor.show(key_, name, lang=lang)]
        return [ctx.t("msg.resumed", lang, name=name), *monitor.show(key_, name, activate=True, lang=lang)]
    stop.click(on_stop, [run, lang], message, **PRIVATE).then(
        lambda: gr.Timer(active=True), None, monitor.timer, **PRIVATE)

    def settle(name: str | None, session: Session, said: str, lang_: str) -> tuple[Any]:
        """Stop's "stopping ..." line goes once the run it names has ended (the status line says how)."""
        view = session.view
        ended = view is not None and view.run == name and view.done is not None
        return ("" if ended and name and said == ctx.t("msg.stopping", lang_, name=name) else gr.skip(),)

    monitor.follow(settle, [message, lang], [message])
    resume.click(on_resume, [key, run, lang], [message, *monitor.outputs], **PRIVATE)

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
