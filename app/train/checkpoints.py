"""Checkpoints that are either complete or absent, never half written (or half deleted) as a visible one."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

TRASH = ".trash-"  # a checkpoint being deleted: out of sight of every `checkpoint-*` listing


def remove_checkpoint(folder: Path) -> None:
    """Delete a checkpoint folder: first renamed out of sight (one atomic step), then removed. Deleting it in
    place, a kill -9 midway left `checkpoint-N` with its trainer_state.json but not its weights: a visible
    checkpoint that would not load (seen under load in tests/test_reliability_crash.py)."""
    folder = Path(folder)
    trash = folder.with_name(TRASH + folder.name)
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


def rotate(output_dir: str | Path, save_total_limit: int | None, best_model_checkpoint: str | None = None) -> None:
    """transformers' `rotate_checkpoints` (the oldest go first; the newest and the best are kept), each
    checkpoint deleted by `remove_checkpoint`; trash left by a kill is cleared."""
    for left in Path(output_dir).glob(TRASH + "*"):
        shutil.rmtree(left, ignore_errors=True)
    if not save_total_limit or save_total_limit <= 0:
        return
    from transformers.trainer_utils import sort_checkpoints

    checkpoints = sort_checkpoints(str(output_dir))
    protected = {checkpoints[-1]} if checkpoints else set()
    if best_model_checkpoint is not None:
        protected.add(str(Path(best_model_checkpoint)))
    keep = max(save_total_limit, len(protected))
    removable = [c for c in checkpoints if c not in protected]
    for checkpoint in removable[:max(len(checkpoints) - keep, 0)]:
        remove_checkpoint(Path(checkpoint))


class AtomicCheckpointMixin:
    """Mix in before a transformers Trainer: each checkpoint is written into a staging folder and
    renamed into place, so a crash (even kill -9) mid-save leaves the previous checkpoint as the
    newest one on disk. With several processes every rank writes its part (sharded optimizer
    states, its RNG state) into the staging folder; the main process renames it once all are done."""

    def _save_checkpoint(self, model, trial):  # type: ignore[override]
        final_root = self.args.output_dir
        staging = Path(final_root) / ".staging"
        main = self.args.should_save  # the main process (the one that writes the model files)
        if main:
            shutil.rmtree(staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self.args.output_dir = str(staging)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.output_dir = final_root
        self.accelerator.wait_for_everyone()  # every rank has written its files
        if main:
            for folder in staging.glob("checkpoint-*"):
                target = Path(final_root) / folder.name
                if target.exists():  # a resumed run saving the same step again
                    remove_checkpoint(target)
                os.replace(folder, target)
            shutil.rmtree(staging, ignore_errors=True)
            rotate(final_root, self.args.save_total_limit)
        self.accelerator.wait_for_everyone()
