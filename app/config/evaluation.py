"""The typed evaluation schemas: predictions and scores of one model, and the pairwise judge of two.

Key names are LLaMA-Factory's predict keys (`eval_dataset`, `adapter_name_or_path`,
`per_device_eval_batch_size`, `max_new_tokens`, `temperature`, ...), so a user's LF predict YAML loads
as is. `ftstudio eval runs/<run>/job.yaml` means "evaluate that run": app.eval.jobfile turns a training
job into an EvalConfig (its adapter, model and template, a new evaluation run folder).
"""

from __future__ import annotations

import re
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
JUDGE_GROUPS = {
    "runs": "Answers",
    "judge": "Judge endpoint",
    "rubric": "Rubric",
}
JUDGE_LANGUAGES = ("en", "zh")

# Keys of an LLaMA-Factory predict YAML (or of a studio training job) with no effect on evaluation.
EVAL_IGNORED_KEYS = frozenset(
    (set(JobConfig.spec()) | JOB_IGNORED_KEYS | {"predict_with_generate", "do_sample", "finetuning_type", "stage"})
    - {"model_name_or_path", "template", "dataset_dir", "cutoff_len", "max_samples", "seed", "output_dir",
       "per_device_eval_batch_size", "eval_dataset"}
)


@dataclass
class EvalConfig(Schema):
    COMMAND: ClassVar[str] = "eval"
    FILE_NAME: ClassVar[str] = "eval.yaml"
    IGNORED_KEYS: ClassVar[frozenset[str]] = EVAL_IGNORED_KEYS

    # model
    model_name_or_path: str | None = param(
        None, "Base model: a local folder, a Hugging Face id, a merged export folder, a .gguf file, or empty for "
        "the embedded SmolLM2-135M-Instruct (or, with an adapter from a run, that run's base).", "model")
    adapter_name_or_path: str | None = param(
        None, "A training run (runs/<name>: its final adapter or model), one of its checkpoints "
        "(runs/<name>/checkpoints/checkpoint-N), or an adapter folder; empty = the base model alone.", "model")
    template: str | None = param(
        None, "Chat template: empty = the tokenizer's own (or the run's); or a built-in name or a .jinja file.",
        "model")
    # data
    eval_dataset: str | None = param("identity_eval", "Catalogue datasets to evaluate on, comma separated.", "data")
    validation_run: str | None = param(
        None, "A training run whose validation split (its val_size rows, same seed) to evaluate on instead of "
        "eval_dataset.", "data")
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
    output_dir: str | None = param(None, "Run folder for predictions and scores (empty = runs/eval-<model>-<time>).",
                                   "output")

    @property
    def datasets(self) -> list[str]:
        return [d.strip() for d in (self.eval_dataset or "").split(",") if d.strip()]

    def problems(self) -> list[str]:
        if not self.datasets and not self.validation_run:
            return ["eval_dataset: name at least one catalogue dataset (or set validation_run)"]
        return []

    @property
    def data_label(self) -> str:
        """What the rows are, for lists and tables."""
        if self.validation_run:
            return f"{Path(self.validation_run).name}:validation"
        return ",".join(self.datasets)

    def model_label(self) -> str:
        """A short name of the evaluated model: the run (and checkpoint), the export, or the base."""
        if self.adapter_name_or_path:
            path = Path(self.adapter_name_or_path.rstrip("/"))
            if path.parent.name == "checkpoints":
                return f"{path.parent.parent.name}@{path.name.removeprefix('checkpoint-')}"
            return path.parent.name if path.name == "adapter" else path.name
        if self.model_name_or_path:
            return Path(self.model_name_or_path.rstrip("/")).name
        return "base"

    def with_run_folder(self, runs_root: str | Path = "runs") -> EvalConfig:
        """A copy whose output_dir and dataset_dir are absolute, naming a new run when empty."""
        tag = re.sub(r"[^A-Za-z0-9_.@-]+", "-", self.model_label()).strip("-") or "model"
        out = self.output_dir or str(Path(runs_root) / f"eval-{tag}-{time.strftime('%Y%m%d-%H%M%S')}")
        return self.replace(output_dir=str(Path(out).expanduser().resolve()),
                            dataset_dir=str(Path(self.dataset_dir).expanduser().resolve()))


@dataclass
class JudgeConfig(Schema):
    """Pairwise LLM-as-judge: the answers of evaluation run A against those of run B, row by row."""

    COMMAND: ClassVar[str] = "judge"
    FILE_NAME: ClassVar[str] = "judge.yaml"

    predictions: str = param("", "Evaluation run whose answers are judged (model A): a run folder or its "
                             "generated_predictions.jsonl. The rates are written into its predict_results.json.",
                             "runs")
    baseline: str = param("", "Evaluation run to compare against (model B), on the same rows.", "runs")
    max_samples: int | None = param(None, "Judge at most this many rows.", "runs", minimum=1)
    judge_base_url: str = param("http://127.0.0.1:8000/v1", "OpenAI-compatible endpoint of the judge: the studio's "
                                "own API (ftstudio api), vLLM, Ollama (http://127.0.0.1:11434/v1) or a hosted one.",
                                "judge")
    judge_model: str | None = param(None, "Judge model name at that endpoint (empty = the first one it lists).",
                                    "judge")
    judge_api_key_env: str = param("OPENAI_API_KEY", "Name of the environment variable holding the endpoint's API "
                                   "key (the key itself is never written to a file); unset = no key.", "judge")
    judge_max_tokens: int = param(256, "Longest judge reply in tokens.", "judge", minimum=1)
    judge_timeout_s: float = param(120.0, "Seconds to wait for one judge reply.", "judge", minimum=1)
    judge_concurrency: int = param(4, "Judge requests in flight at once.", "judge", minimum=1)
    rubric: str | None = param(None, "What makes an answer better: text, or a path to a .txt/.md file (empty = the "
                               "built-in rubric in judge_language).", "rubric")
    judge_language: str = param("en", "Language of the built-in rubric and of the judge prompt.", "rubric",
                                JUDGE_LANGUAGES)

    def problems(self) -> list[str]:
        problems = []
        if not self.predictions:
            problems.append("predictions: name the evaluation run whose answers are judged (model A)")
        if not self.baseline:
            problems.append("baseline: name the evaluation run to compare against (model B)")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.judge_api_key_env or ""):
            problems.append(f"judge_api_key_env: the name of an environment variable, got {self.judge_api_key_env!r}")
        return problems
