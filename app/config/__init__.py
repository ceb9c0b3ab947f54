"""Typed configurations: the one source of truth for every job the studio runs.

    JobConfig   a training run (`ftstudio train`, the Train tab), LLaMA-Factory's training keys
    EvalConfig  predictions and scores of one model (`ftstudio eval`, the Evaluate tab), LF's predict keys
    JudgeConfig the pairwise LLM judge of two evaluation runs (`ftstudio judge`, the Evaluate tab)
    GenerateConfig  synthetic rows from a generator model into a catalogue set (`ftstudio data generate`)
    Schema      the machinery both share (app.config.schema): param(), coercion, validation, YAML

Defaults, help text, groups, choices and bounds live on the fields (`param()`), and nowhere else.
"""

from app.config.evaluation import EVAL_GROUPS, JUDGE_GROUPS, EvalConfig, JudgeConfig
from app.config.generate import GENERATE_GROUPS, GenerateConfig
from app.config.job import (
    DISTRIBUTED_STRATEGIES,
    FINETUNING_TYPES,
    GROUPS,
    IGNORED_KEYS,
    OPTIMIZERS,
    PREF_LOSSES,
    SCHEDULERS,
    STAGES,
    TRACKERS,
    UNSUPPORTED_KEYS,
    JobConfig,
    default_run_name,
)
from app.config.schema import ConfigError, Schema, param, to_bool

# Every kind of job a run folder can hold; its config file name says which (RunFolder.kind).
CONFIG_KINDS: tuple[type[Schema], ...] = (JobConfig, EvalConfig, GenerateConfig)

__all__ = [
    "CONFIG_KINDS", "DISTRIBUTED_STRATEGIES", "EVAL_GROUPS", "FINETUNING_TYPES", "GROUPS", "IGNORED_KEYS",
    "GENERATE_GROUPS", "JUDGE_GROUPS", "OPTIMIZERS", "PREF_LOSSES", "SCHEDULERS", "STAGES", "TRACKERS",
    "UNSUPPORTED_KEYS", "ConfigError", "EvalConfig", "GenerateConfig", "JobConfig", "JudgeConfig", "Schema",
    "default_run_name", "param", "to_bool",
]
