"""Run events -> the tables and status line the Train tab shows (pure functions over pandas).

The Train tab keeps one `LiveView` per browser session: the selected run, the byte offset read so
far in its events.jsonl, and the rows accumulated from it. Each timer tick feeds the new events
through `LiveView.feed`, so a long run costs a small read per tick, and a fresh view (page refresh,
UI restart) rebuilds the whole curve from offset 0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from app.jobs.manager import RunSummary
from app.ui.i18n_train import RUN_STRINGS, stage_text, state_label

Translate = Callable[..., str]  # (key, **values) -> text in the page's language


def english(key: str, **values: Any) -> str:
    text = RUN_STRINGS.get(key, {}).get("en", key)
    return text.format(**values) if values else text

LOSS_COLUMNS = ["step", "loss", "series"]
LR_COLUMNS = ["step", "lr"]
LOSS_SERIES = ("train", "eval")
COMPARE_COLUMNS = ["step", "loss", "run"]
RUN_COLUMNS = ["name", "state", "stage", "method", "dataset", "step", "loss", "best"]
MAX_POINTS = 200  # per curve sent to the page (`thin`): 3 pixels a point on a 600-pixel plot
PALETTE = ("#f97316", "#3b82f6", "#10b981", "#a855f7", "#ef4444", "#eab308", "#14b8a6", "#ec4899")


@dataclass
class LiveView:
    run: str | None = None
    offset: int = 0
    logs: list[dict[str, Any]] = field(default_factory=list)  # step events with a loss
    evals: list[dict[str, Any]] = field(default_factory=list)
    stage: dict[str, Any] | None = None  # the newest `stage` event
    last_log: dict[str, Any] | None = None  # the newest step event (for speed, ETA, memory)
    done: dict[str, Any] | None = None  # the `done` event of the newest attempt
    # What this browser session was last sent (the monitor sends only what changed).
    plotted_at: float = 0.0
    plotted_offset: int = 0
    status: str | None = None
    selected_at: float = 0.0  # time.monotonic() when the session's selection became this run

    def feed(self, events: Iterable[dict[str, Any]], offset: int) -> bool:
        """Take the events read up to byte `offset`; True when anything new arrived."""
        changed = False
        for event in events:
            changed = True
            kind = event.get("kind")
            if kind == "log" and not event.get("final") and event.get("loss") is not None:
                self.logs.append({k: event.get(k) for k in ("step", "loss", "lr", "total_steps")})
                self.last_log = event
            elif kind == "eval" and event.get("eval_loss") is not None:
                self.evals.append({"step": event.get("step"), "eval_loss": event["eval_loss"]})
            elif kind == "stage":
                self.stage = event
                if self.done is not None and self.last_log is not None:  # a resumed run: a new attempt
                    self.last_log = {k: v for k, v in self.last_log.items() if k not in ("tokens_per_s", "eta_s")}
                self.done = None
            elif kind == "done":
                self.done = event
        self.offset = offset
        return changed


def _typed(rows: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    """A frame whose step and value columns are numeric even when empty: gr.LinePlot picks each axis's
    scale from the dtypes, and an empty object column would make it a category axis for good."""
    frame = pd.DataFrame(rows, columns=columns)
    return frame.astype({c: "int64" if c == "step" else "float64" for c in columns[:2]})


def _dedupe(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """One row per step, the newest winning (a resumed run may log a step again)."""
    by_step: dict[Any, dict[str, Any]] = {}
    for row in rows:
        if row.get("step") is not None and row.get(key) is not None:
            by_step[row["step"]] = row
    return [by_step[s] for s in sorted(by_step)]


def thin(rows: list[dict[str, Any]], limit: int = MAX_POINTS) -> list[dict[str, Any]]:
    """At most about `limit` of the rows, for a curve: every stride-th one (a power of two, so the points
    kept stay the same as the run grows, until it doubles) and the newest. A plot a few hundred pixels
    wide shows no more, and the page's cost of redrawing grows with the points it is sent (a page left open
    on a run logging every step: Chromium 0.034 cores, 0.054 a hundred steps later; `bench/ui_watch_ab.py`)."""
    stride = 1
    while len(rows) > limit * stride:
        stride *= 2
    if stride == 1:
        return rows
    kept = rows[::stride]
    return kept if kept[-1] is rows[-1] else [*kept, rows[-1]]


def loss_frame(view: LiveView) -> pd.DataFrame:
    """Train and eval loss on one plot: columns step, loss, series.

    A series without points yet gets one anchor point (a one-point line draws nothing): gr.LinePlot
    fixes its axes and colour legend when it first draws, and only swaps data afterwards, so every
    series it will ever show must be there, with numbers, from the start.
    """
    rows = [{"step": r["step"], "loss": float(r["loss"]), "series": "train"}
            for r in thin(_dedupe(view.logs, "loss"))]
    rows += [{"step": r["step"], "loss": float(r["eval_loss"]), "series": "eval"}
             for r in _dedupe(view.evals, "eval_loss")]
    start = (rows[0]["step"], rows[0]["loss"]) if rows else (0, 0.0)
    present = {r["series"] for r in rows}
    rows += [{"step": start[0], "loss": start[1], "series": s} for s in LOSS_SERIES if s not in present]
    return _typed(rows, LOSS_COLUMNS)


def lr_frame(view: LiveView) -> pd.DataFrame:
    rows = [{"step": r["step"], "lr": float(r["lr"])} for r in thin(_dedupe(view.logs, "lr"))]
    return _typed(rows or [{"step": 0, "lr": 0.0}], LR_COLUMNS)  # an anchor, as in loss_frame


def compare_frame(runs: dict[str, list[dict[str, Any]]]) -> pd.DataFrame:
    """Training loss of several runs (name -> events) on one plot: columns step, loss, run."""
    rows = []
    for name, events in runs.items():
        view = LiveView(run=name)
        view.feed(events, 0)
        rows += [{"step": r["step"], "loss": float(r["loss"]), "run": name}
                 for r in thin(_dedupe(view.logs, "loss"))]
    return _typed(rows, COMPARE_COLUMNS)


def color_map(names: Iterable[str]) -> dict[str, str]:
    """A colour for each series present. gr.LinePlot redraws its chart (axes, colour legend) only when a
    property such as color_map changes; data updates alone keep the old legend. Send this in an update
    of its own, after the one that set the new data (an update carrying both draws the old data)."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(dict.fromkeys(names))}


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def status_line(view: LiveView, state: dict[str, Any], t: Translate = english, lang: str = "en") -> str:
    """state · stage · step/total · loss · tokens/s · ETA · memory (Markdown, one line, in `lang`)."""
    current = state.get("state")
    if view.done and current in ("running", "queued", None):
        current = view.done.get("state", current)  # the worker writes its end before state.json
    current = current or "?"
    parts = [f"**{view.run}**: **{state_label(current, t)}**"]
    saving = state.get("saving") if current == "running" else None
    if saving:
        parts.append(t("status.saving_now", what=saving.get("what", "")))
    elif view.stage and current in ("running", "queued"):
        parts.append(stage_text(view.stage, lang, t))
    log = view.last_log
    if log:
        total = log.get("total_steps")
        parts.append(t("status.step_of", step=log.get("step"), total=total) if total
                     else t("status.step", step=log.get("step")))
        if log.get("loss") is not None:
            parts.append(t("status.loss", loss=float(log["loss"])))
        if current == "running":
            if log.get("tokens_per_s") is not None:
                parts.append(t("status.speed", speed=float(log["tokens_per_s"])))
            if log.get("eta_s") is not None:
                parts.append(t("status.eta", eta=format_duration(log["eta_s"])))
        if log.get("mem_mb") is not None:
            parts.append(t("status.mem", gib=float(log["mem_mb"]) / 1024))
    error = (view.done or {}).get("error") or state.get("error")
    if current in ("failed", "unreadable", "stopped") and error:  # stopped: why it was stopped by force
        from app.ui.i18n_train import translate_problem

        parts.append(t("status.error", error=" / ".join(translate_problem(line, lang)
                                                          for line in str(error).splitlines())))
    return " · ".join(parts)


