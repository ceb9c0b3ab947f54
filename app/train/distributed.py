"""Several training processes: pick the strategy, write the launcher's configs, launch, agree on Stop.

    ftstudio train job.yaml     world size 1, no sharding      -> trains in this process
    ftstudio train job.yaml     world size N, or fsdp / ZeRO   -> this process writes
        runs/<name>/accelerate_config.yaml (+ deepspeed_config.json) and runs `accelerate launch`
        in-process: it stays the process-group leader (the job manager's killpg reaches every
        rank) and waits; each rank re-runs `python -m app.cli train runs/<name>/job.yaml`.

Rank 0 alone writes events.jsonl and state.json. SIGTERM reaches every rank (and the launcher,
which forwards it and waits); the ranks OR their stop flags at every step end, so all of them stop
after the same step, save one checkpoint together and exit.

Several machines (`num_machines` > 1): the same command runs on each machine with its own
`machine_rank` (JobConfig.command_line prints them all); each writes its accelerate config with
`main_process_ip` / `main_process_port` of machine 0, and accelerate's launcher (torchrun, static
rendezvous) joins them. Machine 0's rank 0 writes the events; every other machine's leader records
its own ranks' outcome in its own run folder (give each machine its own output_dir on a shared disk).

On a machine without a GPU, `num_processes: 2` with ddp or fsdp runs two CPU processes (gloo):
accelerate only shards on accelerators, so for fsdp on CPU the rank switches its Accelerator state
to FSDP itself (`force_fsdp_on_cpu`). That path exists for tests of the launch/stop machinery.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from app.atomic import write_json_atomic, write_text_atomic
from app.config import JobConfig

log = logging.getLogger(__name__)

LAUNCHED_ENV = "FTSTUDIO_LAUNCHED"  # set for the ranks we start; a rank never launches again
SHUTDOWN_TIMEOUT_S = 120  # how long the launcher waits for ranks to save after a Stop before SIGKILL
DEEPSPEED_MISSING = ("distributed_strategy {strategy} needs DeepSpeed, which is not installed: "
                     "pip install deepspeed (CUDA GPUs only)")


class DistributedError(RuntimeError):
    """A distributed setting that cannot run here; the message says what to change."""


@dataclass
class Plan:
    strategy: str  # none | ddp | fsdp | deepspeed
    world_size: int
    on_gpu: bool
    zero_stage: int = 0  # DeepSpeed ZeRO stage (fsdp counts as 3 for the memory estimate)

    @property
    def needs_launch(self) -> bool:
        return self.world_size > 1 or self.strategy in ("fsdp", "deepspeed")


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def deepspeed_stage(job: JobConfig) -> int:
    if job.distributed_strategy.startswith("deepspeed_zero"):
        return int(job.distributed_strategy[-1])
    if job.deepspeed:
        try:
            config = json.loads(Path(job.deepspeed).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise DistributedError(f"deepspeed: cannot read {job.deepspeed}: {exc}") from None
        return int(config.get("zero_optimization", {}).get("stage", 0))
    return 0


def plan_for(job: JobConfig, n_gpus: int | None = None) -> Plan:
    """Resolve `auto`, the world size and the device for a job (n_gpus: visible CUDA devices)."""
    n_gpus = visible_gpus() if n_gpus is None else n_gpus
    strategy = job.distributed_strategy
    machines = job.num_machines
    if strategy == "auto":
        strategy = "deepspeed" if job.deepspeed else (
            "ddp" if (job.num_processes or n_gpus) > 1 or machines > 1 else "none")
    elif strategy.startswith("deepspeed"):
        strategy = "deepspeed"
    if strategy == "none":
        if machines > 1:
            raise DistributedError("distributed_strategy none: several machines need ddp, fsdp or DeepSpeed")
        return Plan("none", 1, n_gpus > 0)
    local = job.num_processes or max(n_gpus, 1)
    if n_gpus and local > n_gpus:
        raise DistributedError(f"num_processes: {local} processes need {local} GPUs, {n_gpus} visible")
    world = local * machines  # accelerate counts the processes of every machine
    if strategy == "deepspeed":
        if importlib.util.find_spec("deepspeed") is None:
            raise DistributedError(DEEPSPEED_MISSING.format(strategy=job.distributed_strategy))
        if not n_gpus:
            raise DistributedError(f"distributed_strategy {job.distributed_strategy}: DeepSpeed needs CUDA GPUs")
    zero = deepspeed_stage(job) if strategy == "deepspeed" else 3 if strategy == "fsdp" else 0
    return Plan(strategy, world, n_gpus > 0, zero)


# -- inside a rank ------------------------------------------------------------------------------
def in_launched_process() -> bool:
    """True inside a rank started by accelerate/torchrun (ours or the user's own launcher)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return rank() == 0


def is_local_main_process() -> bool:
    """The first process of this machine: it reports the machine's outcome to the local leader."""
    return int(os.environ.get("LOCAL_RANK", "0")) == 0


def any_rank(flag: bool, device=None) -> bool:
    """OR a flag across ranks (a collective: every rank must call it at the same point)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    if device is None or (dist.get_backend() == "nccl" and getattr(device, "type", "cpu") == "cpu"):
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def force_fsdp_on_cpu() -> None:
    """accelerate turns FSDP on for accelerators only; on CPU ranks (gloo) switch the state to FSDP.

    Call before the Trainer builds its Accelerator. FSDP2 (`fully_shard`) runs on CPU tensors.
    """
    from accelerate.state import AcceleratorState, DistributedType, PartialState

    original = AcceleratorState.__init__
    if getattr(original, "_ftstudio_cpu_fsdp", False):
        return

    def patched(self, *args, **kwargs):
        original(self, *args, **kwargs)
        plugin = kwargs.get("fsdp_plugin")
        if self.distributed_type == DistributedType.MULTI_CPU and plugin is not None:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = plugin
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # as accelerate does on GPUs

    patched._ftstudio_cpu_fsdp = True  # type: ignore[attr-defined]
    AcceleratorState.__init__ = patched


# -- trainer arguments ---------------------------------------------------------------------------
def fsdp_arguments(job: JobConfig, plan: Plan) -> dict:
    """TrainingArguments for FSDP2: every decoder layer its own shard unit, full state dict on save."""
    if plan.strategy != "fsdp":
        return {}
    options = "full_shard auto_wrap" + (" offload" if job.offload else "")
    return dict(fsdp=options, fsdp_config={
        "version": 2,
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",  # the model's _no_split_modules (its decoder layer)
        "reshard_after_forward": True,
        "state_dict_type": "FULL_STATE_DICT",  # checkpoints and the adapter load without FSDP
        "cpu_ram_efficient_loading": False,
        "activation_checkpointing": False,  # model_setup applies gradient checkpointing
    })


def deepspeed_config(job: JobConfig, stage: int) -> dict:
    """A ZeRO-2/3 config in the `auto` style of transformers' DeepSpeed integration (as LLaMA-Factory's)."""
    zero: dict = {
        "stage": stage,
        "overlap_comm": False,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
    }
    if stage == 2:
        zero |= {"allgather_partitions": True, "allgather_bucket_size": 5e8, "reduce_scatter": True,
                 "round_robin_gradients": True}
    if stage == 3:
        zero |= {"sub_group_size": 1e9, "stage3_prefetch_bucket_size": "auto",
                 "stage3_param_persistence_threshold": "auto", "stage3_max_live_parameters": 1e9,
                 "stage3_max_reuse_distance": 1e9, "stage3_gather_16bit_weights_on_model_save": True}
    if job.offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "zero_allow_untested_optimizer": True,
        "fp16": {"enabled": "auto", "loss_scale": 0, "loss_scale_window": 1000, "initial_scale_power": 16,
                 "hysteresis": 2, "min_loss_scale": 1},
        "bf16": {"enabled": "auto"},
        "zero_optimization": zero,
    }


def deepspeed_file(job: JobConfig, run_path: Path) -> Path | None:
    """The DeepSpeed config a job trains with: the user's file, else the generated one in the run folder."""
    if job.deepspeed:
        return Path(job.deepspeed)
    if job.distributed_strategy.startswith("deepspeed_zero"):
        return run_path / "deepspeed_config.json"
    return None


