"""The typed evaluation schema: predictions and scores of one model on held-out data.

Key names are LLaMA-Factory's predict keys (`eval_dataset`, `adapter_name_or_path`,
`per_device_eval_batch_size`, `max_new_tokens`, `temperature`, ...), so a user's LF predict YAML loads
as is, and `ftstudio eval runs/<run>/job.yaml` reuses a training job's model, template and data
folder (its training-only keys are noted and ignored).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from app.config.job import IGNORED_KEYS as JOB_IGNORED_KEYS
from app.config.job import JobConfig
from app.config.schema import Schema, param

EVAL_GROUPS = {
    "model": "Model",
    "data": "Data",
    "generation": "Generation",
    "output": "Output",
}

# Keys of an LLaMA-Factory predict YAML (or of a studio training job) with no effect on evaluation.
EVAL_IGNORED_KEYS = frozenset(
    (set(JobConfig.spec()) | JOB_IGNORED_KEYS | {"predict_with_generate", "do_sample"})
    - {"model_name_or_path", "template", "dataset_dir", "cutoff_len", "max_samples", "seed", "output_dir",
       "per_device_eval_batch_size"}
)


@dataclass
class EvalConfig(Schema):
    COMMAND: ClassVar[str] = "eval"
    FILE_NAME: ClassVar[str] = "eval.yaml"
    IGNORED_KEYS: ClassVar[frozenset[str]] = EVAL_IGNORED_KEYS

    # model
    model_name_or_path: str | None = param(
        None, "Base model: a local folder, a Hugging Face id, a merged export folder, a .gguf file, or empty for "
        "the embedded SmolLM2-135M-Instruct.", "model")
    adapter_name_or_path: str | None = param(
        None, "A training run (runs/<name>: its final adapter), one of its checkpoints, or an adapter folder; "
        "empty = the base model alone.", "model")
    template: str | None = param(
        None, "Chat template: empty = the tokenizer's own (or the run's); or a built-in name or a .jinja file.",
        "model")
    # data
    eval_dataset: str = param("identity_eval", "Catalogue datasets to evaluate on, comma separated.", "data")
    dataset_dir: str = param(".", "Folder holding dataset_info.json.", "data")
    max_samples: int | None = param(None, "Evaluate at most this many rows of each dataset.", "data", minimum=1)
    cutoff_len: int = param(1024, "Longest prompt in tokens; longer prompts keep their end.", "data", minimum=8)
    # generation
    max_new_tokens: int = param(128, "Longest generated answer in tokens.", "generation", minimum=1)
    temperature: float = param(0.0, "Sampling temperature; 0 = greedy (reproducible).", "generation", minimum=0)
    top_p: float = param(1.0, "Nucleus sampling: keep the smallest set of tokens with this much probability.",
                         "generation", minimum=0, maximum=1, exclusive_min=True)
    per_device_eval_batch_size: int = param(8, "Rows generated together in one batch.", "generation", minimum=1)
    seed: int = param(42, "Random seed (sampling only).", "generation")
    # output
    output_dir: str | None = param(None, "Run folder for predictions and scores (empty = runs/eval-<time>).",
                                   "output")

    @property
    def datasets(self) -> list[str]:
        return [d.strip() for d in self.eval_dataset.split(",") if d.strip()]

    def problems(self) -> list[str]:
        if not self.datasets:
            return ["eval_dataset: name at least one catalogue dataset"]
        return []

    def with_run_folder(self, runs_root: str | Path = "runs") -> EvalConfig:
        """A copy whose output_dir and dataset_dir are absolute, naming a new run when empty."""
        out = self.output_dir or str(Path(runs_root) / f"eval-{time.strftime('%Y%m%d-%H%M%S')}")
        return self.replace(output_dir=str(Path(out).expanduser().resolve()),
                            dataset_dir=str(Path(self.dataset_dir).expanduser().resolve()))
