"""The numbers each training stage is judged by, as curves (pure functions over run events).

The worker's `log` events carry every number a trainer reports ("/" turned into "_"); this picks the
ones that tell whether a stage is learning:
    dpo (sigmoid/ipo/hinge/simpo)  rewards_margins, rewards_accuracies
    dpo with pref_loss orpo        log_odds_ratio, rewards_accuracies
    kto                            rewards_margins (when both kinds are in a batch), kl
    rm                             accuracy (pairs ranked right), margin
    grpo                           reward, kl, and each reward function's mean; completion length apart
SFT and pre-training have the loss curve only.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from app.ui.plots import thin

COLUMNS = ["step", "value", "series"]
SERIES: dict[str, tuple[str, ...]] = {
    "dpo": ("rewards_margins", "rewards_accuracies", "log_odds_ratio"),
    "kto": ("rewards_margins", "kl"),
    "rm": ("accuracy", "margin"),
    "grpo": ("reward", "kl"),
}
LENGTH = "completions_mean_length"


def has_curves(stage: str | None) -> bool:
    """Whether a stage reports numbers of its own beyond the loss (SFT and pre-training do not)."""
    return (stage or "") in SERIES


def series_for(stage: str | None, events: list[dict[str, Any]]) -> list[str]:
    """The metric series of a run, in a fixed order (GRPO adds each reward function's mean)."""
    wanted = list(SERIES.get(stage or "", ()))
    steps = [e for e in events if e.get("kind") == "log" and not e.get("final")]
    present = set().union(*(e.keys() for e in steps)) if steps else set()
    if stage == "grpo":
        wanted += sorted(k for k in present if k.startswith("rewards_") and k.endswith("_mean"))
    return [s for s in wanted if s in present]


def _typed(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame.astype({"step": "int64", "value": "float64"})


def metrics_frame(stage: str | None, events: list[dict[str, Any]]) -> pd.DataFrame:
    """step, value, series of the stage's metrics (newest value per step)."""
    names = series_for(stage, events)
    by_key: dict[tuple[int, str], float] = {}
    for event in events:
        if event.get("kind") != "log" or event.get("final") or event.get("step") is None:
            continue
        for name in names:
            if isinstance(event.get(name), (int, float)):
                by_key[(int(event["step"]), name)] = float(event[name])
    series: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for (step, name), value in sorted(by_key.items()):
        series[name].append({"step": step, "value": value, "series": name})
    return _typed([row for rows in series.values() for row in thin(rows)])  # thinned as the loss curve is


def length_frame(events: list[dict[str, Any]]) -> pd.DataFrame:
    """GRPO's mean completion length per step (tokens)."""
    by_step = {int(e["step"]): float(e[LENGTH]) for e in events
               if e.get("kind") == "log" and not e.get("final") and isinstance(e.get(LENGTH), (int, float))}
    return _typed(thin([{"step": s, "value": v, "series": "completion length"} for s, v in sorted(by_step.items())]))
