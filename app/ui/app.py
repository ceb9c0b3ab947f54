"""The web studio: one gr.Blocks with a language picker and a tab per step (model, dataset, train,
chat, export). `ftstudio webui` calls `webui_main`; tests and embedders call `build_app`.

Each tab module exposes `build(ctx)` and is called inside its open gr.Tab with the shared
`StudioContext` (app.ui.context). Binding beyond loopback needs a password (--auth / FTSTUDIO_AUTH).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import gradio as gr  # app/ui/__init__.py, run before this module, switched telemetry off

from app.jobs.manager import JobManager
from app.net import is_loopback
from app.ui.context import StudioContext, max_upload_mb
from app.ui.i18n import LANGUAGES
from app.ui.idle import app_kwargs, quiet_queue
from app.ui.tabs import chat, dataset, evaluate, export, model, train

TABS: tuple[tuple[str, Callable[[StudioContext], None]], ...] = (
    ("model", model.build), ("dataset", dataset.build), ("train", train.build), ("evaluate", evaluate.build),
    ("chat", chat.build), ("export", export.build),
)
CSS = """
#studio-header { align-items: center; }
#train-status { min-height: 2.5em; }
"""


class AccessError(ValueError):
    """The requested host/auth combination is unsafe or malformed."""


def parse_auth(host: str, auth: str | None) -> tuple[str, str] | None:
    """(user, password) for launch(); None on loopback without auth. Raises AccessError when unsafe."""
    if auth:
        user, sep, password = auth.partition(":")
        if not sep or not user or not password:
            raise AccessError("--auth must be USER:PASS (both non-empty)")
        return user, password
    if not is_loopback(host):
        raise AccessError(
            f"refusing to serve on {host} without a password: anyone who can reach this machine could "
            "start jobs and read files. Pass --auth USER:PASS (or set FTSTUDIO_AUTH), or bind to 127.0.0.1."
        )
    return None


def build_app(runs_dir: str | Path = "runs", dataset_dir: str | Path = ".", lang: str = "en",
              manager: JobManager | None = None) -> gr.Blocks:
    ctx = StudioContext(runs_dir, dataset_dir, lang=lang, manager=manager)
    ctx.manager.start_scheduler()  # the queue moves with no browser open (app.jobs.scheduler)
    with gr.Blocks(title="Finetune Studio") as demo:
        ctx.demo = demo
        with gr.Row(elem_id="studio-header"):
            ctx.make(gr.Markdown, "app.title", elem_id="studio-title")
            language = ctx.make(gr.Dropdown, "app.lang", choices=[(v, k) for k, v in LANGUAGES.items()],
                                value=lang, scale=0, min_width=160, elem_id="studio-lang")
        ctx.shared["lang"] = language
        ctx.shared["tabs"] = {}
        with gr.Tabs(elem_id="studio-tabs"):
            for name, build in TABS:
                with ctx.make(gr.Tab, f"tab.{name}", id=name, elem_id=f"tab-{name}") as tab:
                    ctx.shared["tabs"][name] = tab
                    build(ctx)
        ctx.finish()
        language.change(None, language, [entry.component for entry in ctx.registry], js=ctx.relabel_js(),
                        show_progress="hidden", api_visibility="private")
    demo.studio = ctx  # type: ignore[attr-defined] - for tests and embedders
    return demo


def webui_main(host: str = "127.0.0.1", port: int = 7860, auth: str | None = None, runs_dir: str | Path = "runs",
               dataset_dir: str | Path = ".", lang: str = "en") -> int:
    try:
        credentials = parse_auth(host, auth)
    except AccessError as exc:
        print(f"ftstudio webui: {exc}", file=sys.stderr)
        return 2
    if lang not in LANGUAGES:
        print(f"ftstudio webui: --lang must be one of {', '.join(LANGUAGES)}", file=sys.stderr)
        return 2
    if not (Path(dataset_dir) / "dataset_info.json").is_file():
        print(f"note: no dataset_info.json in {Path(dataset_dir).resolve()}; add datasets in the Dataset tab",
              file=sys.stderr)
    demo = build_app(runs_dir, dataset_dir, lang)
    demo.queue(default_concurrency_limit=4)
    quiet_queue(demo)
    print(f"Finetune Studio on http://{host}:{port} (runs: {Path(runs_dir).resolve()})", flush=True)
    demo.launch(server_name=host, server_port=port, auth=credentials, ssr_mode=False, show_error=True,
                css=CSS, footer_links=["settings"], quiet=True, app_kwargs=app_kwargs(),
                max_file_size=int(max_upload_mb() * 2**20))  # the server refuses larger uploads outright
    return 0
