"""Several training processes: strategy resolution, generated launcher configs, and 2-process CPU runs
(gloo) of the real worker with ddp and fsdp, stopped mid-run through the job manager."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import psutil
import pytest
from safetensors import safe_open
from test_train_support import make_tiny_catalogue, make_tiny_model, run_in_process, step_logs

from app.config import JobConfig
from app.train import distributed
from app.train.distributed import DistributedError, Plan, plan_for
from app.train.runfolder import RunFolder


# -- strategy and world size -------------------------------------------------------------------
@pytest.mark.parametrize("fields, gpus, expected", [
    ({}, 0, Plan("none", 1, False)),
    ({}, 1, Plan("none", 1, True)),
    ({}, 4, Plan("ddp", 4, True)),
    ({"num_processes": 2}, 4, Plan("ddp", 2, True)),
    ({"num_processes": 2}, 0, Plan("ddp", 2, False)),  # two CPU processes
    ({"distributed_strategy": "ddp", "num_processes": 2}, 0, Plan("ddp", 2, False)),
    ({"distributed_strategy": "none", "num_processes": 2}, 4, Plan("none", 1, True)),
    ({"distributed_strategy": "fsdp"}, 8, Plan("fsdp", 8, True, zero_stage=3)),
    ({"distributed_strategy": "fsdp", "num_processes": 2}, 0, Plan("fsdp", 2, False, zero_stage=3)),
])
def test_plan_resolves_auto_and_world_size(fields, gpus, expected):
    plan = plan_for(JobConfig(**fields), n_gpus=gpus)
    assert plan == expected
    assert plan.needs_launch == (expected.world_size > 1 or expected.strategy == "fsdp")


def test_more_processes_than_gpus_is_an_error():
    with pytest.raises(DistributedError, match="num_processes: 4 processes need 4 GPUs, 2 visible"):
        plan_for(JobConfig(num_processes=4), n_gpus=2)


def test_deepspeed_without_the_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(distributed.importlib.util, "find_spec", lambda name: None)
    for strategy in ("deepspeed_zero2", "deepspeed_zero3"):
        with pytest.raises(DistributedError, match="pip install deepspeed"):
            plan_for(JobConfig(distributed_strategy=strategy), n_gpus=2)


def test_deepspeed_plans(monkeypatch, tmp_path):
    monkeypatch.setattr(distributed.importlib.util, "find_spec", lambda name: object())
    assert plan_for(JobConfig(distributed_strategy="deepspeed_zero3"), n_gpus=2) == Plan("deepspeed", 2, True, 3)
    user_file = tmp_path / "ds_z2.json"
    user_file.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    assert plan_for(JobConfig(deepspeed=str(user_file)), n_gpus=1) == Plan("deepspeed", 1, True, 2)
    with pytest.raises(DistributedError, match="needs CUDA GPUs"):
        plan_for(JobConfig(distributed_strategy="deepspeed_zero2"), n_gpus=0)


def test_deepspeed_strategy_fails_fast_in_the_worker(tmp_path):
    """This machine has no DeepSpeed: the run ends `failed` before loading a model, with the fix."""
    if distributed.importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("deepspeed is installed here")
    job = JobConfig(dataset="identity", dataset_dir=str(Path(__file__).resolve().parents[1]),
                    distributed_strategy="deepspeed_zero3", output_dir=str(tmp_path / "ds"))
    assert run_in_process(job) == 1
    run = RunFolder(tmp_path / "ds")
    done = run.events.read_all()[-1]
    assert done["kind"] == "done" and done["state"] == "failed"
    assert "pip install deepspeed" in done["error"]
    assert not any(e.get("name") == "loading_model" for e in run.events.read_all())


# -- generated configs -------------------------------------------------------------------------
@pytest.mark.parametrize("stage, offload", [(2, False), (2, True), (3, False), (3, True)])
def test_deepspeed_config(stage, offload):
    config = distributed.deepspeed_config(JobConfig(offload=offload), stage)
    json.dumps(config)  # serialisable as is
    zero = config["zero_optimization"]
    assert zero["stage"] == stage
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                "gradient_clipping"):
        assert config[key] == "auto", key  # filled in by transformers from the job
    assert config["bf16"] == {"enabled": "auto"} and config["fp16"]["enabled"] == "auto"
    assert ("offload_optimizer" in zero) == offload
    assert ("offload_param" in zero) == (offload and stage == 3)
    assert ("stage3_gather_16bit_weights_on_model_save" in zero) == (stage == 3)  # saving gathers the weights


def test_launch_files_load_with_accelerate(tmp_path):
    from accelerate.commands.config.config_args import load_config_from_file

    cases = {
        "ddp": (JobConfig(distributed_strategy="ddp", bf16=True), Plan("ddp", 4, True)),
        "fsdp": (JobConfig(distributed_strategy="fsdp", offload=True), Plan("fsdp", 2, True, 3)),
        "zero3": (JobConfig(distributed_strategy="deepspeed_zero3", offload=True), Plan("deepspeed", 2, True, 3)),
    }
    for name, (job, plan) in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        path = distributed.write_launch_files(job, plan, folder)
        assert path == folder / "accelerate_config.yaml"
        loaded = load_config_from_file(str(path))
        assert loaded.num_processes == plan.world_size and loaded.num_machines == 1
        if name == "ddp":
            assert loaded.distributed_type == "MULTI_GPU" and loaded.mixed_precision == "bf16"
            assert not (folder / "deepspeed_config.json").exists()
        if name == "fsdp":
            assert loaded.distributed_type == "FSDP"
            assert loaded.fsdp_config["fsdp_version"] == 2 and loaded.fsdp_config["fsdp_offload_params"] is True
        if name == "zero3":
            assert loaded.distributed_type == "DEEPSPEED"
            ds_file = Path(loaded.deepspeed_config["deepspeed_config_file"])
            assert ds_file == folder / "deepspeed_config.json"
            written = json.loads(ds_file.read_text())
            assert written["zero_optimization"]["stage"] == 3 and "offload_param" in written["zero_optimization"]


def test_user_deepspeed_file_is_used_as_is(tmp_path):
    user_file = tmp_path / "mine.json"
    user_file.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    job = JobConfig(deepspeed=str(user_file))
    run = tmp_path / "run"
    run.mkdir()
    distributed.write_launch_files(job, Plan("deepspeed", 2, True, 2), run)
    assert not (run / "deepspeed_config.json").exists()
    assert distributed.deepspeed_file(job, run) == user_file


def test_fsdp_trainer_arguments():
    args = distributed.fsdp_arguments(JobConfig(distributed_strategy="fsdp", offload=True), Plan("fsdp", 2, True, 3))
    assert args["fsdp"] == "full_shard auto_wrap offload"
    assert args["fsdp_config"]["version"] == 2 and args["fsdp_config"]["state_dict_type"] == "FULL_STATE_DICT"
    assert distributed.fsdp_arguments(JobConfig(), Plan("ddp", 2, True)) == {}


def test_any_rank_without_a_process_group_is_the_flag_itself():
    assert distributed.any_rank(True) is True and distributed.any_rank(False) is False


# -- two CPU processes -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("tiny")
    return {"model": str(make_tiny_model(root / "model")), "catalogue": str(make_tiny_catalogue(root / "cat"))}


def tiny_job(tiny: dict, output_dir: Path, **changes) -> JobConfig:
    base = dict(model_name_or_path=tiny["model"], dataset="tiny", dataset_dir=tiny["catalogue"], cutoff_len=64,
                per_device_train_batch_size=2, gradient_accumulation_steps=1, logging_steps=1, save_steps=1000,
                learning_rate=1e-2, lora_rank=8, max_steps=6, output_dir=str(output_dir))
    return JobConfig(**(base | changes))


def adapter_shapes(folder: Path) -> dict[str, tuple]:
    with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as handle:
        return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}


@pytest.fixture(scope="module")
def single_process_run(tiny, tmp_path_factory) -> RunFolder:
    out = tmp_path_factory.mktemp("single") / "run"
    assert run_in_process(tiny_job(tiny, out)) == 0
    return RunFolder(out)


def group_alive(pgid: int) -> list[int]:
    alive = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                alive.append(proc.pid)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return alive


def test_a_signalled_launcher_reads_as_stopped_in_either_accelerate():
    """torch's elastic agent raises SignalException on Stop; accelerate 1.16 turns it into SystemExit(143).
    Both are a stop; a rank's failure (SystemExit(1), ChildFailedError) is not."""
    from torch.distributed.elastic.multiprocessing.api import SignalException

    from app.train.worker import _signalled

    assert _signalled(SignalException("stop", 15)) and _signalled(SystemExit(143)) and _signalled(SystemExit(130))
    assert not _signalled(SystemExit(1)) and not _signalled(RuntimeError("rank 1 failed"))


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_cpu_processes_train_once_and_stop_together(strategy, tiny, single_process_run, tmp_path):
    from app.jobs.manager import JobManager

    manager = JobManager(tmp_path / "runs")
    job = tiny_job(tiny, tmp_path / "runs" / strategy, distributed_strategy=strategy, num_processes=2,
                   max_steps=400)
    run = manager.submit(job)
    deadline = time.time() + 400
    while len(step_logs(run.events.read_all())) < 6:
        assert run.read_state()["state"] == "running", run.tail_log()
        assert time.time() < deadline, "no training steps in time:\n" + run.tail_log()
        time.sleep(0.5)
    pgid = run.read_state()["pgid"]
    manager.stop(run.name, wait=True)

    state = run.read_state()
    assert state["state"] == "stopped", (state, run.tail_log())
    assert state["world_size"] == 2 and state["strategy"] == strategy
    assert group_alive(pgid) == []  # the launcher and both ranks ended
    assert (run.path / "accelerate_config.yaml").is_file()

    events = run.events.read_all()
    kinds = [e["kind"] for e in events]
    assert kinds.count("done") == 1 and events[-1]["state"] == "stopped"
    assert [e["name"] for e in events if e["kind"] == "stage"].count("model_ready") == 1  # rank 0 only
    steps = [e["step"] for e in step_logs(events)]
    assert steps == list(range(1, len(steps) + 1)), steps  # each step once, none missing
    losses = [e["loss"] for e in step_logs(events)]
    assert min(losses[-3:]) < losses[0] - 0.1, losses
    assert step_logs(events)[1]["tokens_per_s"] > 0

    # Both ranks stopped after the same step and saved that checkpoint together.
    stopped_at = steps[-1]
    assert [e["step"] for e in events if e["kind"] == "checkpoint"] == [stopped_at]
    checkpoint = run.latest_checkpoint()
    assert checkpoint.name == f"checkpoint-{stopped_at}"
    assert (checkpoint / "rng_state_0.pth").is_file() and (checkpoint / "rng_state_1.pth").is_file()
    assert adapter_shapes(run.adapter) == adapter_shapes(single_process_run.adapter)


