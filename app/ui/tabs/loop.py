"""Continuous fine-tuning panel (an accordion on the Export tab, where the API server is started): the
policy form, feedback counts, "Check now", the history table and rollback. Everything goes through
app.loop.controller.LoopController, as `ftstudio loop policy|status|run-once|rollback` does.

A check trains and evaluates for minutes: it runs in a thread of the studio process (the jobs themselves
are separate processes) and the panel polls runs/loop/status.json. Promotions and rollbacks are history
lines; the API server follows them when it was started with "Serve the loop" ticked (`--loop`).
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import gradio as gr

from app.config import ConfigError
from app.config.loop import LOOP_METHODS, LOOP_METRICS, LoopPolicy
from app.loop.controller import LoopController, policy_file
from app.loop.history import LoopError
from app.loop.report import COLUMNS, history_rows, status_lines
from app.ui.context import StudioContext, model_name
from app.ui.export_server import ApiServer
from app.ui.poll import poll
from app.ui.tabs.chat import finished_runs
from app.ui.tabs.loop_strings import STRINGS

log = logging.getLogger(__name__)
PRIVATE: dict[str, Any] = {"api_visibility": "private"}
POLL_S = 2.0
MAIN = ("model_name", "adapter", "method", "min_new_rows", "enabled", "replay_share", "replay_dataset",
        "eval_dataset", "metric", "tolerance")
MORE = ("check_interval_s", "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
        "lora_rank", "pref_beta", "eval_max_samples", "eval_max_new_tokens", "template")
LISTS = ("replay_dataset", "eval_dataset")  # comma-separated fields shown as multiselects
BASE_CHOICE = ""  # the adapter dropdown's "base model alone"

_checks: dict[Path, threading.Thread] = {}  # runs folder -> the check running in this process
_last: dict[Path, str] = {}  # runs folder -> how the last check of this process ended


def loop_checkbox(ctx: StudioContext) -> Any:
    """The Export tab's "Serve the loop" switch for its API server."""
    ctx.add_strings(STRINGS)
    return ctx.make(gr.Checkbox, "loop.serve", value=policy_file(ctx.runs_dir).is_file(), elem_id="api-loop")


def loop_server_args(ctx: StudioContext, follow: bool) -> list[str]:
    """Extra `ftstudio api` arguments: the studio's folders (feedback lands there), and the loop when ticked."""
    args = ["--runs-dir", str(ctx.runs_dir), "--dataset-dir", str(ctx.dataset_dir)]
    path = policy_file(ctx.runs_dir)
    if follow:
        if not path.is_file():
            raise LoopError("Save a continuous fine-tuning policy first (panel below), or untick 'Serve the loop'.")
        args += ["--loop", str(path)]
    return args


def to_controls(policy: LoopPolicy, runs_dir: Path) -> list[Any]:
    values = []
    for name in MAIN + MORE:
        value = getattr(policy, name)
        if name in LISTS:
            value = [v.strip() for v in (value or "").split(",") if v.strip()]
        elif name == "adapter":
            path = Path(value) if value else None
            value = path.name if path and path.parent == runs_dir else (value or BASE_CHOICE)
        elif value is None:
            value = "" if name == "template" else None
        values.append(value)
    return values


def from_controls(values: list[Any], ctx: StudioContext, base: str | None) -> LoopPolicy:
    data: dict[str, Any] = {}
    for name, value in zip(MAIN + MORE, values):
        if name in LISTS:
            value = ",".join(v for v in ([value] if isinstance(value, str) else value or []) if v) or None
        elif name == "adapter":
            value = str(ctx.runs_dir / value) if value and "/" not in value else (value or None)
        elif isinstance(value, float) and value.is_integer() and LoopPolicy.field_type(name) is int:
            value = int(value)
        data[name] = value
    if not data.get("eval_dataset"):
        data["eval_dataset"] = ""  # reported by the schema, with the other problems
    return LoopPolicy.from_dict(data | {"model_name_or_path": base, "dataset_dir": str(ctx.dataset_dir)})


def api_line(ctx: StudioContext, lang: str) -> str:
    """Whether the Export tab's API server follows the loop, and which version it serves."""
    status = ApiServer(ctx.runs_dir / ".api-server").status()
    if status.state != "ready":
        return ctx.t("loop.msg.api_off", lang)
    try:
        with urllib.request.urlopen(f"{status.base_url}/loop", timeout=2) as response:
            info = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return ctx.t("loop.msg.api_key" if exc.code == 401 else "loop.msg.api_plain", lang)
    except (OSError, ValueError):
        return ctx.t("loop.msg.api_off", lang)
    return ctx.t("loop.msg.api_follows", lang, model=info.get("model"), version=info.get("version"),
                 url=status.base_url)