def runs_frame(summaries: list[RunSummary], t: Translate = english) -> pd.DataFrame:
    """The run table; headers and states in the page's language."""
    rows = []
    for s in summaries:
        step = "" if s.step is None else f"{s.step}/{s.total_steps}" if s.total_steps else str(s.step)
        loss = "" if s.loss is None else f"{s.loss:.4f}"
        rows.append([s.name, state_label(s.state, t), s.stage, s.method, s.dataset, step, loss, best_text(s)])
    return pd.DataFrame(rows, columns=[t(f"col.{c}") for c in RUN_COLUMNS])


def best_text(summary: RunSummary) -> str:
    """★ checkpoint-N (eval loss) of a run's best checkpoint (its newest `best` event), or ""."""
    best = getattr(summary, "best", None)
    if isinstance(best, str):
        return best
    return f"★ checkpoint-{best['step']} ({best['eval_loss']:.4f})" if best else ""


def with_best(summaries: list[RunSummary]) -> list[RunSummary]:
    """Fill `best` of summaries built by hand (the manager's carry it already, read incrementally: the run
    monitor never calls this per tick)."""
    from pathlib import Path

    from app.train.runfolder import EventLog

    for s in summaries:
        if getattr(s, "best", None) is None:
            found = [e for e in EventLog(Path(s.path) / "events.jsonl").read_all()
                     if e.get("kind") == "best" and e.get("eval_loss") is not None]
            s.best = found[-1] if found else None
    return summaries


def memory_frame(estimate: Any, t: Translate = english) -> pd.DataFrame:
    """A MemoryEstimate as a small table: part, MB (in the page's language)."""
    rows = []
    for part, mb in estimate.rows():
        key = f"mem.{part}"
        label = t(key)
        rows.append([part if label == key else label, round(mb, 1)])
    return pd.DataFrame(rows, columns=[t("col.part"), t("col.mb")])
