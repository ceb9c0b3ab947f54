"""DPO with the prompt computed once per pair (app.train.shared_prompt) gives what TRL's two rows per
pair give: the same chosen/rejected log-probabilities for the policy and the reference, the same
loss, metrics and gradients, on tiny random models (a few pairs, no training run)."""

from __future__ import annotations

import pytest
import torch
from test_train_support import make_tiny_model

from app.train import shared_prompt

# (prompt ids, chosen ids, rejected ids): different prompt and answer lengths, a one-token prompt
PAIRS = [([3, 4, 5, 6, 7, 8], [9, 10, 11], [12, 13, 14, 15, 16]),
         ([20, 21, 22], [23, 24, 25, 26, 27, 28, 29], [30]),
         ([40], [41, 42], [43, 44])]


def collate(pairs, max_length=None, truncation_mode="keep_start") -> dict:
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    collator = DataCollatorForPreference(pad_token_id=0, max_length=max_length, truncation_mode=truncation_mode)
    return collator([{"prompt_ids": p, "chosen_ids": c, "rejected_ids": r} for p, c, r in pairs])


def fused_call(model, batch: dict):
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                 fused_lm_head=True, use_cache=False)


def dpo_like_loss(log_probs: torch.Tensor) -> torch.Tensor:
    chosen, rejected = log_probs.sum(dim=1).chunk(2)
    return -torch.nn.functional.logsigmoid(0.1 * (chosen - rejected)).mean() + log_probs.sum() * 1e-3


def both_paths(model, batch: dict, logits_head: bool = True) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
    """(log_probs, gradients) through the two-row forward, then through the shared-prompt one."""
    results = []
    for shared in (False, True):
        if shared:
            shared_prompt.wrap_forward(model, logits_head)
        model.zero_grad()
        out = fused_call(model, batch)
        dpo_like_loss(out.log_probs).backward()
        results.append((out.log_probs.detach(), [p.grad.clone() for p in model.parameters()]))
        shared_prompt.uninstall(model)
    return results


def tiny_family(model_type: str, attention: str = "sdpa"):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(model_type, vocab_size=64, hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                  pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attention).float()


@pytest.mark.parametrize(("model_type", "attention"), [(f, "sdpa") for f in shared_prompt.FAMILIES]
                         + [("llama", "eager")])
def test_one_row_per_pair_gives_the_two_row_log_probs_and_gradients(model_type, attention):
    from app.train.fast_trainers import install_compact_dpo_head

    model = tiny_family(model_type, attention)
    install_compact_dpo_head(model)
    assert shared_prompt.unsupported_reason(model, "cpu") is None
    batch = collate(PAIRS)
    packed = shared_prompt.pack(batch["input_ids"], batch["attention_mask"],
                                batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100))
    assert packed is not None  # one row, no padding: each pair's prompt once, its answers, one repeated token
    assert packed.input_ids.shape == (1, sum(len(p) + len(c) + 1 + len(r) for p, c, r in PAIRS))
    (two_rows, two_grads), (shared, shared_grads) = both_paths(model, batch)
    assert (two_rows != 0).sum() == sum(len(c) + len(r) for _, c, r in PAIRS)  # every label scored
    torch.testing.assert_close(shared, two_rows, rtol=1e-5, atol=1e-5)
    for a, b in zip(two_grads, shared_grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)  # float sums in another order


def test_truncated_answers_pack_and_differently_cut_prompts_keep_two_rows():
    from app.train.fast_trainers import install_compact_dpo_head

    model = tiny_family("llama")
    install_compact_dpo_head(model)
    cut = collate(PAIRS[:2], max_length=8)  # keep_start (TRL's default): the answers are cut, not the prompt
    labels = cut["input_ids"].masked_fill(cut["completion_mask"] == 0, -100)
    assert shared_prompt.pack(cut["input_ids"], cut["attention_mask"], labels) is not None
    (two_rows, two_grads), (shared, shared_grads) = both_paths(model, cut)
    assert (two_rows != 0).sum() == (2 + 2) + (5 + 1)  # answers cut at 8 tokens with their prompt
    torch.testing.assert_close(shared, two_rows, rtol=1e-5, atol=1e-5)
    # keep_end cuts the prompt's start, differently for chosen and rejected: no shared prompt, two rows
    end = collate(PAIRS[:1], max_length=7, truncation_mode="keep_end")
    labels = end["input_ids"].masked_fill(end["completion_mask"] == 0, -100)
    assert shared_prompt.pack(end["input_ids"], end["attention_mask"], labels) is None
    (two_rows, _), (shared, _) = both_paths(model, end)
    assert torch.equal(shared, two_rows)