def build(ctx: StudioContext) -> None:
    ctx.add_strings(STRINGS)
    lang = ctx.shared["lang"]
    controller = LoopController(ctx.runs_dir, manager=ctx.manager)
    defaults = LoopPolicy(dataset_dir=str(ctx.dataset_dir))
    sets = _catalogue(ctx)
    with ctx.make(gr.Accordion, "loop.title", open=True, elem_id="loop-panel"):
        ctx.make(gr.Markdown, "loop.intro")
        status_md = gr.Markdown("", elem_id="loop-status")
        controls: list[Any] = []
        with gr.Row():
            for name in MAIN[:5]:
                controls.append(_control(ctx, name, defaults, sets))
        with gr.Row():
            for name in MAIN[5:]:
                controls.append(_control(ctx, name, defaults, sets))
        with ctx.make(gr.Accordion, "loop.more", open=False, elem_id="loop-more"):
            with gr.Row():
                for name in MORE:
                    controls.append(_control(ctx, name, defaults, sets))
        with gr.Row(equal_height=True):
            save = ctx.make(gr.Button, "loop.save", variant="primary", elem_id="loop-save")
            check = ctx.make(gr.Button, "loop.check", elem_id="loop-check")
            force = ctx.make(gr.Checkbox, "loop.force", value=False, elem_id="loop-force")
            refresh = ctx.make(gr.Button, "loop.refresh", size="sm", elem_id="loop-refresh")
        message = gr.Markdown("", elem_id="loop-message")
        table = ctx.make(gr.Dataframe, "loop.history", headers=list(COLUMNS), interactive=False, wrap=True,
                         column_widths=["7%", "12%", "9%", "20%", "11%", "8%", "7%", "7%", "19%"],
                         elem_id="loop-history")
        with gr.Row(equal_height=True):
            version = ctx.make(gr.Dropdown, "loop.version", choices=[], value=None, scale=2, elem_id="loop-version")
            rollback = ctx.make(gr.Button, "loop.rollback", variant="stop", scale=1, elem_id="loop-rollback")
    timer = gr.Timer(POLL_S, active=False)

    def show(lang_: str) -> tuple[Any, ...]:
        try:
            status = controller.status(ctx.dataset_dir)
        except (LoopError, ConfigError) as exc:
            return ctx.t("loop.msg.error", lang_, error=str(exc)), gr.skip(), gr.skip(), gr.Timer(active=False)
        served = status.served.number if status.served else None
        lines = status_lines(status) + [api_line(ctx, lang_)]
        servable = [n for n, v in controller.history.versions().items()
                    if v.entry["kind"] == "start" or v.entry.get("promoted")]
        busy = _running(ctx) or status.activity.get("state") not in ("idle", "interrupted", None)
        return ("\n\n".join(lines), history_rows(status.history, served),
                gr.update(choices=[(f"v{n}", n) for n in servable]), gr.Timer(active=busy))

    def on_load(lang_: str) -> tuple[Any, ...]:
        found, values = _catalogue(ctx), None
        if policy_file(ctx.runs_dir).is_file():
            try:
                values = to_controls(controller.policy(), ctx.runs_dir)
            except (LoopError, ConfigError) as exc:
                log.warning("loop policy unreadable: %s", exc)
        updates = []
        for i, name in enumerate(MAIN + MORE):
            kwargs: dict[str, Any] = {"choices": found} if name in LISTS else {}
            if name == "adapter":
                kwargs["choices"] = _adapters(ctx)
            if values is not None:
                kwargs["value"] = values[i]
            updates.append(gr.update(**kwargs) if kwargs else gr.skip())
        return (*updates, *show(lang_))

    outputs = [status_md, table, version, timer]
    for event in (ctx.shared["tabs"]["export"].select,):
        event(on_load, lang, [*controls, *outputs], show_progress="hidden", **PRIVATE)
    refresh.click(show, lang, outputs, show_progress="hidden", **PRIVATE)

    def tick(lang_: str) -> tuple[Any, ...]:
        shown = show(lang_)
        note = ctx.t("loop.msg.checking", lang_) if _running(ctx) else _last.get(ctx.runs_dir, gr.skip())
        return (*shown, note)

    poll(timer, tick, [lang], [*outputs, message])  # ticks in the page (app.ui.poll): no Gradio event per tick

    def on_save(lang_: str, src: str, where: str, *values: Any) -> str:
        try:
            policy = from_controls(list(values), ctx, model_name(src, where))
        except ConfigError as exc:
            return ctx.t("loop.msg.error", lang_, error="; ".join(exc.problems))
        path = controller.save_policy(policy)
        return ctx.t("loop.msg.saved", lang_, path=path)

    save.click(on_save, [lang, *ctx.model_inputs(), *controls], message, show_progress="hidden", **PRIVATE).then(
        show, lang, outputs, show_progress="hidden", **PRIVATE)

    def on_check(lang_: str, forced: bool) -> tuple[Any, ...]:
        if _running(ctx):
            return ctx.t("loop.msg.busy", lang_), gr.skip()
        if not policy_file(ctx.runs_dir).is_file():
            return ctx.t("loop.msg.no_policy", lang_), gr.skip()
        thread = threading.Thread(target=_check, args=(ctx, controller, bool(forced), lang_), daemon=True,
                                  name="ftstudio-loop-check-now")
        _checks[ctx.runs_dir] = thread
        _last.pop(ctx.runs_dir, None)
        thread.start()
        return ctx.t("loop.msg.checking", lang_), gr.Timer(active=True)

    check.click(on_check, [lang, force], [message, timer], show_progress="hidden", **PRIVATE)

    def on_rollback(lang_: str, number: Any) -> str:
        if number in (None, ""):
            return ctx.t("loop.msg.pick", lang_)
        try:
            served = controller.rollback(int(number))
        except LoopError as exc:
            return ctx.t("loop.msg.error", lang_, error=str(exc))
        return ctx.t("loop.msg.rolled_back", lang_, version=served.number)

    rollback.click(on_rollback, [lang, version], message, show_progress="hidden", **PRIVATE).then(
        show, lang, outputs, show_progress="hidden", **PRIVATE)


