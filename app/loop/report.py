"""The loop's history as a table (the panel's and `ftstudio loop status`'s), and its status in a few lines."""

from __future__ import annotations

import time
from typing import Any

COLUMNS = ("version", "when", "event", "data", "metric", "candidate", "served", "promoted", "note")


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else ""


def _data(entry: dict[str, Any]) -> str:
    data = entry.get("data") or {}
    if not data:
        return ""
    text = f"{data.get('feedback_rows', data.get('feedback_total', '?'))} feedback"
    if data.get("replay_rows"):
        text += f" + {data['replay_rows']} replay ({','.join(data.get('replay_from') or [])})"
    return text + (f" → {data['dataset']}" if data.get("dataset") else "")


def _score(scores: dict[str, float] | None, metric: str) -> str:
    value = (scores or {}).get(metric)
    return "" if value is None else f"{value:.4g}"


def history_rows(entries: list[dict[str, Any]], served: int | None = None) -> list[list[Any]]:
    """One row per history line, newest first; the served version is marked with ★."""
    rows = []
    for entry in entries:
        kind = entry["kind"]
        version = entry.get("version")
        scores = entry.get("scores") or {}
        metric = entry.get("metric") or ""
        mark = " ★" if version == served and kind in ("start", "candidate") and entry.get("promoted") else ""
        if kind == "start":
            note = f"serves {entry.get('adapter') or 'the base model'}"
        elif kind == "rollback":
            note = f"from v{entry.get('from_version')}"
        else:
            note = entry.get("reason", "")
        rows.append([f"v{version}{mark}", _when(entry.get("t")), kind, _data(entry), metric,
                     _score(scores.get("candidate"), metric), _score(scores.get("served"), metric),
                     "yes" if entry.get("promoted") and kind != "rollback" else ("" if kind == "rollback" else "no"),
                     note])
    return rows[::-1]


def status_lines(status: Any) -> list[str]:
    """Served version, feedback counts, the trigger and what the loop is doing (a LoopStatus)."""
    counts = status.counts
    policy = status.policy
    lines = []
    if policy is None:
        lines.append("No policy yet: save one (panel or `ftstudio loop policy`).")
    else:
        served = status.served
        lines.append(f"Model '{policy.model_name}': serving version {served.number if served else 0} "
                     f"({(served.adapter if served else policy.adapter) or 'the base model'}).")
        trigger = "on" if policy.enabled else "off (Check now / `ftstudio loop run-once`)"
        lines.append(f"Trigger: {status.new_rows} new of {policy.min_new_rows} rows in {status.feedback_set} "
                     f"({policy.method}); automatic checks {trigger}.")
    lines.append(f"Feedback: {counts.events} ({counts.up} up, {counts.down} down, {counts.corrections} corrections) "
                 f"→ feedback_sft {counts.sft_rows} rows, feedback_pref {counts.pref_rows} pairs.")
    activity = status.activity
    lines.append(f"Now: {activity.get('state', 'idle')} — {activity.get('message', '')}")
    return lines