def test_unsupported_models_and_devices_keep_two_rows():
    model = tiny_family("llama")
    assert "CPU" in shared_prompt.unsupported_reason(model, "cuda")
    model.config._attn_implementation = "flash_attention_2"
    assert "builds its own mask" in shared_prompt.unsupported_reason(model, "cpu")
    assert "not one the packed mask is tested on" in shared_prompt.unsupported_reason(tiny_family("gpt2"), "cpu")


# -- through TRL's DPO trainer: policy and reference, each loss, a system prompt and several turns -----
SYSTEM = {"role": "system", "content": "You are a careful assistant who answers in one short sentence."}
CONVERSATIONS = [
    ([SYSTEM, {"role": "user", "content": "What is the capital of Japan?"}],
     "The capital of Japan is Tokyo.", "Kyoto, obviously. Look it up."),
    ([SYSTEM, {"role": "user", "content": "Name a prime number."}, {"role": "assistant", "content": "7."},
      {"role": "user", "content": "And an even one?"}],
     "2 is the only even prime number.", "4."),
    ([{"role": "user", "content": "Say hello in French."}], "Bonjour!", "Hola, which is Spanish, not French."),
]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("shared") / "m")


def dpo_trainer(folder, tmp_path, **job_keys):
    from datasets import Dataset

    from app.config import JobConfig
    from app.train.model_setup import apply_method, load_model, load_tokenizer
    from app.train.recipes import Prepared, build_dpo_trainer

    rows = [{"prompt": p, "chosen": [{"role": "assistant", "content": c}],
             "rejected": [{"role": "assistant", "content": r}]} for p, c, r in CONVERSATIONS]
    job = JobConfig(**({"stage": "dpo", "model_name_or_path": str(folder), "dataset": "unused", "cutoff_len": 512,
                        "per_device_train_batch_size": 1, "gradient_accumulation_steps": 1, "max_steps": 1,
                        "save_steps": 1000, "val_size": 0} | job_keys))
    tokenizer = load_tokenizer(folder, None)
    torch.manual_seed(0)
    model = apply_method(job, load_model(job, folder))
    data = Prepared(Dataset.from_list(rows), None, len(rows), "")
    return build_dpo_trainer(job, model, tokenizer, data, tmp_path / "ckpt", [])


