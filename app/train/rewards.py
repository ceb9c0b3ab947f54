"""GRPO reward functions, chosen by the job's `reward_funcs` (comma separated).

Each is a TRL reward function: `f(prompts, completions, **columns) -> list[float]`, one number per
completion; `columns` carries the dataset's other columns (here `answer`, the reference answer).

    exact_match    1 when the reference answer appears in the completion (after its think block), else 0
    format         1 when the completion matches `reward_regex` from its start, else 0
    length         1 - |length - reward_target_length| / reward_target_length, floored at -1 (characters)
    reward_model   the score of a reward model trained with `stage: rm` (TRL runs it on prompt + completion)
    judge          a model behind an OpenAI-compatible API grades each completion 0-10 (scaled to 0-1)
    file.py:name   your own function `name` (default `reward`) from that file, same signature
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.config import JobConfig

RewardFunc = Callable[..., list[float]]
THINK_END = "</think>"


def text_of(completion: Any) -> str:
    """A completion as text: conversational completions are a list of messages."""
    if isinstance(completion, list):
        return "".join(str(m.get("content", "")) for m in completion if isinstance(m, dict))
    return str(completion)


def final_answer(text: str) -> str:
    """What a reasoning model says after its think block (all of it when there is none)."""
    return text.split(THINK_END, 1)[-1]


def _normal(text: str) -> str:
    return " ".join(text.lower().split()).strip(" .!")


def exact_match(prompts: list, completions: list, answer: list[str] | None = None, **_: Any) -> list[float]:
    answers = answer or [""] * len(completions)
    out = []
    for completion, reference in zip(completions, answers):
        reference = _normal(str(reference or ""))
        out.append(1.0 if reference and reference in _normal(final_answer(text_of(completion))) else 0.0)
    return out


def format_reward(pattern: str) -> RewardFunc:
    compiled = re.compile(pattern)

    def format(prompts: list, completions: list, **_: Any) -> list[float]:  # noqa: A001 - the name TRL logs
        return [1.0 if compiled.match(text_of(c)) else 0.0 for c in completions]

    return format


def length_reward(target: int) -> RewardFunc:
    def length(prompts: list, completions: list, **_: Any) -> list[float]:
        return [max(-1.0, 1.0 - abs(len(text_of(c)) - target) / target) for c in completions]

    return length


def judge_reward(url: str, model: str, timeout: float = 60.0) -> RewardFunc:
    """A grader behind an OpenAI-compatible /chat/completions endpoint; its first number 0-10 counts."""
    endpoint = url.rstrip("/") + "/chat/completions"
    key = os.environ.get("FTSTUDIO_JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY") or ""

    def ask(prompt: str, answer: str) -> float:
        body = {"model": model, "temperature": 0, "max_tokens": 8, "messages": [
            {"role": "system", "content": "Grade the answer to the question from 0 (useless) to 10 (perfect). "
                                          "Reply with the number only."},
            {"role": "user", "content": f"Question:\n{prompt}\n\nAnswer:\n{answer}"}]}
        request = urllib.request.Request(endpoint, data=json.dumps(body).encode(), method="POST", headers={
            "Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - the user's URL
                reply = json.loads(response.read())["choices"][0]["message"]["content"]
        except Exception as exc:  # noqa: BLE001
            raise RuntimeError(f"reward_judge_url: the judge at {endpoint} did not answer ({type(exc).__name__}: "
                               f"{exc})") from None
        found = re.search(r"\d+(?:\.\d+)?", reply or "")
        return min(max(float(found.group()) / 10.0, 0.0), 1.0) if found else 0.0

    def judge(prompts: list, completions: list, **_: Any) -> list[float]:
        return [ask(text_of(p), final_answer(text_of(c))) for p, c in zip(prompts, completions)]

    return judge


def file_reward(spec: str) -> RewardFunc:
    """`path/to/file.py:function` (function defaults to `reward`), imported from the file."""
    path_text, _, name = spec.partition(":")
    path = Path(path_text).expanduser()
    name = name or "reward"
    if not path.is_file():
        raise ValueError(f"reward_funcs: reward file {path} not found")
    module_spec = importlib.util.spec_from_file_location(f"ftstudio_reward_{path.stem}", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    func = getattr(module, name, None)
    if not callable(func):
        raise ValueError(f"reward_funcs: {path} has no function {name!r}")
    return func


def build_rewards(job: JobConfig) -> tuple[list[Any], list[Any]]:
    """(reward functions or models, their processing classes: None for functions) for GRPOTrainer."""
    funcs: list[Any] = []
    processors: list[Any] = []
    for name in job.reward_names:
        processor = None
        if name == "exact_match":
            func: Any = exact_match
        elif name == "format":
            func = format_reward(job.reward_regex)
        elif name == "length":
            func = length_reward(job.reward_target_length)
        elif name == "judge":
            func = judge_reward(str(job.reward_judge_url), str(job.reward_judge_model))
        elif name == "reward_model":
            from app.train.reward import load_reward_model

            func, processor = load_reward_model(str(job.reward_model))
        else:
            func = file_reward(name)
        funcs.append(func)
        processors.append(processor)
    return funcs, processors


def reward_weights(job: JobConfig) -> list[float] | None:
    if not job.reward_weights:
        return None
    return [float(w) for w in job.reward_weights.split(",") if w.strip()]
