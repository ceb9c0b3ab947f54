"""The Evaluate tab's logic without gradio: which model a form names, a run's status line, checkpoint choices.

Model sources:
    base    the Model tab's model (model_name_or_path), no adapter
    run     a finished training run: its final adapter, or one of its checkpoints (the best one marked)
    path    a folder or file: a merged export or model folder, a .gguf file, or an adapter / run folder
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.config import EvalConfig
from app.eval.loading import is_gguf
from app.train.runfolder import RunFolder
from app.ui.i18n_train import stage_text, state_label, translate_problem

SOURCES = ("base", "run", "path")
FINAL = "final"
Translate = Callable[..., str]  # (key, **values) -> text in the page's language

# The compare tables' columns (app.eval.compare's English titles: they stay in the CSV) and the status line.
STRINGS: dict[str, dict[str, str]] = {
    "evcol.run": {"en": "run", "zh": "运行"},
    **{f"evcol.{name}": {"en": name, "zh": name} for name in ("BLEU-4", "ROUGE-1", "ROUGE-2", "ROUGE-L")},
    "evcol.model": {"en": "model", "zh": "模型"},
    "evcol.data": {"en": "data", "zh": "数据"},
    "evcol.rows": {"en": "rows", "zh": "行数"},
    "evcol.eval loss": {"en": "eval loss", "zh": "评估损失"},
    "evcol.perplexity": {"en": "perplexity", "zh": "困惑度"},
    "evcol.samples/s": {"en": "samples/s", "zh": "样本/秒"},
    "evcol.judge win": {"en": "judge win", "zh": "评审胜率"},
    "evcol.judge tie": {"en": "judge tie", "zh": "评审平局率"},
    "evcol.judge loss": {"en": "judge loss", "zh": "评审负率"},
    "evcol.index": {"en": "index", "zh": "序号"},
    "evcol.question": {"en": "question", "zh": "问题"},
    "evcol.reference": {"en": "reference", "zh": "参考答案"},
    "evcol.gain": {"en": "gain", "zh": "提升"},
    "eval.final_adapter": {"en": "final adapter", "zh": "最终适配器"},
    "eval.best_mark": {"en": "★ best eval loss", "zh": "★ 评估损失最低"},
    "eval.phase.generate": {"en": "generating", "zh": "生成"},
    "eval.phase.loss": {"en": "loss", "zh": "计算损失"},
    "eval.status.speed": {"en": "{rate:.2f} samples/s", "zh": "{rate:.2f} 样本/秒"},
    "eval.status.eta": {"en": "ETA {s} s", "zh": "预计剩余 {s} 秒"},
    "stage.generating": {"en": "generating answers", "zh": "正在生成回答"},
    "stage.scoring": {"en": "scoring", "zh": "正在计算损失与 BLEU/ROUGE"},
}


def english(key: str, **values: Any) -> str:
    text = STRINGS[key]["en"] if key in STRINGS else key
    return text.format(**values) if values else text


def column_title(column: str, t: Translate) -> str:
    """A compare-table column in the page's language: metric names (BLEU-4, ROUGE-L) and run names stay."""
    if column.endswith(" ROUGE-L"):
        return column
    key = f"evcol.{column}"
    title = t(key)
    return column if title == key else title


def localised(frame: Any, t: Translate) -> Any:
    """A compare frame (metrics or predictions) with its headers in the page's language."""
    return frame.rename(columns={c: column_title(str(c), t) for c in frame.columns})


def best_step(events: list[dict[str, Any]]) -> int | None:
    """The step of the run's best checkpoint (the newest `best` event), if it reported one."""
    best = [e for e in events if e.get("kind") == "best"]
    return best[-1].get("step") if best else None


def checkpoint_choices(run: RunFolder, t: Translate = english) -> list[tuple[str, str]]:
    """(label, value) pairs: the final adapter, then each complete checkpoint, the best one starred."""
    best = best_step(run.events.read_all())
    choices = [(t("eval.final_adapter"), FINAL)]
    for folder in run.complete_checkpoints():
        step = int(folder.name.split("-")[-1])
        choices.append((f"{folder.name} {t('eval.best_mark')}" if step == best else folder.name, folder.name))
    return choices


