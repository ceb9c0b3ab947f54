"""The typed job schema: the one source of truth for a training run.

Key names are LLaMA-Factory's, so a user's training YAML loads as is. The UI builds its controls
from the field metadata (group, help, choices), the CLI builds its flags from it, and the worker
reads the YAML written from it. Defaults live here and nowhere else.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from app.config.schema import Schema, param, to_bool

STAGES = ("sft", "dpo", "pt", "kto", "rm", "grpo")
FINETUNING_TYPES = ("lora", "freeze", "full")
SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "cosine_with_min_lr",
)
OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "adafactor", "sgd", "adamw_8bit", "paged_adamw_8bit")
PREF_LOSSES = ("sigmoid", "ipo", "hinge", "orpo", "simpo")
REWARD_BUILTINS = ("exact_match", "format", "length", "reward_model", "judge")
ROPE_SCALINGS = (None, "linear", "dynamic", "yarn", "llama3")
DISTRIBUTED_STRATEGIES = ("auto", "none", "ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3")
ATTENTION_KERNELS = ("auto", "disabled", "sdpa", "fa2")  # LLaMA-Factory's flash_attn values
PACKED_WEIGHTS = ("auto", "always", "never")  # not on/off: YAML reads those as booleans

GROUPS = {
    "model": "Model",
    "method": "Method",
    "data": "Data",
    "basic": "Training",
    "lora": "LoRA",
    "freeze": "Freeze",
    "dpo": "Preference (DPO, KTO, ORPO, SimPO)",
    "grpo": "Reinforcement (GRPO)",
    "distributed": "Multi-GPU",
    "evaluation": "Evaluation and tracking",
    "advanced": "Advanced",
}
# report_to values: transformers' reporting integrations (each needs its own package; see app.train.tracking).
TRACKERS = ("none", "all", "tensorboard", "wandb", "mlflow", "comet_ml", "clearml", "neptune", "trackio", "swanlab",
            "dvclive", "codecarbon", "azure_ml", "dagshub", "flyte", "kubeflow")

# LLaMA-Factory keys that change what is trained and that the studio does not implement yet:
# loading a YAML with one of these is an error that says so, never a silent difference.
UNSUPPORTED_KEYS = {
    "use_unsloth": "Unsloth is not supported",
    "use_galore": "GaLore is not supported",
    "use_badam": "BAdam is not supported",
    "use_apollo": "APOLLO is not supported",
    "use_llama_pro": "LLaMA Pro is not supported",
    "mix_strategy": "dataset mixing strategies are not supported (datasets are concatenated)",
    "interleave_probs": "dataset interleaving is not supported (datasets are concatenated)",
    "tokenized_path": "pre-tokenized dataset caches are not supported",
    "streaming": "streaming datasets are not supported",
    "neat_packing": "neat packing is not supported yet",
    "train_on_prompt": "training on prompts is not supported (SFT loss covers assistant turns only)",
    "mask_history": "mask_history is not supported yet",
    "additional_target": "additional_target is not supported yet",
    "create_new_adapter": "create_new_adapter is not supported yet",
    "ref_model": "a separate DPO reference model is not supported (LoRA uses the base, full a frozen copy)",
    "eval_dataset": "a separate eval dataset is not supported yet (use val_size)",
    "image_max_pixels": "multimodal training is not supported",
    "freeze_vision_tower": "multimodal training is not supported",
    "tool_format": "tool-call formats are not supported yet",
    "quantization_method": "only bitsandbytes quantization is supported (omit quantization_method)",
}

# LLaMA-Factory keys with no effect here (bookkeeping of its own runner): accepted and noted.
IGNORED_KEYS = frozenset({
    "do_train", "do_eval", "do_predict", "plot_loss", "overwrite_output_dir", "overwrite_cache",
    "preprocessing_num_workers", "dataloader_num_workers", "ddp_timeout", "logging_dir",
    "run_name", "save_only_model", "eval_strategy", "save_strategy", "logging_strategy",
    "per_device_eval_batch_size", "trust_remote_code", "disable_tqdm",
})


@dataclass
class JobConfig(Schema):
    COMMAND: ClassVar[str] = "train"
    FILE_NAME: ClassVar[str] = "job.yaml"
    UNSUPPORTED_KEYS: ClassVar[dict[str, str]] = UNSUPPORTED_KEYS
    IGNORED_KEYS: ClassVar[frozenset[str]] = IGNORED_KEYS

    # model
    model_name_or_path: str | None = param(
        None, "Base model: a local folder, a Hugging Face id (honours HF_ENDPOINT), or empty for the "
        "embedded SmolLM2-135M-Instruct.", "model")
    template: str | None = param(
        None, "Chat template: empty = the tokenizer's own; or a LLaMA-Factory template name (qwen3, qwen, llama3, "
        "gemma, gemma3, phi, phi4, deepseek3, deepseekr1, mistral, chatml, alpaca, default, ...: the tokenizer's own "
        "when it is of that family, else the bundled one), or a path to a .jinja file.", "model")
    quantization_bit: int | None = param(
        None, "Load the base in 4 or 8 bits with bitsandbytes (QLoRA). LoRA only.", "model", (None, 4, 8))
    quantization_type: str = param("nf4", "4-bit data type for QLoRA.", "model", ("nf4", "fp4"))
    double_quantization: bool = param(True, "Quantize the 4-bit quantization constants too.", "model")
    # method
    stage: str = param("sft", "sft: supervised chat fine-tuning; dpo: preference pairs (pref_loss: DPO, IPO, "
                       "hinge, ORPO, SimPO); pt: continued pre-training on raw text; kto: answers marked good or bad "
                       "(kto_tag); rm: a reward model on preference pairs; grpo: reinforcement learning from reward "
                       "functions on prompts.", "method", STAGES)
    finetuning_type: str = param("lora", "lora: small adapters; freeze: train the last layers only; "
                                 "full: every weight.", "method", FINETUNING_TYPES)
    # data
    dataset: str = param("identity", "Catalogue dataset names, comma separated.", "data")
    dataset_dir: str = param(".", "Folder holding dataset_info.json.", "data")
    cutoff_len: int = param(1024, "Longest training sequence in tokens; longer rows are truncated.",
                            "data", minimum=8)
    max_samples: int | None = param(None, "Use at most this many rows of each dataset.", "data", minimum=1)
    val_size: float = param(0.0, "Fraction (0-1) or count (>=1) of rows held out for eval loss.", "data",
                            minimum=0)
    eval_dataset: str | None = param(
        None, "Catalogue datasets for the eval loss, comma separated, instead of a val_size split.", "data")
    # basic training
    learning_rate: float = param(1e-4, "Peak learning rate.", "basic", minimum=0, exclusive_min=True)
    num_train_epochs: float = param(3.0, "Passes over the data.", "basic", minimum=0, exclusive_min=True)
    max_steps: int = param(-1, "Stop after this many optimizer steps (-1 = use epochs).", "basic",
                           minimum=-1)
    per_device_train_batch_size: int = param(2, "Rows per device per step.", "basic", minimum=1)
    gradient_accumulation_steps: int = param(4, "Steps whose gradients are summed before an update.",
                                             "basic", minimum=1)
    lr_scheduler_type: str = param("cosine", "Learning-rate schedule.", "basic", SCHEDULERS)
    warmup_ratio: float = param(0.0, "Fraction of steps spent warming the learning rate up.", "basic",
                                minimum=0, maximum=1)
    max_grad_norm: float = param(1.0, "Clip gradients to this norm (0 = no clipping).", "basic", minimum=0)
    bf16: bool | None = param(None, "Train in bfloat16 mixed precision. Empty (none) = automatic: on a GPU with "
                              "bfloat16 (Ampere and newer) unless fp16 is on; float32 on CPU.", "basic",
                              (None, True, False))
    fp16: bool = param(False, "Train in float16 mixed precision (older GPUs).", "basic")
    # LoRA
    lora_rank: int = param(8, "LoRA rank r.", "lora", minimum=1)
    lora_alpha: int | None = param(None, "LoRA scale alpha (empty = 2 x rank).", "lora", minimum=1)
    lora_dropout: float = param(0.0, "Dropout on the LoRA path.", "lora", minimum=0, maximum=1)
    lora_target: str = param("all", "Modules to adapt: all (every linear layer) or names such as "
                             "q_proj,v_proj.", "lora")
    use_dora: bool = param(False, "DoRA: weight-decomposed LoRA (magnitude + direction); slower steps, often "
                           "closer to full fine-tuning.", "lora")
    use_rslora: bool = param(False, "rsLoRA: scale by alpha / sqrt(rank) instead of alpha / rank (stable at "
                             "high ranks).", "lora")
    pissa_init: bool = param(False, "PiSSA: start the adapter from the principal singular vectors of each weight "
                             "(faster convergence); saved converted to a plain LoRA.", "lora")
    pissa_iter: int = param(16, "PiSSA fast-SVD iterations (-1 = exact SVD).", "lora", minimum=-1)
    loraplus_lr_ratio: float | None = param(None, "LoRA+: learning-rate ratio of the B matrices to the A "
                                            "matrices (e.g. 16).", "lora", minimum=0, exclusive_min=True)
    adapter_name_or_path: str | None = param(
        None, "Start from an existing LoRA adapter (a folder or a run folder) and keep training it.", "lora")
    # freeze
    freeze_trainable_layers: int = param(2, "Train the last N layers (negative: the first N).", "freeze")
    freeze_trainable_modules: str = param("all", "Modules trained inside those layers: all or names "
                                          "such as mlp,self_attn.", "freeze")
    # DPO
    pref_beta: float = param(0.1, "DPO beta: how far the policy may move from the reference.", "dpo",
                             minimum=0, exclusive_min=True)
    pref_loss: str = param("sigmoid", "Preference loss: sigmoid (the DPO paper), ipo (squared, less prone to "
                           "overfitting), hinge (SLiC); orpo (odds ratio + SFT, no reference model; pref_beta is its "
                           "lambda); simpo (length-normalised margin, no reference model).", "dpo", PREF_LOSSES)
    pref_ftx: float = param(0.0, "Weight of an SFT loss on the chosen answers added to the preference loss "
                            "(DPO, SimPO; ORPO always has it).", "dpo", minimum=0)
    simpo_gamma: float = param(0.5, "SimPO target reward margin.", "dpo", minimum=0)
    kto_chosen_weight: float = param(1.0, "KTO weight of desirable answers (kto_tag true).", "dpo",
                                     minimum=0, exclusive_min=True)
    kto_rejected_weight: float = param(1.0, "KTO weight of undesirable answers (kto_tag false).", "dpo",
                                       minimum=0, exclusive_min=True)
    # GRPO
    reward_funcs: str = param(
        "exact_match", "GRPO rewards, comma separated: exact_match (the answer column, i.e. the dataset's "
        "response, found in the completion), format (reward_regex matches), length (close to "
        "reward_target_length characters), reward_model (reward_model), judge (reward_judge_url), or "
        "path/to/file.py:function (your own).", "grpo")
    reward_weights: str | None = param(None, "Weights of the rewards, comma separated (empty = all 1).", "grpo")
    reward_regex: str = param(r"(?s)^<think>.+?</think>\s*\S", "Regular expression a completion must match for "
                              "the format reward (searched from the start).", "grpo")
    reward_target_length: int = param(200, "Completion length in characters the length reward prefers.", "grpo",
                                      minimum=1)
    reward_model: str | None = param(None, "A finished stage: rm run folder (or a sequence-classification model "
                                     "folder) that scores completions.", "grpo")
    reward_judge_url: str | None = param(
        None, "Base URL of an OpenAI-compatible API (e.g. http://127.0.0.1:8000/v1) whose model grades each "
        "completion from 0 to 10; the key is read from FTSTUDIO_JUDGE_API_KEY or OPENAI_API_KEY.", "grpo")
    reward_judge_model: str | None = param(None, "Model name to ask at reward_judge_url.", "grpo")
    num_generations: int = param(4, "Completions sampled per prompt (the group whose rewards are compared).",
                                 "grpo", minimum=2)
    max_completion_length: int = param(128, "Longest sampled completion in tokens.", "grpo", minimum=1)
    grpo_beta: float = param(0.04, "KL penalty towards the starting model (0 = none, no KL curve).", "grpo",
                             minimum=0)
    generation_temperature: float = param(1.0, "Sampling temperature of the completions.", "grpo",
                                          minimum=0, exclusive_min=True)
    # distributed
    distributed_strategy: str = param(
        "auto", "How several processes share the work. auto: ddp when more than one GPU is visible (or "
        "num_processes > 1), else a single process; ddp: a full copy per GPU; fsdp: weights, gradients "
        "and optimizer sharded across GPUs; deepspeed_zero2 / deepspeed_zero3: DeepSpeed ZeRO (needs "
        "`pip install deepspeed`).", "distributed", DISTRIBUTED_STRATEGIES)
    num_processes: int | None = param(
        None, "Training processes per machine (one per GPU); empty = every visible GPU. On a machine without a GPU, "
        "a number > 1 with ddp or fsdp runs that many CPU processes.", "distributed", minimum=1)
    offload: bool = param(False, "Keep optimizer states (and, with fsdp / ZeRO-3, parameters) in CPU memory: "
                          "less GPU memory, slower steps.", "distributed")
    deepspeed: str | None = param(
        None, "Path to a DeepSpeed JSON config (LLaMA-Factory's key); used as is instead of the generated "
        "ZeRO config. Implies a DeepSpeed strategy.", "distributed")
    num_machines: int = param(
        1, "Machines taking part (accelerate multi-node): start the same job on each, with its own "
        "machine_rank; Preview command shows the line for every machine.", "distributed", minimum=1)
    machine_rank: int = param(0, "This machine's rank among num_machines (0 = the main machine).", "distributed",
                              minimum=0)
    main_process_ip: str | None = param(
        None, "Address of machine 0 that the other machines reach (multi-node).", "distributed")
    main_process_port: int = param(29500, "Port on machine 0 for the rendezvous (multi-node).", "distributed",
                                   minimum=1, maximum=65535)
    # evaluation and tracking
    early_stopping_steps: int | None = param(
        None, "Stop training when the eval loss has not improved for this many evaluations in a row (needs "
        "val_size or eval_dataset).", "evaluation", minimum=1)
    load_best_model_at_end: bool = param(
        False, "At the end, keep the checkpoint with the best eval loss as the run's adapter (save_steps must be a "
        "multiple of eval_steps).", "evaluation")
    metric_for_best_model: str = param("eval_loss", "What 'best' means for load_best_model_at_end and early "
                                       "stopping: the lowest eval loss.", "evaluation",
                                       ("eval_loss", "loss"))
    report_to: str | None = param(
        None, "Experiment trackers, comma separated: empty or none; tensorboard (event files in "
        "<run>/tensorboard); wandb (offline in <run>/wandb unless WANDB_MODE or WANDB_API_KEY is set); "
        "mlflow (<run>/mlruns unless MLFLOW_TRACKING_URI is set); comet_ml, clearml, trackio, swanlab, ... "
        "when installed.", "evaluation")
    # advanced
    neftune_noise_alpha: float | None = param(None, "NEFTune: noise added to the input embeddings while "
                                              "training (e.g. 5); SFT.", "advanced", minimum=0,
                                              exclusive_min=True)
    rope_scaling: str | None = param(
        None, "Stretch RoPE to train past the model's context: the factor is cutoff_len / the model's "
        "max_position_embeddings, rounded up.", "advanced", ROPE_SCALINGS)
    enable_thinking: bool = param(True, "Templates with a thinking switch (qwen3): render training and "
                                  "prompts with thinking on; off adds the empty think block.", "advanced")
    optim: str = param("adamw_torch", "Optimizer.", "advanced", OPTIMIZERS)
    weight_decay: float = param(0.0, "AdamW weight decay.", "advanced", minimum=0)
    warmup_steps: int = param(0, "Warm-up steps (overrides warmup_ratio when > 0).", "advanced", minimum=0)
    gradient_checkpointing: bool = param(False, "Recompute activations in the backward pass: less "
                                         "memory, ~30% slower.", "advanced")
    padding_free: bool = param(True, "Flatten each batch into one sequence with per-row boundaries: no compute "
                               "spent on padding. Off: rows are padded to the longest in the batch. (SFT and "
                               "pre-training; DPO always pads.)", "advanced")
    flash_attn: str = param(
        "auto", "Attention kernel: auto (FlashAttention-2 for padding-free batches on a CUDA GPU when the "
        "flash-attn package is installed, else PyTorch SDPA), disabled (eager), sdpa, fa2.", "advanced",
        ATTENTION_KERNELS)
    enable_liger_kernel: bool = param(
        False, "Liger's fused Triton kernels (RMSNorm, RoPE, SwiGLU) on a CUDA GPU (pip install liger-kernel); "
        "ignored on CPU. The loss head is always fused on GPU.", "advanced")
    torch_compile: bool = param(
        False, "Compile the model with torch.compile: a one-off compile time for faster steps on long GPU runs "
        "(rows of new lengths recompile; not worth it for short runs).", "advanced")
    packed_weights: str = param(
        "auto", "CPU, LoRA in fp32: the frozen base weights go through oneDNN, packed once for the forward and "
        "the backward: faster steps for as much memory again as those weights, only when that memory is free. "
        "auto: SFT and pre-training; always: DPO too (its activations are small, so the copy adds about a "
        "quarter to its peak); never: PyTorch's default kernels.", "advanced", PACKED_WEIGHTS)
    logging_steps: int = param(5, "Log loss every N steps.", "advanced", minimum=1)
    save_steps: int = param(50, "Save a checkpoint every N steps.", "advanced", minimum=1)
    eval_steps: int | None = param(None, "Eval every N steps (empty = save_steps).", "advanced", minimum=1)
    save_total_limit: int = param(3, "Keep at most N checkpoints.", "advanced", minimum=1)
    seed: int = param(42, "Random seed.", "advanced")
    output_dir: str | None = param(None, "Run folder (empty = runs/<stage>-<method>-<time>).", "advanced")
    resume_from_checkpoint: bool | str | None = param(
        None, "true = continue from the newest complete checkpoint of output_dir; or a checkpoint "
        "path.", "advanced")

    # ----------------------------------------------------------------------------------------
    @classmethod
    def normalise(cls, data: dict[str, Any]) -> dict[str, Any]:
        if "disable_gradient_checkpointing" in data:  # LLaMA-Factory's inverted switch
            data.setdefault("gradient_checkpointing", not to_bool(data.pop("disable_gradient_checkpointing")))
        if isinstance(data.get("report_to"), (list, tuple)):  # LF and transformers accept a list
            data["report_to"] = ",".join(str(item) for item in data["report_to"]) or None
        return data

    def problems(self) -> list[str]:
        problems = []
        if self.bf16 and self.fp16:
            problems.append("fp16: cannot be combined with bf16; choose one")
        if self.quantization_bit is not None and self.finetuning_type != "lora":
            problems.append(f"quantization_bit: quantized training needs finetuning_type lora, "
                            f"got {self.finetuning_type}")
        if self.deepspeed is not None and self.distributed_strategy in ("none", "ddp", "fsdp"):
            problems.append(f"deepspeed: a DeepSpeed config needs distributed_strategy auto, deepspeed_zero2 or "
                            f"deepspeed_zero3, got {self.distributed_strategy}")
        if self.quantization_bit is not None and self.distributed_strategy in ("fsdp", "deepspeed_zero3"):
            problems.append(f"quantization_bit: QLoRA cannot be sharded with {self.distributed_strategy}; "
                            f"use ddp or deepspeed_zero2")
        if self.machine_rank >= self.num_machines:
            problems.append(f"machine_rank: must be below num_machines ({self.num_machines}), got {self.machine_rank}")
        if self.num_machines > 1 and not self.main_process_ip:
            problems.append("main_process_ip: multi-node training needs the address of machine 0")
        if not [d for d in self.datasets if d]:
            problems.append("dataset: name at least one catalogue dataset")
        if self.val_size >= 1 and not float(self.val_size).is_integer():
            problems.append(f"val_size: a count must be whole, got {self.val_size:g}")
        return problems + self.method_problems() + self._evaluation_problems()

    def method_problems(self) -> list[str]:
        """LoRA variants need LoRA; GRPO rewards must be known and have what they read."""
        problems = []
        if self.finetuning_type != "lora":
            for key in ("use_dora", "use_rslora", "pissa_init", "loraplus_lr_ratio", "adapter_name_or_path"):
                if getattr(self, key):
                    problems.append(f"{key}: a LoRA option; finetuning_type is {self.finetuning_type}")
        if self.use_dora and self.pissa_init:
            problems.append("pissa_init: cannot be combined with use_dora")
        if self.stage == "grpo":
            funcs = self.reward_names
            for name in funcs:
                if name not in REWARD_BUILTINS and ".py" not in name:
                    problems.append(f"reward_funcs: unknown reward {name!r} (built-ins: {', '.join(REWARD_BUILTINS)}; "
                                    f"or path/to/file.py:function)")
            if not funcs:
                problems.append("reward_funcs: name at least one reward")
            if "reward_model" in funcs and not self.reward_model:
                problems.append("reward_model: the reward_model reward needs a reward model (an rm run folder)")
            if "judge" in funcs and not (self.reward_judge_url and self.reward_judge_model):
                problems.append("reward_judge_url: the judge reward needs reward_judge_url and reward_judge_model")
            if self.reward_weights is not None:
                try:
                    weights = [float(w) for w in self.reward_weights.split(",") if w.strip()]
                except ValueError:
                    weights = []
                if len(weights) != len(funcs):
                    problems.append(f"reward_weights: give one number per reward ({len(funcs)}), got "
                                    f"{self.reward_weights!r}")
        return problems

    def _evaluation_problems(self) -> list[str]:
        problems = []
        if self.eval_dataset is not None and not self.eval_datasets:
            problems.append("eval_dataset: name at least one catalogue dataset, or leave it empty")
        if self.eval_datasets and self.val_size:
            problems.append("val_size: cannot be combined with eval_dataset (as in LLaMA-Factory); set one of them")
        has_eval = bool(self.val_size or self.eval_datasets)
        # every stage's trainer computes an eval loss and carries app.train.tracking's callbacks, but GRPO's
        for key in ("early_stopping_steps", "load_best_model_at_end"):
            if getattr(self, key) and self.stage == "grpo":
                problems.append(f"{key}: stage grpo has no eval loss to watch (it scores its generations with "
                                f"rewards): remove {key}")
            elif getattr(self, key) and not has_eval:
                problems.append(f"{key}: needs an eval loss: set val_size or eval_dataset")
        eval_steps = self.eval_steps or self.save_steps
        if self.load_best_model_at_end and self.save_steps % eval_steps:
            problems.append(f"load_best_model_at_end: save_steps ({self.save_steps}) must be a multiple of eval_steps "
                            f"({eval_steps}), so that the best evaluation has a checkpoint")
        unknown = [t for t in self.trackers if t not in TRACKERS]
        if unknown:
            problems.append(f"report_to: unknown tracker {', '.join(unknown)} (known: {', '.join(TRACKERS)})")
        return problems

    @property
    def reward_names(self) -> list[str]:
        return [r.strip() for r in self.reward_funcs.split(",") if r.strip()]

    # ----------------------------------------------------------------------------------------
    @property
    def datasets(self) -> list[str]:
        return [d.strip() for d in self.dataset.split(",") if d.strip()]

    @property
    def eval_datasets(self) -> list[str]:
        return [d.strip() for d in (self.eval_dataset or "").split(",") if d.strip()]

    @property
    def trackers(self) -> list[str]:
        """report_to as a list; [] for none."""
        names = [t.strip().lower() for t in (self.report_to or "").split(",") if t.strip()]
        return [] if names in ([], ["none"]) else names

    @property
    def lora_alpha_value(self) -> int:
        return self.lora_alpha if self.lora_alpha is not None else 2 * self.lora_rank

    def command_line(self) -> str:
        """The CLI line; with several machines, one line per machine (each with its machine_rank)."""
        if self.num_machines <= 1:
            return super().command_line()
        lines = []
        for rank in range(self.num_machines):
            where = f" (main: {self.main_process_ip}:{self.main_process_port})" if rank == 0 else ""
            lines += [f"# on machine {rank} of {self.num_machines}{where}",
                      self.replace(machine_rank=rank).command_line_single()]
        return "\n".join(lines)

    def command_line_single(self) -> str:
        return super().command_line()

    def with_run_folder(self, runs_root: str | Path = "runs") -> JobConfig:
        """A copy whose output_dir and dataset_dir are absolute, naming a new run when empty."""
        out = self.output_dir or str(Path(runs_root) / default_run_name(self))
        deepspeed = str(Path(self.deepspeed).expanduser().resolve()) if self.deepspeed else None
        return self.replace(output_dir=str(Path(out).expanduser().resolve()),
                            dataset_dir=str(Path(self.dataset_dir).expanduser().resolve()), deepspeed=deepspeed)


def default_run_name(job: JobConfig) -> str:
    return f"{job.stage}-{job.finetuning_type}-{time.strftime('%Y%m%d-%H%M%S')}"