def accelerate_config(job: JobConfig, plan: Plan, run_path: Path) -> dict:
    """What `accelerate launch --config_file` reads. CPU ranks use the multi-GPU launcher (torchrun)
    too: accelerate's MULTI_CPU launcher needs mpirun; the ranks then pick gloo themselves."""
    from app.train.kernels import default_bf16

    mixed = "bf16" if default_bf16(job) else "fp16" if job.fp16 else "no"
    config: dict = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": "MULTI_GPU",
        "num_machines": job.num_machines,
        "machine_rank": job.machine_rank,
        "num_processes": plan.world_size,  # every machine's processes together
        "gpu_ids": "all",
        # one machine: a free port (several runs may launch on one machine); several: the agreed address
        "main_process_port": job.main_process_port if job.num_machines > 1 else 0,
        "mixed_precision": mixed,
        "use_cpu": False,
        "rdzv_backend": "static",
        "same_network": True,
        "downcast_bf16": "no",
        "debug": False,
    }
    if job.num_machines > 1:
        config["main_process_ip"] = job.main_process_ip
    if plan.strategy == "fsdp":
        config["distributed_type"] = "FSDP"
        config["fsdp_config"] = {
            "fsdp_version": 2,
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_offload_params": job.offload,
            "fsdp_reshard_after_forward": True,
            "fsdp_state_dict_type": "FULL_STATE_DICT",
            "fsdp_cpu_ram_efficient_loading": False,
            "fsdp_activation_checkpointing": False,
        }
    elif plan.strategy == "deepspeed":
        config["distributed_type"] = "DEEPSPEED"
        config["deepspeed_config"] = {"deepspeed_config_file": str(deepspeed_file(job, run_path)),
                                      "zero3_init_flag": plan.zero_stage == 3}
        config.pop("mixed_precision")  # taken from the DeepSpeed file ("auto" follows the job)
    return config


def write_launch_files(job: JobConfig, plan: Plan, run_path: Path) -> Path:
    """Write accelerate_config.yaml (and deepspeed_config.json when generated); returns the former."""
    if plan.strategy == "deepspeed" and not job.deepspeed:
        stage = int(job.distributed_strategy[-1])
        write_json_atomic(run_path / "deepspeed_config.json", deepspeed_config(job, stage))
    path = run_path / "accelerate_config.yaml"
    write_text_atomic(path, yaml.safe_dump(accelerate_config(job, plan, run_path), sort_keys=False))
    return path


def launch(config_file: Path, job_file: Path) -> None:
    """`accelerate launch --config_file F -m app.cli train JOB` in this process (which stays the leader).

    Raises when a rank fails or a signal stopped the launcher (after the ranks have exited)."""
    from accelerate.commands.launch import launch_command, launch_command_parser

    env = {LAUNCHED_ENV: "1", "PYTHONUNBUFFERED": "1",
           "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": os.environ.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(SHUTDOWN_TIMEOUT_S))}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)  # inherited by the ranks
    try:
        args = launch_command_parser().parse_args(
            ["--config_file", str(config_file), "--module", "app.cli", "train", str(job_file)])
        launch_command(args)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
