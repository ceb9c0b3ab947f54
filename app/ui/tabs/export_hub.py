"""Export tab addition: push the chosen run's adapter, or the export folder, to the Hugging Face Hub
with a model card (app.export.hub). Offline, the message names the repository and says why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from app.ui.context import StudioContext

PRIVATE: dict[str, Any] = {"api_visibility": "private"}
WHAT = ("adapter", "export")

STRINGS: dict[str, dict[str, str]] = {
    "export.hub": {"en": "Push to the Hugging Face Hub", "zh": "推送到 Hugging Face Hub"},
    "export.hub_what": {"en": "What to push", "zh": "推送内容"},
    "export.hub_what.info": {"en": "adapter: the run's adapter as trained; export: the output folder above "
                                   "(merged model or GGUF), after Export.",
                             "zh": "adapter：运行训练出的适配器；export：上方的输出目录（合并模型或 GGUF），"
                                   "需先导出。"},
    "export.hub_repo": {"en": "Repository (user/name)", "zh": "仓库（用户名/名称）"},
    "export.hub_token": {"en": "Token (empty: HF_TOKEN or the saved login)",
                         "zh": "令牌（留空则用 HF_TOKEN 或已保存的登录）"},
    "export.hub_private": {"en": "Private repository", "zh": "私有仓库"},
    "export.hub_push": {"en": "Push", "zh": "推送"},
}


def source_for(what: str, run: str | None, folder: str | None, output: str | None, runs_dir: Path) -> str | None:
    """The folder to push: the run (or folder) for "adapter", the export output folder for "export"."""
    if what == "export":
        return (output or "").strip() or None
    folder = (folder or "").strip()
    return folder or (str(runs_dir / run) if run else None)


def build_hub(ctx: StudioContext, run: Any, folder: Any, output: Any, lang: Any) -> None:
    ctx.add_strings(STRINGS)
    with ctx.make(gr.Accordion, "export.hub", open=False, elem_id="export-hub"):
        with gr.Row(equal_height=True):
            what = ctx.make(gr.Radio, "export.hub_what", choices=list(WHAT), value="adapter", scale=2,
                            elem_id="hub-what")
            repo = ctx.make(gr.Textbox, "export.hub_repo", value="", scale=2, elem_id="hub-repo")
            token = ctx.make(gr.Textbox, "export.hub_token", value="", type="password", scale=2, elem_id="hub-token")
            private = ctx.make(gr.Checkbox, "export.hub_private", value=False, scale=1, elem_id="hub-private")
        push = ctx.make(gr.Button, "export.hub_push", elem_id="hub-push")
        result = gr.Markdown("", elem_id="hub-result")

    def on_push(what_: str, run_: str | None, folder_: str, output_: str, repo_: str, token_: str, private_: bool,
                lang_: str) -> str:
        from app.export.errors import ExportError
        from app.export.hub import push_to_hub

        source = source_for(what_, run_, folder_, output_, ctx.runs_dir)
        if not source:
            return f"✗ {ctx.t('export.msg.no_source', lang_)}"
        try:
            url = push_to_hub(source, repo_, token=(token_ or "").strip() or None, private=bool(private_))
        except ExportError as exc:
            return f"✗ {exc}"
        return f"✓ Pushed to **{repo_}**: {url}"

    push.click(on_push, [what, run, folder, output, repo, token, private, lang], result, concurrency_limit=1,
               **PRIVATE)
