"""The shared state every tab receives: folders, the job manager, strings, and named components.

A tab module exposes `build(ctx: StudioContext) -> None` and is called inside an open `gr.Tab`.
It creates its components through `ctx.make(...)` (or `ctx.register(...)`) so that the language
dropdown re-labels them, reads components other tabs made from `ctx.shared` (e.g. the model the
Model tab picked) and `ctx.fields` (the JobConfig controls), and can postpone wiring that needs a
component a later tab creates with `ctx.after_build(fn)`.

Shared components (`ctx.shared`), set as the tabs are built in this order:
    "lang"            the language dropdown (value "en" | "zh"): pass it as an input to localise messages
    "tabs"            {"model": gr.Tab, "dataset": ..., "train": ..., "chat": ..., "export": ...}
    "model_source",   the Model tab's radio (embedded | folder | hub) and path textbox;
    "model_path"      `ctx.model_inputs()` lists both, `model_name(source, path)` turns them into a name
    "train_monitor"   the Train tab's run monitor (app.ui.tabs.train_runs.Monitor)
    "form"            the model inputs and every field, packed into one value for events (app.ui.idle.Pack)

Nothing here holds run state: runs come from `ctx.manager` (rebuilt from the run folders), so a
browser refresh or a UI restart shows everything as it is.
"""

from __future__ import annotations

import inspect
import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from app.jobs.manager import JobManager
from app.models.hardware import Hardware, probe_hardware
from app.models.info import ModelInfo, describe_model
from app.models.source import ModelSourceError, looks_like_hub_id, resolve_model_path
from app.ui.i18n import LANGUAGES, Translator

# Components whose visible text is their value, and those that take a label but no help line.
_VALUE_TEXT = (gr.Button, gr.Markdown)
_LABEL_ONLY = (gr.Tab, gr.Accordion, gr.DownloadButton, gr.UploadButton)

MODEL_SOURCES = ("embedded", "folder", "hub")
DEFAULT_MAX_UPLOAD_MB = 200.0


def max_upload_mb() -> float:
    """The largest file the studio accepts (FTSTUDIO_MAX_UPLOAD_MB, `ftstudio webui --max-upload-mb`)."""
    try:
        value = float(os.environ.get("FTSTUDIO_MAX_UPLOAD_MB", ""))
    except ValueError:
        return DEFAULT_MAX_UPLOAD_MB
    return value if value > 0 else DEFAULT_MAX_UPLOAD_MB


@dataclass
class Registered:
    component: Any
    key: str
    choice_keys: Sequence[tuple[str, Any]] | None = None  # (string key, value) of translated choices


def model_name(source: str | None, path: str | None) -> str | None:
    """The `model_name_or_path` the Model tab's radio and textbox stand for (None = embedded)."""
    if source in (None, "", "embedded"):
        return None
    return (path or "").strip() or None


