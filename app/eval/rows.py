"""Evaluation rows: catalogue examples split into the prompt (every turn before the last answer) and the
reference (the last assistant turn), as LLaMA-Factory's predict stage does.

Rows come from catalogue datasets (`eval_dataset`) or from a training run's validation split, rebuilt the
way the trainer cut it: the same rows tokenized at the run's cutoff_len, the same `train_test_split`
permutation (same size, same seed), so "validation" means the rows that run never trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.config import EvalConfig, JobConfig


@dataclass
class EvalRow:
    index: int  # position in the evaluated set (stable across models: the compare key)
    dataset: str
    messages: list[dict[str, Any]]  # the prompt turns (system/user/... up to the last user turn)
    reference: str  # the last assistant turn
    tools: list[Any] | None = None

    @property
    def question(self) -> str:
        """The last user turn: what a table shows as the prompt."""
        users = [m for m in self.messages if m["role"] == "user"]
        return str(users[-1]["content"]) if users else str(self.messages[-1]["content"])

    @property
    def conversation(self) -> list[dict[str, Any]]:
        """Prompt plus reference: what the teacher-forced loss reads."""
        return [*self.messages, {"role": "assistant", "content": self.reference}]


class RowsError(ValueError):
    """The evaluation data cannot be built; the message names the dataset, run or key."""


def _split(example: dict[str, Any], dataset: str, index: int) -> EvalRow | None:
    messages = list(example["messages"])
    if not messages or messages[-1]["role"] != "assistant" or len(messages) < 2:
        return None  # nothing to predict: no final answer after a prompt
    return EvalRow(index, dataset, messages[:-1], str(messages[-1]["content"]), example.get("tools"))


def _from_examples(examples: list[tuple[str, dict[str, Any]]]) -> list[EvalRow]:
    rows = []
    for dataset, example in examples:
        row = _split(example, dataset, len(rows))
        if row is not None:
            rows.append(row)
    return rows


def catalogue_rows(config: EvalConfig) -> list[EvalRow]:
    """Every row of the eval datasets (at most max_samples each) with a final assistant answer."""
    from app.data.catalogue import load_catalogue
    from app.data.formats import load_examples
    from app.data.validate import validate_or_raise

    validate_or_raise(config.dataset_dir, config.datasets, "sft")
    catalogue = load_catalogue(config.dataset_dir)
    examples = []
    for name in config.datasets:
        examples += [(name, e) for e in load_examples(catalogue[name], "sft", max_samples=config.max_samples)]
    rows = _from_examples(examples)
    if not rows:
        raise RowsError(f"eval_dataset: {config.eval_dataset} holds no row that ends with an assistant answer")
    return rows


def validation_rows(config: EvalConfig, tokenizer: Any) -> list[EvalRow]:
    """The rows a training run held out with val_size (or its eval_dataset), in the trainer's order."""
    from datasets import Dataset

    from app.data.catalogue import load_catalogue
    from app.data.formats import load_examples
    from app.data.render import tokenize_sft

    run_dir = Path(str(config.validation_run)).expanduser()
    job_file = run_dir / JobConfig.FILE_NAME
    if not job_file.is_file():
        raise RowsError(f"validation_run: {run_dir} is not a training run folder (no job.yaml)")
    job = JobConfig.load(job_file)
    if job.stage != "sft":
        raise RowsError(f"validation_run: {run_dir.name} is a {job.stage} run; only sft runs have answers to score")
    if job.eval_datasets:  # the run measured its eval loss on other catalogue sets: those are its validation
        return catalogue_rows(config.replace(eval_dataset=job.eval_dataset, validation_run=None,
                                             dataset_dir=job.dataset_dir))
    if not job.val_size:
        raise RowsError(f"validation_run: {run_dir.name} has no validation split (val_size 0, no eval_dataset)")
    catalogue = load_catalogue(job.dataset_dir)
    examples = []
    for name in job.datasets:
        examples += [(name, e) for e in load_examples(catalogue[name], job.stage, max_samples=job.max_samples)]
    # The trainer split the rows that survived tokenizing; find which those are, one example at a time.
    kept = [i for i, (_, e) in enumerate(examples) if tokenize_sft([e], tokenizer, job.cutoff_len)[0]]
    size = int(job.val_size) if job.val_size >= 1 else job.val_size
    parts = Dataset.from_list([{"i": i} for i in kept]).train_test_split(test_size=size, seed=job.seed)
    held = [examples[i] for i in parts["test"]["i"]]
    rows = _from_examples(held)
    return rows[: config.max_samples] if config.max_samples else rows
