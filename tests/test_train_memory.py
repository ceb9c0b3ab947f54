"""The memory estimate: every method, precision, sharding and offload moves the right terms."""

from __future__ import annotations

import pytest
from test_train_support import make_tiny_model

from app.config import JobConfig
from app.models.info import describe_model
from app.train.memory import estimate_memory, trainable_parameters


@pytest.fixture(scope="module")
def info(tmp_path_factory):
    return describe_model(make_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


def est(info, on_gpu=False, **fields):
    job = JobConfig(**({"cutoff_len": 256, "per_device_train_batch_size": 2} | fields))
    return estimate_memory(info, job, on_gpu=on_gpu)


def test_rows_add_up_to_the_total(info):
    for fields in ({}, {"finetuning_type": "full"}, {"quantization_bit": 4},
                   {"distributed_strategy": "deepspeed_zero3", "num_processes": 4, "offload": True}):
        estimate = est(info, **fields)
        parts = [mb for name, mb in estimate.rows() if name not in ("total",) and "not in total" not in name]
        assert sum(parts) == pytest.approx(estimate.total_mb)
        assert estimate.rows()[-1] == ("total", estimate.total_mb)


def test_methods(info):
    lora, qlora = est(info), est(info, quantization_bit=4)
    freeze, full = est(info, finetuning_type="freeze", freeze_trainable_layers=1), est(info, finetuning_type="full")
    assert lora.trainable_params == trainable_parameters(info, JobConfig()) < freeze.trainable_params  # 1 of 2 layers
    assert full.trainable_params == info.n_params
    assert full.gradients_mb == pytest.approx(info.n_params * 4 / 2**20)
    assert full.optimizer_mb == pytest.approx(2 * full.gradients_mb)  # Adam: two fp32 states
    assert qlora.weights_mb < lora.weights_mb  # 4-bit linear layers
    assert est(info, quantization_bit=8).weights_mb > qlora.weights_mb
    assert qlora.dequant_mb > 0 and est(info, on_gpu=True, quantization_bit=4).dequant_mb == 0  # CPU only
    # CPU LoRA in fp32 packs the frozen linear weights for oneDNN: one more copy of them, nowhere else
    head = info.vocab_size * info.hidden_size
    assert lora.packed_mb == pytest.approx((sum(i * o for _, i, o in info.linear_layers) + head) * 4 / 2**20)
    assert ("packed weights (oneDNN)", lora.packed_mb) in lora.rows()
    for other in (qlora, freeze, full, est(info, on_gpu=True), est(info, bf16=True), est(info, packed_weights="never"),
                  est(info, stage="dpo")):
        assert other.packed_mb == 0
    assert est(info, stage="dpo", packed_weights="always").packed_mb == lora.packed_mb
    # freezing the last layer keeps activations for that layer only; freezing the first keeps them all
    assert freeze.activations_mb < lora.activations_mb
    assert est(info, finetuning_type="freeze", freeze_trainable_layers=-1).activations_mb == lora.activations_mb
    assert full.total_mb > lora.total_mb
    assert full.overlap_mb > 0  # gradients and activations never whole at once


def test_activations_scale_with_tokens_precision_and_checkpointing(info):
    base, full = est(info), est(info, finetuning_type="full")
    # a head that trains keeps every label token's logits: linear in the tokens
    assert est(info, finetuning_type="full", cutoff_len=512).activations_mb == pytest.approx(2 * full.activations_mb)
    # a frozen head works in chunks (app.train.loss_head): its logits stop growing past one chunk
    assert base.activations_mb < est(info, cutoff_len=512).activations_mb < 2 * base.activations_mb
    assert base.tokens_per_step == 256  # CPU: one row per micro-batch
    assert est(info, on_gpu=True).tokens_per_step == 512  # GPU: the whole batch of 2
    assert est(info, gradient_checkpointing=True).activations_mb < base.activations_mb
    assert est(info, bf16=True).activations_mb < base.activations_mb
    # DPO: chosen and rejected; on CPU the pairs of a batch stay in one packed row while pairs x cutoff <= 1,024
    assert est(info, on_gpu=True, stage="dpo").tokens_per_step == 2 * 2 * 256
    assert est(info, stage="dpo", per_device_train_batch_size=4).tokens_per_step == 4 * 2 * 256
    assert est(info, stage="dpo", per_device_train_batch_size=4, cutoff_len=512).tokens_per_step == 2 * 2 * 512
    assert est(info, stage="dpo", cutoff_len=1024).tokens_per_step == 2 * 1024  # one pair a micro-batch


def test_sharding_and_offload(info):
    full = est(info, finetuning_type="full")
    ddp = est(info, finetuning_type="full", distributed_strategy="ddp", num_processes=4)
    zero2 = est(info, finetuning_type="full", distributed_strategy="deepspeed_zero2", num_processes=4)
    zero3 = est(info, finetuning_type="full", distributed_strategy="deepspeed_zero3", num_processes=4)
    fsdp = est(info, finetuning_type="full", distributed_strategy="fsdp", num_processes=4)
    assert ddp.gradients_mb == pytest.approx(2 * full.gradients_mb)  # DDP buckets
    assert zero2.optimizer_mb == pytest.approx(full.optimizer_mb / 4)
    assert zero2.gradients_mb == pytest.approx(full.gradients_mb / 4)
    assert zero2.weights_mb == pytest.approx(full.weights_mb)
    assert zero3.weights_mb == pytest.approx(full.weights_mb / 4)
    assert fsdp.as_dict() == zero3.as_dict()
    offloaded = est(info, finetuning_type="full", distributed_strategy="deepspeed_zero3", num_processes=4,
                    offload=True)
    assert offloaded.optimizer_mb == 0 and offloaded.weights_mb == 0
    assert offloaded.offloaded_mb == pytest.approx(zero3.optimizer_mb + zero3.weights_mb)
    assert offloaded.total_mb < zero3.total_mb
    # explicit arguments win over the job's fields (the UI passes the visible GPU count)
    assert estimate_memory(info, JobConfig(finetuning_type="full"), on_gpu=True, world_size=4,
                           zero_stage=3).weights_mb == pytest.approx(full.weights_mb / 4)


def test_estimate_from_the_tokenized_rows(info):
    from app.train.memory import largest_batch

    rows = [(40, 10), (200, 150), (90, 30), (120, 100), (10, 5)]
    job = JobConfig(cutoff_len=256, per_device_train_batch_size=2)
    assert largest_batch(job, rows) == (200 + 120, 150 + 100)  # the two longest rows, flattened
    assert largest_batch(job.replace(padding_free=False), rows) == (2 * 200, 250)  # padded to the longest
    assert largest_batch(job, None) == (512, 512)  # before tokenizing: full-length rows
    assert largest_batch(job, rows, on_gpu=False) == (200, 150)  # CPU: one row per micro-batch
    worst, real = estimate_memory(info, job, on_gpu=False), estimate_memory(info, job, on_gpu=False, rows=rows)
    assert real.from_data and not worst.from_data and real.tokens_per_step == 200
    assert real.activations_mb < worst.activations_mb
    # the head scores label tokens only: fewer labels, less memory at the same length
    fewer_labels = estimate_memory(info, job, on_gpu=False, rows=[(n, 1) for n, _ in rows])
    assert fewer_labels.activations_mb < real.activations_mb
    assert estimate_memory(info, job, on_gpu=True, rows=rows).activations_mb < real.activations_mb  # fused head


def test_gradient_checkpointing_only_when_the_job_would_not_fit(tmp_path):
    from datasets import Dataset

    from app.train.memory_plan import plan_memory

    folder = make_tiny_model(tmp_path / "m")
    train = Dataset.from_list([{"input_ids": list(range(n)), "completion_mask": [1] * n} for n in (50, 60, 70)])
    job = JobConfig(cutoff_len=256, per_device_train_batch_size=2)
    fits, estimate, message, switched = plan_memory(job, folder, train, on_gpu=False, free_mb=100_000)
    assert not switched and not fits.gradient_checkpointing and "it fits" in message
    assert estimate.tokens_per_step == 70 and "from the tokenized rows" in message
    tight, smaller, message, switched = plan_memory(job, folder, train, on_gpu=False, free_mb=estimate.total_mb)
    assert switched and tight.gradient_checkpointing and "turned on" in message
    assert smaller.total_mb < estimate.total_mb
    asked, _, message, switched = plan_memory(job.replace(gradient_checkpointing=True), folder, train, False, 1.0)
    assert asked.gradient_checkpointing and not switched and "(asked)" in message


def test_lora_on_some_layers_keeps_fewer_activations(info):
    from app.train.memory import untrained_linear_inputs

    all_linear, qv = JobConfig(lora_target="all"), JobConfig(lora_target="q_proj,v_proj")
    assert untrained_linear_inputs(info, all_linear) == 0
    assert untrained_linear_inputs(info, JobConfig(finetuning_type="full")) == 0
    # q and v read the attention input; o, gate/up and down keep nothing when frozen
    assert untrained_linear_inputs(info, qv) == 2 * info.hidden_size + info.intermediate_size
    assert est(info, lora_target="q_proj,v_proj").activations_mb < est(info).activations_mb


def test_reward_models_and_kto_hold_what_their_trainers_hold(info):
    from app.train.memory import activation_bytes_per_token

    # on a GPU every stage runs the whole batch at once (on CPU sft/pt/dpo go row by row)
    sft, dpo = est(info, on_gpu=True), est(info, on_gpu=True, stage="dpo")
    rm, kto = est(info, on_gpu=True, stage="rm"), est(info, on_gpu=True, stage="kto")
    # rm: chosen and rejected in one batch, like dpo, but a one-value score head instead of vocabulary logits
    assert rm.tokens_per_step == dpo.tokens_per_step == 2 * sft.tokens_per_step
    per_token = activation_bytes_per_token(info, JobConfig(stage="rm", bf16=True)) / 2**20
    assert rm.activations_mb == pytest.approx(rm.tokens_per_step * per_token)
    assert rm.activations_mb > sft.activations_mb
    # kto: one answer per row (its KL batch runs under no_grad before the peak), DPO's chunked head
    assert kto.tokens_per_step == sft.tokens_per_step
    assert kto.activations_mb == pytest.approx(dpo.activations_mb / 2)
    # the reference: with LoRA the base with the adapter off; freeze/full keep a frozen copy of the weights
    assert sft.reference_mb == rm.reference_mb == kto.reference_mb == dpo.reference_mb == 0
    for stage in ("kto", "dpo"):
        for method in ({"finetuning_type": "full"}, {"finetuning_type": "freeze", "freeze_trainable_layers": 1}):
            with_ref, without = est(info, stage=stage, **method), est(info, stage="sft", **method)
            assert without.weights_mb > 0 and with_ref.reference_mb == pytest.approx(without.weights_mb)
            assert ("reference model", with_ref.reference_mb) in with_ref.rows()
            parts = [mb for name, mb in with_ref.rows() if name != "total"]
            assert sum(parts) == pytest.approx(with_ref.total_mb)  # counted in the total
    assert est(info, stage="rm", finetuning_type="full").reference_mb == 0
    assert est(info, stage="dpo", pref_loss="simpo", finetuning_type="full").reference_mb == 0  # no reference


def test_the_train_tab_estimate_uses_the_rows_the_worker_will_train_on(smol_tokenizer):
    """Before anything is tokenized, the Train tab reads the rows' lengths from the dataset insight; they
    are the lengths the worker measures after tokenizing (so both give the same estimate), cut rows too."""
    from app.datatools.insight_report import estimate_rows
    from app.models.source import resolve_model_path
    from app.train.memory_plan import training_rows
    from app.train.recipes import prepare_data

    for cutoff in (1024, 48):
        job = JobConfig(dataset="identity", cutoff_len=cutoff, val_size=0)
        worker = training_rows(prepare_data(job, smol_tokenizer, use_cache=False).train)
        ui = estimate_rows(job.dataset_dir, job.datasets, None, None, cutoff)
        if cutoff == 1024:  # uncut: every row's tokens and label tokens agree
            assert sorted(ui) == sorted(worker)
        else:  # cut at 48: the same longest rows; a row cut inside its answer's last tokens may count as kept
            assert max(ui)[0] == max(worker)[0] == cutoff and abs(len(ui) - len(worker)) <= len(worker) // 10
        info = describe_model(str(resolve_model_path(None)))
        ours = estimate_memory(info, job, on_gpu=False, rows=ui)
        theirs = estimate_memory(info, job, on_gpu=False, rows=worker)
        assert ours.total_mb == pytest.approx(theirs.total_mb, rel=0.02)
    assert estimate_rows(".", ["no_such_set"], None, None, 1024) is None