def _control(ctx: StudioContext, name: str, defaults: LoopPolicy, sets: list[str]) -> Any:
    key, value = f"loop.field.{name}", getattr(defaults, name)
    common = {"elem_id": f"loop-{name.replace('_', '-')}"}
    if name in LISTS:
        chosen = [v.strip() for v in (value or "").split(",") if v.strip()]
        return ctx.make(gr.Dropdown, key, choices=sets, value=[c for c in chosen if c in sets], multiselect=True,
                        allow_custom_value=True, **common)
    if name == "adapter":
        return ctx.make(gr.Dropdown, key, choices=_adapters(ctx), value=BASE_CHOICE, allow_custom_value=True,
                        **common)
    if name == "method":
        return ctx.make(gr.Radio, key, choices=list(LOOP_METHODS), value=value, **common)
    if name == "metric":
        return ctx.make(gr.Dropdown, key, choices=list(LOOP_METRICS), value=value, **common)
    if name == "enabled":
        return ctx.make(gr.Checkbox, key, value=value, **common)
    if name == "replay_share":
        return ctx.make(gr.Slider, key, minimum=0.0, maximum=0.95, step=0.05, value=value, **common)
    if name in ("model_name", "template"):
        return ctx.make(gr.Textbox, key, value=value or "", **common)
    integer = LoopPolicy.field_type(name) is int
    return ctx.make(gr.Number, key, value=value, precision=0 if integer else None, **common)


def _adapters(ctx: StudioContext) -> list[tuple[str, str]]:
    return [(ctx.t("loop.base"), BASE_CHOICE)] + [(name, name) for name in finished_runs(ctx)]


def _catalogue(ctx: StudioContext) -> list[str]:
    from app.data.catalogue import load_catalogue
    from app.data.errors import DataError

    try:
        return sorted(n for n, s in load_catalogue(ctx.dataset_dir).items() if not s.problems)
    except (DataError, OSError):
        return []


def _running(ctx: StudioContext) -> bool:
    thread = _checks.get(ctx.runs_dir)
    return bool(thread and thread.is_alive())


def _check(ctx: StudioContext, controller: LoopController, force: bool, lang: str) -> None:
    try:
        cycle = controller.run_once(force=force)
    except LoopError as exc:
        _last[ctx.runs_dir] = ctx.t("loop.msg.error", lang, error=str(exc))
        return
    except Exception as exc:  # noqa: BLE001 - the panel shows one line; the traceback goes to the log
        log.exception("loop check failed")
        _last[ctx.runs_dir] = ctx.t("loop.msg.error", lang, error=f"{type(exc).__name__}: {exc}")
        return
    _last[ctx.runs_dir] = (ctx.t("loop.msg.not_due", lang) if cycle is None else
                           ctx.t("loop.msg.cycle", lang, version=cycle.version, reason=cycle.reason))
