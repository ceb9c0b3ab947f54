"""The training side as Prometheus metrics, read from the run folders at scrape time.

For every run whose state.json says `running`: its step, total steps, loss, learning rate, tokens/s and
memory from the newest `log` event (only the tail of events.jsonl is read, so a long run costs the same
as a short one), and how many runs are in each state. Nothing here talks to the worker: the run folder is
the contract (DESIGN.md), so the API server, `ftstudio metrics` or any process that sees runs/ can export it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from app.train.runfolder import STATES

TAIL_BYTES = 64 * 1024

# metric name, help, the log event's field, scale
FIELDS = (
    ("ftstudio_train_step", "Optimizer steps done.", "step", 1.0),
    ("ftstudio_train_total_steps", "Optimizer steps planned.", "total_steps", 1.0),
    ("ftstudio_train_epoch", "Epochs done (fractional).", "epoch", 1.0),
    ("ftstudio_train_loss", "Training loss at the newest logged step.", "loss", 1.0),
    ("ftstudio_train_learning_rate", "Learning rate at the newest logged step.", "lr", 1.0),
    ("ftstudio_train_tokens_per_second", "Real (non-padding) training tokens per second.", "tokens_per_s", 1.0),
    ("ftstudio_train_memory_bytes", "Peak memory the worker reported.", "mem_mb", 2.0**20),
)


def last_log_event(events_file: Path) -> dict[str, Any] | None:
    """The newest `log` event with a step (not the final summary), read from the end of the file."""
    try:
        with open(events_file, "rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - TAIL_BYTES))
            tail = handle.read()
    except OSError:
        return None
    for raw in reversed(tail.splitlines()):
        try:
            event = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue  # the cut first line, or a line being written
        if isinstance(event, dict) and event.get("kind") == "log" and not event.get("final"):
            return event
    return None


def _state(folder: Path) -> str:
    try:
        state = json.loads((folder / "state.json").read_text(encoding="utf-8")).get("state")
    except (OSError, json.JSONDecodeError, AttributeError):
        return "unknown"
    return state if state in STATES else "unknown"


class TrainingCollector(Collector):
    def __init__(self, runs_dir: Path):
        self.runs_dir = Path(runs_dir)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        states: Counter[str] = Counter()
        families = {name: GaugeMetricFamily(name, text, labels=["run"]) for name, text, _, _ in FIELDS}
        running = GaugeMetricFamily("ftstudio_train_running", "1 for each run training now.", labels=["run"])
        try:
            folders = sorted(p for p in self.runs_dir.iterdir() if p.is_dir() and (p / "state.json").is_file())
        except OSError:
            folders = []
        for folder in folders:
            state = _state(folder)
            states[state] += 1
            if state != "running":
                continue
            running.add_metric([folder.name], 1.0)
            event = last_log_event(folder / "events.jsonl") or {}
            for name, _, field, scale in FIELDS:
                value = event.get(field)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    families[name].add_metric([folder.name], float(value) * scale)
        runs = GaugeMetricFamily("ftstudio_train_runs", "Runs in the runs folder, by state.", labels=["state"])
        for state in (*STATES, "unknown"):
            runs.add_metric([state], float(states.get(state, 0)))
        yield runs
        yield running
        yield from families.values()