class StudioContext:
    def __init__(self, runs_dir: str | Path, dataset_dir: str | Path, lang: str = "en",
                 manager: JobManager | None = None):
        self.runs_dir = Path(runs_dir).expanduser().resolve()
        self.dataset_dir = Path(dataset_dir).expanduser().resolve()
        self.lang = lang
        self.manager = manager or JobManager(self.runs_dir)
        self.i18n = Translator()
        self.fields: dict[str, Any] = {}  # JobConfig field name -> its control (model and train tabs)
        self.shared: dict[str, Any] = {}  # named components other tabs may read; see app.ui.app
        self.registry: list[Registered] = []
        self.demo: gr.Blocks | None = None  # the Blocks being built (for demo.load events)
        self._deferred: list[Callable[[], None]] = []
        self._hardware: tuple[float, Hardware] | None = None
        self._described: dict[str | None, ModelInfo] = {}
        self._lock = threading.Lock()

    # -- strings ------------------------------------------------------------------------------
    def t(self, key: str, lang: str | None = None, **values: object) -> str:
        return self.i18n.t(key, lang or self.lang, **values)

    def add_strings(self, table: dict[str, dict[str, str]]) -> None:
        self.i18n.add(table)

    def text_kwargs(self, cls: type, key: str, lang: str | None = None) -> dict[str, Any]:
        """Constructor (or gr.update) arguments that show `key` on a component of class `cls`."""
        lang = lang or self.lang
        text = self.t(key, lang)
        if issubclass(cls, _VALUE_TEXT):
            return {"value": text}
        if issubclass(cls, _LABEL_ONLY):
            return {"label": text}
        kwargs: dict[str, Any] = {"label": text}
        if "info" in inspect.signature(cls.__init__).parameters:
            kwargs["info"] = self.i18n.info(key, lang)
        return kwargs

    # -- components ---------------------------------------------------------------------------
    def register(self, component: Any, key: str, choice_keys: Sequence[tuple[str, Any]] | None = None) -> Any:
        """Re-label `component` with string `key` whenever the language changes; returns it."""
        self.registry.append(Registered(component, key, choice_keys))
        return component

    def make(self, cls: type, key: str, choice_keys: Sequence[tuple[str, Any]] | None = None,
             **kwargs: Any) -> Any:
        """`cls(...)` labelled (and help-lined) from `key` in the current language, registered."""
        if choice_keys is not None:
            kwargs["choices"] = [(self.t(k), v) for k, v in choice_keys]
        component = cls(**(self.text_kwargs(cls, key) | kwargs))
        return self.register(component, key, choice_keys)

    def relabel(self, lang: str) -> list[Any]:
        """One gr.update per registered component (in registry order) for language `lang`."""
        updates = []
        for entry in self.registry:
            kwargs = self.text_kwargs(type(entry.component), entry.key, lang)
            if entry.choice_keys is not None:
                kwargs["choices"] = [(self.t(k, lang), v) for k, v in entry.choice_keys]
            updates.append(gr.update(**kwargs))
        return updates

    def relabel_js(self) -> str:
        """The language switch as a function that runs in the page: (lang) -> `relabel(lang)` for every
        language, as Gradio would send it. A backend event would leave each of the ~300 components it
        relabels in the page's loading-status table, which every later event walks (app.ui.idle): after
        one switch a Train-tab tick cost the page 3x as much. Each update goes through the step Gradio
        applies to a backend's (`app.ui.poll.encode`)."""
        from app.ui.poll import encode

        table: dict[str, list[dict[str, Any]]] = {}
        for lang in LANGUAGES:
            table[lang] = [encode(entry.component, update) for entry, update in zip(self.registry, self.relabel(lang))]
        literal = json.dumps(table, ensure_ascii=False).replace("</", "<\\/")
        return f"(lang) => {{ const table = {literal}; return table[lang] || table[{json.dumps(self.lang)}]; }}"

    def after_build(self, fn: Callable[[], None]) -> None:
        """Run `fn` once every tab is built (to wire events to components of later tabs)."""
        self._deferred.append(fn)

    def finish(self) -> None:
        while self._deferred:
            self._deferred.pop(0)()

    # -- model and hardware (cached; the UI asks often) ----------------------------------------
    def model_inputs(self) -> list[Any]:
        """[source radio, path textbox]: pass to an event, then `model_name(source, path)`."""
        return [self.shared["model_source"], self.shared["model_path"]]

    def model_info(self, name: str | None, fetch: bool = True) -> ModelInfo:
        """Describe a base model (None = embedded). Raises ModelSourceError with a readable message.

        With fetch=False a hub id that was not described yet is not downloaded (an estimate that runs
        on every keystroke must not start a multi-GB download): ModelSourceError says to load it.
        """
        if name in self._described:
            return self._described[name]
        if not fetch and name and not Path(name).expanduser().exists() and looks_like_hub_id(name):
            raise ModelSourceError(f"Press 'Load info' on the Model tab to fetch {name} first.")
        info = describe_model(str(resolve_model_path(name)))
        self._described[name] = info
        return info

    def hardware(self, max_age_s: float = 4.0) -> Hardware:
        with self._lock:
            if self._hardware is None or time.time() - self._hardware[0] > max_age_s:
                self._hardware = (time.time(), probe_hardware())
            return self._hardware[1]