def model_keys(source: str, base_model: str | None, runs_dir: Path, run: str | None, checkpoint: str | None,
               path: str | None) -> dict[str, Any]:
    """EvalConfig keys for what the form's model picker names; ValueError says what is missing."""
    if source == "base":
        return {"model_name_or_path": base_model, "adapter_name_or_path": None}
    if source == "run":
        if not run:
            raise ValueError("adapter_name_or_path: pick a finished training run")
        folder = runs_dir / run
        if checkpoint and checkpoint != FINAL:
            folder = folder / "checkpoints" / checkpoint
        return {"model_name_or_path": None, "adapter_name_or_path": str(folder)}
    given = (path or "").strip()
    if not given:
        raise ValueError("model_name_or_path: enter a model folder, an export, a .gguf file or a run folder")
    where = Path(given).expanduser()
    is_adapter = any((where / f).exists() for f in ("adapter_config.json", "job.yaml", "adapter"))
    if is_adapter and not is_gguf(given):
        return {"model_name_or_path": base_model, "adapter_name_or_path": given}
    return {"model_name_or_path": given, "adapter_name_or_path": None}


def build_config(model: dict[str, Any], datasets: list[str] | str | None, values: dict[str, Any],
                 dataset_dir: Path, runs_dir: Path, name: str | None) -> EvalConfig:
    """The EvalConfig the form describes (ConfigError lists every problem)."""
    chosen = [datasets] if isinstance(datasets, str) else list(datasets or [])
    data: dict[str, Any] = {key: value for key, value in values.items() if value not in ("", None)}
    data |= {"eval_dataset": ",".join(chosen) or None, "dataset_dir": str(dataset_dir)} | model
    for key in ("max_samples", "max_new_tokens", "per_device_eval_batch_size", "cutoff_len", "seed"):
        if isinstance(data.get(key), float) and data[key].is_integer():
            data[key] = int(data[key])
    name = (name or "").strip()
    if name:
        if "/" in name or name in (".", ".."):
            raise ValueError("output_dir: a run name, without '/'")
        data["output_dir"] = str(runs_dir / name)
    return EvalConfig.from_dict(data).with_run_folder(runs_dir)


def column_width(column: str) -> str:
    """Width of a predictions-table column: numbers narrow, texts wide."""
    if column in ("index", "gain") or column.endswith("ROUGE-L"):
        return "90px"
    return "260px" if column in ("question", "reference") else "320px"


def status_line(run: RunFolder, t: Translate | None = None, lang: str = "en") -> str:
    """state · stage · progress · speed · ETA (Markdown) of an evaluation run, from its files, in `lang`
    (`t` looks up this module's and app.ui.i18n_train's strings; None = English)."""
    say = t or _english_status
    state = run.read_state().get("state", "?")
    events = run.events.read_all()
    done = next((e for e in reversed(events) if e.get("kind") == "done"), None)
    if done and state in ("running", "queued"):
        state = done.get("state", state)
    parts = [f"**{run.name}**: **{state_label(state, say)}**"]
    stage = next((e for e in reversed(events) if e.get("kind") == "stage"), None)
    if stage and state in ("running", "queued"):
        parts.append(stage_text(stage, lang, say))
    progress = next((e for e in reversed(events) if e.get("kind") == "progress"), None)
    if progress and state == "running":
        phase = say(f"eval.phase.{progress.get('phase')}")
        parts.append(f"{phase} {progress.get('done')}/{progress.get('total')}")
        if progress.get("samples_per_s"):
            parts.append(say("eval.status.speed", rate=float(progress["samples_per_s"])))
        if progress.get("eta_s") is not None:
            parts.append(say("eval.status.eta", s=int(progress["eta_s"])))
    error = (done or {}).get("error") or run.read_state().get("error")
    if state in ("failed", "stopped") and error:
        parts.append(say("status.error", error=" / ".join(translate_problem(line, lang)
                                                          for line in str(error).splitlines())))
    return " · ".join(parts)


def _english_status(key: str, **values: Any) -> str:
    if key.startswith("state."):
        return key.removeprefix("state.")
    if key == "status.error":
        return f"error: {values['error']}"
    return english(key, **values)


def results_line(results: dict[str, Any], t: Translate = english) -> str:
    """The headline scores of a finished evaluation (Markdown)."""
    keys = [("BLEU-4", "predict_bleu-4"), ("ROUGE-1", "predict_rouge-1"), ("ROUGE-2", "predict_rouge-2"),
            ("ROUGE-L", "predict_rouge-l"), (column_title("eval loss", t), "eval_loss"),
            (column_title("perplexity", t), "perplexity"), (column_title("samples/s", t), "predict_samples_per_second")]
    shown = [f"{title} **{results[key]:.2f}**" for title, key in keys if isinstance(results.get(key), (int, float))]
    return " · ".join(shown)
