"""The training mix of one candidate: every feedback row, plus a replayed sample of the original data.

With `share` s of the mix drawn from the original sets, n feedback rows get round(n * s / (1 - s))
replayed rows beside them (at most as many as the original sets hold), sampled with a seed. Replay
keeps a model that learns from a handful of corrections from forgetting what it was trained for.
The mix is registered as its own catalogue set (`loop-<model>-v<N>`), so the run that trains on it
names exactly what it saw, and anyone can train on it again.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from app.data.catalogue import load_catalogue
from app.data.errors import DataError
from app.data.formats import load_examples
from app.loop.history import LoopError
from app.loop.rows import SetError, example_row, write_set


@dataclass
class Mix:
    name: str
    stage: str
    feedback_set: str
    feedback_rows: int
    replay_rows: int = 0
    replay_from: list[str] = field(default_factory=list)
    note: str | None = None  # why less was replayed than asked

    def summary(self) -> dict:
        return {"dataset": self.name, "feedback_set": self.feedback_set, "feedback_rows": self.feedback_rows,
                "replay_rows": self.replay_rows, "replay_from": self.replay_from, "note": self.note}


def _examples(dataset_dir: Path, name: str, stage: str) -> list[dict]:
    try:
        spec = load_catalogue(dataset_dir).get(name)
    except DataError as exc:
        raise LoopError(f"Cannot read the catalogue in {dataset_dir}: {exc}") from None
    if spec is None:
        raise LoopError(f"There is no dataset {name!r} in {dataset_dir / 'dataset_info.json'}.")
    try:
        return load_examples(spec, stage)
    except DataError as exc:
        raise LoopError(f"Dataset {name!r} cannot be used for {stage}: {str(exc).splitlines()[0]}") from None


def replay_count(feedback_rows: int, share: float, available: int) -> int:
    if share <= 0 or available <= 0:
        return 0
    return min(available, round(feedback_rows * share / (1 - share)))


def build_mix(dataset_dir: Path, name: str, stage: str, feedback_set: str, replay: list[tuple[Path, str]],
              share: float, seed: int) -> Mix:
    """Write and register the mix; `replay` lists (catalogue folder, set name) of the original data."""
    feedback = _examples(dataset_dir, feedback_set, stage)
    mix = Mix(name, stage, feedback_set, len(feedback))
    pool: list[dict] = []
    skipped = []
    for folder, set_name in replay:
        try:
            rows = _examples(folder, set_name, stage)
        except LoopError as exc:
            skipped.append(str(exc))
            continue
        pool += rows
        mix.replay_from.append(set_name)
    rng = random.Random(seed)
    picked = rng.sample(pool, replay_count(len(feedback), share, len(pool)))
    mix.replay_rows = len(picked)
    wanted = replay_count(len(feedback), share, 10**9)
    if skipped:
        mix.note = "; ".join(skipped)
    elif share > 0 and len(picked) < wanted:
        mix.note = (f"replayed {len(picked)} of the {wanted} rows asked for: the original data holds no more"
                    if replay else f"nothing to replay: no original {stage} data (set replay_dataset)")
    rows = [example_row(e, stage) for e in feedback + picked]
    rng.shuffle(rows)
    try:
        write_set(dataset_dir, name, stage, rows)
    except SetError as exc:
        raise LoopError(str(exc)) from None
    return mix
