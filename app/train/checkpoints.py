"""Checkpoints that are either complete or absent, never half written as the latest."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from transformers.trainer_utils import rotate_checkpoints


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
                    shutil.rmtree(target)
                os.replace(folder, target)
            shutil.rmtree(staging, ignore_errors=True)
            if self.args.save_total_limit:
                rotate_checkpoints(output_dir=final_root, save_total_limit=self.args.save_total_limit)
        self.accelerator.wait_for_everyone()