@pytest.mark.slow
def test_single_process_reference_run(single_process_run):
    events = single_process_run.events.read_all()
    assert events[-1]["state"] == "finished"
    assert not (single_process_run.path / "accelerate_config.yaml").exists()  # no launcher for one process
    assert len(adapter_shapes(single_process_run.adapter)) == 2 * 7 * 2  # A and B, 7 linears, 2 layers


# -- several machines --------------------------------------------------------------------------
def test_multi_node_plan_config_and_preview(tmp_path):
    from accelerate.commands.config.config_args import load_config_from_file

    job = JobConfig(num_machines=2, machine_rank=1, main_process_ip="10.0.0.5", main_process_port=29555,
                    num_processes=4)
    plan = plan_for(job, n_gpus=4)
    assert plan == Plan("ddp", 8, True) and plan.needs_launch  # every machine's processes together
    loaded = load_config_from_file(str(distributed.write_launch_files(job, plan, tmp_path)))
    assert (loaded.num_machines, loaded.machine_rank, loaded.num_processes) == (2, 1, 8)
    assert (loaded.main_process_ip, loaded.main_process_port) == ("10.0.0.5", 29555)
    preview = job.command_line().splitlines()
    assert preview[0].startswith("# on machine 0 of 2 (main: 10.0.0.5:29555)")
    assert len(preview) == 4 and preview[2] == "# on machine 1 of 2"
    assert "--machine_rank" not in preview[1] and "--machine_rank 1" in preview[3]
    assert plan_for(JobConfig(num_machines=2, main_process_ip="h", num_processes=1), n_gpus=0).world_size == 2
    with pytest.raises(Exception, match="main_process_ip"):
        JobConfig.from_dict({"num_machines": 2})
    with pytest.raises(Exception, match="machine_rank: must be below num_machines"):
        JobConfig.from_dict({"num_machines": 2, "machine_rank": 2, "main_process_ip": "h"})


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_machines_on_loopback_train_one_job(tiny, tmp_path):
    """Two `ftstudio train` commands, machine_rank 0 and 1, as on two hosts (gloo over 127.0.0.1)."""
    import subprocess
    import sys

    port = free_port()
    procs, runs = [], []
    for rank in (0, 1):
        out = tmp_path / f"machine{rank}"
        job = tiny_job(tiny, out, num_machines=2, machine_rank=rank, main_process_ip="127.0.0.1",
                       main_process_port=port, num_processes=1, distributed_strategy="ddp", max_steps=4)
        job_file = tmp_path / f"machine{rank}.yaml"
        job.save(job_file)
        log = open(tmp_path / f"machine{rank}.log", "wb")
        procs.append(subprocess.Popen([sys.executable, "-m", "app.cli", "train", str(job_file)], stdout=log,
                                      stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[1],
                                      env=os.environ | {"OMP_NUM_THREADS": "1"}))
        runs.append(RunFolder(out))
    try:
        codes = [p.wait(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    logs = "\n".join((tmp_path / f"machine{r}.log").read_text(errors="replace")[-2000:] for r in (0, 1))
    assert codes == [0, 0], logs
    main, other = runs
    assert main.read_state()["state"] == "finished" and other.read_state()["state"] == "finished", logs
    events = main.events.read_all()
    assert next(e for e in events if e.get("name") == "launching")["world_size"] == 2
    assert [e["step"] for e in step_logs(events)] == [1, 2, 3, 4]  # machine 0's rank 0 reports every step
    assert (main.adapter / "adapter_model.safetensors").is_file()
    assert step_logs(other.events.read_all()) == []  # the other machine's ranks write no events
