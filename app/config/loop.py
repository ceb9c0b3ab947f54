"""The continuous fine-tuning policy: when feedback turns into a candidate adapter, and when it is promoted.

    runs/loop/policy.yaml   saved by the Continuous fine-tuning panel (Export tab) or `ftstudio loop policy`

"When at least `min_new_rows` new feedback rows have arrived, train (`method`: sft or dpo) from the adapter
served as `model_name`, with `replay_share` of the mix drawn from the original data; evaluate the
candidate and the served adapter on `eval_dataset`; promote the candidate only if its `metric` is not worse
than the served one's by more than `tolerance`." It is not a job kind (no run folder holds it): the loop
controller (app.loop) reads it before every check, so an edit applies to the next check without a restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from app.config.schema import Schema, param

LOOP_GROUPS = {
    "serving": "Serving",
    "trigger": "Trigger",
    "training": "Training",
    "evaluation": "Promotion",
}
LOOP_METHODS = ("sft", "dpo")
# predict_results.json keys (LLaMA-Factory's names) the promotion can compare; True = higher is better.
LOOP_METRICS: dict[str, bool] = {
    "predict_rouge-l": True, "predict_rouge-1": True, "predict_rouge-2": True, "predict_bleu-4": True,
    "eval_loss": False, "perplexity": False,
}
POLICY_FILE = "policy.yaml"


@dataclass
class LoopPolicy(Schema):
    FILE_NAME: ClassVar[str] = POLICY_FILE

    # serving
    model_name: str = param("assistant", "The model name clients ask the API for; promotions and rollbacks swap the "
                            "adapter behind it without a restart.", "serving")
    model_name_or_path: str | None = param(
        None, "Base model: a local folder or a Hugging Face id; empty = the embedded SmolLM2-135M-Instruct.", "serving")
    adapter: str | None = param(
        None, "Version 0, served before any feedback: a training run (runs/<name>) or an adapter folder; empty = "
        "the base model alone (the first candidate then trains a new LoRA adapter). Fixed once the loop has "
        "started (its history's version 0).", "serving")
    template: str | None = param(None, "Chat template for new adapters: empty = the tokenizer's own (or the run's).",
                                 "serving")
    # trigger
    enabled: bool = param(False, "Check automatically: an API server started with --loop trains a candidate as "
                          "soon as min_new_rows new feedback rows have arrived. Off: only 'Check now' and "
                          "`ftstudio loop run-once` do.", "trigger")
    min_new_rows: int = param(20, "New feedback rows (in feedback_sft for sft, feedback_pref for dpo) since the "
                              "last candidate that start the next one.", "trigger", minimum=1)
    check_interval_s: float = param(60.0, "Seconds between two automatic checks.", "trigger", minimum=1)
    # training
    method: str = param("sft", "sft: train on corrections and up-voted answers (feedback_sft); dpo: on "
                        "chosen-vs-rejected pairs (feedback_pref).", "training", LOOP_METHODS)
    replay_share: float = param(0.3, "Fraction (0-0.95) of the training mix drawn from the original data, so the "
                                "model keeps what it knew (0 = feedback only).", "training", minimum=0, maximum=0.95)
    replay_dataset: str | None = param(
        None, "Catalogue sets to replay, comma separated; empty = the datasets of the run behind version 0.",
        "training")
    dataset_dir: str = param(".", "Folder holding dataset_info.json (feedback sets, replay and held-out sets).",
                             "training")
    learning_rate: float = param(2e-4, "Peak learning rate of each candidate's training.", "training", minimum=0,
                                 exclusive_min=True)
    num_train_epochs: float = param(3.0, "Passes over the mix.", "training", minimum=0, exclusive_min=True)
    max_steps: int = param(-1, "Stop after this many optimizer steps (-1 = use epochs).", "training", minimum=-1)
    per_device_train_batch_size: int = param(4, "Rows per step.", "training", minimum=1)
    lora_rank: int = param(16, "LoRA rank of a new adapter (a served adapter keeps its own).", "training", minimum=1)
    pref_beta: float = param(0.1, "DPO beta (method dpo).", "training", minimum=0, exclusive_min=True)
    # evaluation and promotion
    eval_dataset: str = param("identity_eval", "Held-out catalogue sets both the candidate and the served adapter "
                              "are scored on, comma separated.", "evaluation")
    eval_max_samples: int | None = param(50, "Score at most this many held-out rows (empty = all).", "evaluation",
                                         minimum=1)
    eval_max_new_tokens: int = param(64, "Longest generated answer while scoring.", "evaluation", minimum=1)
    metric: str = param("predict_rouge-l", "What 'scores worse' means: ROUGE/BLEU (higher is better) or eval_loss / "
                        "perplexity of the reference answers (lower is better).", "evaluation", tuple(LOOP_METRICS))
    tolerance: float = param(0.0, "How much worse than the served adapter a candidate may score and still be "
                             "promoted, in the metric's units (ROUGE/BLEU points 0-100, loss in nats); negative = "
                             "it must improve by at least that much.", "evaluation")

    @property
    def eval_datasets(self) -> list[str]:
        return [d.strip() for d in self.eval_dataset.split(",") if d.strip()]

    @property
    def replay_datasets(self) -> list[str]:
        return [d.strip() for d in (self.replay_dataset or "").split(",") if d.strip()]

    @property
    def higher_is_better(self) -> bool:
        return LOOP_METRICS[self.metric]

    def problems(self) -> list[str]:
        problems = []
        if not self.model_name.strip() or any(c.isspace() for c in self.model_name.strip()):
            problems.append(f"model_name: one word clients send as \"model\", got {self.model_name!r}")
        if not self.eval_datasets:
            problems.append("eval_dataset: name at least one held-out catalogue set")
        return problems

    def resolved(self, base: str | Path) -> LoopPolicy:
        """A copy whose relative folders (dataset_dir, adapter) are absolute, read from `base`."""
        def absolute(value: str | None) -> str | None:
            if not value:
                return value
            path = Path(value).expanduser()
            return str(path if path.is_absolute() else (Path(base) / path).resolve())

        return self.replace(dataset_dir=absolute(self.dataset_dir), adapter=absolute(self.adapter))