def trainer_step(trainer, batch: dict) -> tuple[float, dict, list[torch.Tensor]]:
    model = trainer.model
    model.zero_grad()
    trainer._metrics["train"].clear()
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items() if k != "num_tokens"}
    return loss.item(), metrics, [p.grad.clone() for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize(("method", "loss"), [("lora", "sigmoid"), ("lora", "ipo"), ("lora", "hinge"),
                                              ("full", "sigmoid")])
def test_trl_dpo_loss_metrics_and_gradients_are_unchanged(tiny_llama, tmp_path, monkeypatch, method, loss):
    trainer = dpo_trainer(tiny_llama, tmp_path, finetuning_type=method, pref_loss=loss, pref_ftx=0.5,
                          learning_rate=1e-3)
    assert trainer.shared_prompt  # on by default on CPU for a llama
    base = trainer.model.get_base_model() if method == "lora" else trainer.model
    with torch.no_grad():  # as if trained, so that the policy differs from the reference
        for name, param in trainer.model.named_parameters():
            if param.requires_grad and (method == "full" or "lora_B" in name):
                param.add_(torch.randn_like(param) * 0.02)
    rows = [trainer.train_dataset[i] for i in range(len(CONVERSATIONS))]
    assert len(rows[1]["prompt_ids"]) > len(rows[1]["chosen_ids"])  # system prompt and turns: the prompt dominates
    batch = trainer.data_collator(rows)
    trainer.model.train()
    packed = []
    pack = shared_prompt.pack
    monkeypatch.setattr(shared_prompt, "pack", lambda *a: packed.append(pack(*a)) or packed[-1])
    shared = trainer_step(trainer, batch)
    assert len(packed) == 2 and all(packed)  # the policy's forward and the reference's, each one row per pair
    for model in (base, trainer.ref_model):
        if model is not None:
            shared_prompt.uninstall(model)
    two_rows = trainer_step(trainer, batch)
    assert shared[0] == pytest.approx(two_rows[0], rel=1e-5, abs=1e-6)
    assert shared[1].keys() == two_rows[1].keys() and "rewards/margins" in shared[1]
    for key, value in two_rows[1].items():  # rewards (policy against reference), log-probs
        assert shared[1][key] == pytest.approx(value, rel=1e-4, abs=2e-4), key  # sums over ~40 tokens
    assert abs(shared[1]["rewards/margins"]) > 1e-3  # the reference (adapter off, or the copy) is not the policy
    for a, b in zip(two_rows[2], shared[2], strict=True):  # float sums in another order: relative to the largest
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * float(a.abs().max()))


@pytest.mark.parametrize("logits_head", [True, False])
def test_chunked_fused_head_on_the_packed_rows(monkeypatch, logits_head):
    """Where the kept logits would not fit, or WPO needs log_sum_sq_probs, TRL's chunked head scores the row."""
    from app.train.fast_trainers import install_compact_dpo_head

    monkeypatch.setattr(shared_prompt, "KEPT_LOGITS_MAX", 0 if logits_head else shared_prompt.KEPT_LOGITS_MAX)
    model = tiny_family("llama")
    install_compact_dpo_head(model, outputs=("log_probs", "log_sum_sq_probs"))
    batch = collate(PAIRS)
    (two_rows, two_grads), (shared, shared_grads) = both_paths(model, batch, logits_head)
    with torch.no_grad():
        shared_prompt.wrap_forward(model, logits_head)
        weights = fused_call(model, batch).log_sum_sq_probs
        shared_prompt.uninstall(model)
        expected = fused_call(model, batch).log_sum_sq_probs
    torch.testing.assert_close(weights, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(shared, two_rows, rtol=1e-5, atol=1e-5)
    for a, b in zip(two_grads, shared_grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_cpu_keeps_short_pairs_of_a_batch_in_one_micro_batch(tiny_llama, tmp_path):
    """Packed pairs have no padding: on CPU the batch stays whole while pairs x cutoff_len is small."""
    from app.config import JobConfig
    from app.train.model_setup import apply_method, load_model

    job = JobConfig(stage="dpo", model_name_or_path=str(tiny_llama), dataset="unused", cutoff_len=512,
                    per_device_train_batch_size=4, gradient_accumulation_steps=2)
    model = apply_method(job, load_model(job, tiny_llama))  # LoRA: the PEFT wrapper is looked through
    one_by_one = {"per_device_train_batch_size": 1, "gradient_accumulation_steps": 8}  # app.train.batching
    assert shared_prompt.micro_batch_arguments(job, model, one_by_one) == one_by_one | {
        "per_device_train_batch_size": 2, "per_device_eval_batch_size": 2, "gradient_accumulation_steps": 4}
    long = job.replace(cutoff_len=2048)
    assert shared_prompt.micro_batch_arguments(long, model, one_by_one) == one_by_one | {
        "per_device_train_batch_size": 1, "per_device_eval_batch_size": 1, "gradient_accumulation_steps": 8}
    gpt2 = tiny_family("gpt2")  # two padded rows per pair: one pair at a time, as before
    assert shared_prompt.micro_batch_arguments(job, gpt2, one_by_one) == one_by_one
