"""The preference, reward and reinforcement stages, through the real worker on a tiny model on CPU.

ORPO, SimPO, DPO + SFT term and KTO: the loss falls. rm: pairwise accuracy and loss over the run, and
the run folder loads back as a reward model that GRPO uses. GRPO: a learnable reward (from a user's
Python file) rises within a few steps, and every built-in reward and the KL are logged as curves.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest
from test_train_support import make_tiny_model, run_in_process, step_logs

from app.config import JobConfig
from app.train.runfolder import RunFolder

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("stages") / "model")


def stage_job(model: Path, output_dir: Path, **changes) -> JobConfig:
    base = dict(model_name_or_path=str(model), dataset_dir=str(REPO), cutoff_len=96, per_device_train_batch_size=4,
                gradient_accumulation_steps=1, logging_steps=1, save_steps=1000, learning_rate=5e-3, max_steps=6,
                max_samples=16, output_dir=str(output_dir))
    return JobConfig(**(base | changes))


def train(job: JobConfig) -> list[dict]:
    code = run_in_process(job)
    run = RunFolder(Path(job.output_dir))
    assert code == 0 and run.read_state()["state"] == "finished", run.tail_log()
    return step_logs(run.events.read_all())


def falls(values: list[float]) -> bool:
    """The last two steps average below the first two."""
    return statistics.mean(values[-2:]) < statistics.mean(values[:2])


@pytest.mark.parametrize("changes, curve", [
    (dict(stage="dpo", pref_loss="orpo", dataset="preference_demo"), "log_odds_ratio"),
    (dict(stage="dpo", pref_loss="simpo", pref_ftx=0.5, dataset="preference_demo"), "rewards_margins"),
    (dict(stage="dpo", pref_loss="sigmoid", pref_ftx=1.0, dataset="preference_demo"), "rewards_margins"),
    (dict(stage="kto", dataset="kto_demo"), "kl"),
], ids=["orpo", "simpo", "dpo+sft", "kto"])
def test_preference_losses_fall(tiny_model: Path, tmp_path: Path, changes: dict, curve: str) -> None:
    logs = train(stage_job(tiny_model, tmp_path / "run", max_steps=4, max_samples=8, **changes))
    assert falls([e["loss"] for e in logs]), [e["loss"] for e in logs]
    assert all(curve in e for e in logs)  # the stage's own numbers reach the events (and the Train tab)


def test_reward_model_learns_and_feeds_grpo(tiny_model: Path, tmp_path: Path) -> None:
    logs = train(stage_job(tiny_model, tmp_path / "rm", stage="rm", dataset="preference_demo", max_steps=8))
    assert falls([e["loss"] for e in logs])
    accuracy = [e["accuracy"] for e in logs]
    assert statistics.mean(accuracy[-3:]) > statistics.mean(accuracy[:3])

    from app.train.reward import load_reward_model

    model, tokenizer = load_reward_model(tmp_path / "rm")
    assert model.config.num_labels == 1 and tokenizer.pad_token_id is not None

    # GRPO with every built-in reward at once (the judge is tested without a server below)
    logs = train(stage_job(tiny_model, tmp_path / "grpo", stage="grpo", dataset="grpo_math_demo", max_steps=2,
                           reward_funcs="exact_match,format,length,reward_model", reward_model=str(tmp_path / "rm"),
                           max_completion_length=8, num_generations=4, per_device_train_batch_size=4))
    for key in ("reward", "reward_std", "kl", "completions_mean_length", "rewards_exact_match_mean",
                "rewards_format_mean", "rewards_length_mean"):
        assert all(key in e for e in logs), key
    assert len([k for k in logs[0] if k.startswith("rewards_") and k.endswith("_mean")]) == 4  # + the reward model


def test_grpo_raises_a_learnable_reward(tiny_model: Path, tmp_path: Path) -> None:
    reward_file = tmp_path / "my_reward.py"
    reward_file.write_text(  # the share of common (low-id) tokens: something a policy can learn fast
        "def common_tokens(prompts, completions, completion_ids, **kwargs):\n"
        "    return [sum(t < 2000 for t in ids) / max(len(ids), 1) for ids in completion_ids]\n")
    logs = train(stage_job(tiny_model, tmp_path / "grpo", stage="grpo", dataset="grpo_math_demo",
                           reward_funcs=f"{reward_file}:common_tokens", finetuning_type="full", learning_rate=3e-2,
                           lr_scheduler_type="constant", max_steps=8, max_completion_length=16, num_generations=4,
                           per_device_train_batch_size=8, grpo_beta=0.0))
    rewards = [e["rewards_common_tokens_mean"] for e in logs]
    assert statistics.mean(rewards[-2:]) > statistics.mean(rewards[:2]) + 0.03, rewards


def test_builtin_rewards_and_judge_offline() -> None:
    from app.train.rewards import exact_match, format_reward, judge_reward, length_reward

    completions = [[{"role": "assistant", "content": "<think>3 plus 4</think> The answer is 7."}],
                   [{"role": "assistant", "content": "It is 8"}]]
    assert exact_match([], completions, answer=["7", "7"]) == [1.0, 0.0]
    assert exact_match([], [[{"role": "assistant", "content": "<think>7?</think> no idea"}]], answer=["7"]) == [0.0]
    assert format_reward(r"(?s)^<think>.+?</think>\s*\S")([], completions) == [1.0, 0.0]
    assert length_reward(7)([], completions) == [max(-1.0, 1 - abs(len(completions[0][0]["content"]) - 7) / 7), 1.0]
    judge = judge_reward("http://127.0.0.1:9/v1", "grader", timeout=2)
    with pytest.raises(RuntimeError, match=r"reward_judge_url: the judge at http://127.0.0.1:9/v1/chat/completions"):
        judge(["q"], completions[:1])


def test_grpo_job_problems_name_the_field() -> None:
    from app.config import ConfigError

    with pytest.raises(ConfigError, match="reward_funcs: unknown reward 'bleu'"):
        JobConfig(stage="grpo", reward_funcs="bleu").validate()
    with pytest.raises(ConfigError, match="reward_model: the reward_model reward needs"):
        JobConfig(stage="grpo", reward_funcs="reward_model").validate()
    with pytest.raises(ConfigError, match="reward_weights: give one number per reward"):
        JobConfig(stage="grpo", reward_funcs="exact_match,length", reward_weights="1").validate()
