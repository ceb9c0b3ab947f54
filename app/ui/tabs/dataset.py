"""Dataset tab: the catalogue, a paged preview, and adding a file to dataset_info.json."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import gradio as gr

from app.data.catalogue import FORMATTINGS, register_dataset
from app.data.errors import DataError
from app.ui import dataset_generate, dataset_insight
from app.ui import datasets as logic
from app.ui.context import StudioContext, max_upload_mb
from app.ui.i18n_train import translate_problem

UPLOAD_TYPES = [".json", ".jsonl", ".csv", ".parquet"]


def problems_text(ctx: StudioContext, lang: str, problems: list[Any]) -> str:
    lines = [translate_problem(str(p), lang) for p in problems]
    return "\n".join([ctx.t("msg.invalid", lang, count=len(problems)), *(f"  {line}" for line in lines)])


def upload_problem(ctx: StudioContext, lang: str, file: str | None) -> str | None:
    """The upload limit, said in the page's language (the server also refuses larger uploads at launch)."""
    if not file:
        return None
    try:
        size_mb = os.path.getsize(file) / 2**20
    except OSError:
        return None
    limit = max_upload_mb()
    if size_mb <= limit:
        return None
    return ctx.t("msg.upload_too_large", lang, file=Path(file).name, size=size_mb, limit=limit)


def localise_catalogue(ctx: StudioContext, lang: str, frame: Any) -> Any:
    """The catalogue table with headers and the check column in the page's language."""
    frame = frame.copy()

    def check(text: Any) -> Any:
        text = str(text)
        if text == "ok":
            return ctx.t("check.ok", lang)
        count, sep, first = text.partition(" problem(s): ")
        if sep and count.isdigit():
            return ctx.t("check.problems", lang, count=int(count), first=translate_problem(first, lang))
        return translate_problem(text, lang)

    frame["check"] = frame["check"].map(check)
    frame.columns = [ctx.t(f"col.{c}", lang) for c in frame.columns]
    return frame


def build(ctx: StudioContext) -> None:
    lang = ctx.shared["lang"]
    with ctx.make(gr.Accordion, "data.catalogue", open=True):
        table = gr.Dataframe(headers=logic.CATALOGUE_COLUMNS, interactive=False, wrap=True, elem_id="data-catalogue",
                             show_label=False)
        refresh = ctx.make(gr.Button, "data.refresh", size="sm", elem_id="data-refresh")

    with ctx.make(gr.Accordion, "data.preview", open=True):
        with gr.Row():
            which = ctx.make(gr.Dropdown, "data.preview_name", choices=[], scale=3, elem_id="data-preview-name")
            prev = ctx.make(gr.Button, "data.prev", size="sm", scale=1, elem_id="data-prev")
            page_label = gr.Markdown("", elem_id="data-page")
            nxt = ctx.make(gr.Button, "data.next", size="sm", scale=1, elem_id="data-next")
        preview = gr.Dataframe(interactive=False, wrap=True, max_height=420, elem_id="data-preview", show_label=False)
        page = gr.State(0)

    with ctx.make(gr.Accordion, "data.upload_title", open=True):
        with gr.Row():
            upload = ctx.make(gr.File, "data.file", file_types=UPLOAD_TYPES, scale=2, height=120, elem_id="data-file")
            with gr.Column(scale=3):
                with gr.Row():
                    name = ctx.make(gr.Textbox, "data.name", elem_id="data-name")
                    formatting = ctx.make(gr.Radio, "data.formatting", choices=list(FORMATTINGS), value="alpaca",
                                          elem_id="data-formatting")
                ranking = ctx.make(gr.Checkbox, "data.ranking", value=False, elem_id="data-ranking")
        with ctx.make(gr.Accordion, "data.columns", open=True):
            with gr.Row():
                roles = {role: ctx.make(gr.Dropdown, f"data.col.{role}", choices=[("—", "")], value="",
                                        visible=role in logic.roles_for("alpaca", False), min_width=140,
                                        elem_id=f"data-col-{role}")
                         for role in logic.ROLES}
        with gr.Row():
            validate = ctx.make(gr.Button, "data.validate", elem_id="data-validate")
            register = ctx.make(gr.Button, "data.register", variant="primary", elem_id="data-register")
        result = ctx.make(gr.Textbox, "data.result", lines=6, max_lines=20, interactive=False, elem_id="data-result")
    dataset_insight.build(ctx)  # statistics under the chosen model's template; suggested cutoff_len
    dataset_generate.build(ctx)  # synthetic rows from topics or documents, as a background job
    columns = gr.State([])
    role_list = list(roles.values())

    def show_catalogue(current: str | None, lang_: str = "en") -> tuple[Any, Any]:
        frame = logic.catalogue_frame(ctx.dataset_dir)
        names = [n for n in frame["name"].tolist() if n]
        value = current if current in names else (names[0] if names else None)
        return localise_catalogue(ctx, lang_, frame), gr.update(choices=names, value=value)

    def show_page(dataset: str | None, wanted: int) -> tuple[Any, int, str]:
        try:
            frame, shown, pages = logic.preview_page(ctx.dataset_dir, dataset, wanted)
        except DataError as exc:
            return None, 0, str(exc)
        return frame, shown, f"{shown + 1} / {pages}" if pages else ""

    for event in (refresh.click, ctx.shared["tabs"]["dataset"].select, lang.change):
        event(show_catalogue, [which, lang], [table, which], api_visibility="private")
    which.change(lambda d: show_page(d, 0), which, [preview, page, page_label], api_visibility="private")
    prev.click(lambda d, p: show_page(d, p - 1), [which, page], [preview, page, page_label], api_visibility="private")
    nxt.click(lambda d, p: show_page(d, p + 1), [which, page], [preview, page, page_label], api_visibility="private")

    def role_updates(fmt: str, rank: bool, cols: list[str], guess: bool) -> list[Any]:
        wanted = logic.roles_for(fmt, rank)
        guessed = logic.guess_mapping(fmt, rank, cols) if guess else {}
        choices = [("—", "")] + [(c, c) for c in cols]
        updates = []
        for role in logic.ROLES:
            kwargs: dict[str, Any] = {"visible": role in wanted, "choices": choices}
            if guess:
                kwargs["value"] = guessed.get(role, "")
            updates.append(gr.update(**kwargs))
        return updates

    def on_upload(file: str | None, fmt: str, rank: bool, lang_: str) -> list[Any]:
        too_large = upload_problem(ctx, lang_, file)
        if not file or too_large:
            return [[], gr.update(), gr.update(), gr.update(), *role_updates(fmt, rank, [], True),
                    too_large or gr.update()]
        cols = logic.file_columns(file)
        if fmt == "alpaca" and any(c in cols for c in ("conversations", "messages")):
            fmt = "openai" if "messages" in cols else "sharegpt"
        if any(c in cols for c in ("chosen", "rejected")):
            rank = True
        return [cols, Path(file).stem, gr.update(value=fmt), gr.update(value=rank),
                *role_updates(fmt, rank, cols, True), ""]

    upload.upload(on_upload, [upload, formatting, ranking, lang],
                  [columns, name, formatting, ranking, *role_list, result], api_visibility="private")
    for trigger in (formatting, ranking):
        trigger.input(lambda f, r, c: role_updates(f, r, c, True), [formatting, ranking, columns], role_list,
                      api_visibility="private")

    def check(file: str | None, fmt: str, rank: bool, lang_: str, *mapped: str) -> tuple[bool, int, str]:
        if not file:
            return False, 0, ctx.t("msg.no_file", lang_)
        too_large = upload_problem(ctx, lang_, file)
        if too_large:
            return False, 0, too_large
        mapping = dict(zip(logic.ROLES, mapped))
        rows, stage, problems = logic.validate_upload(file, fmt, rank, mapping)
        if problems:
            return False, 0, problems_text(ctx, lang_, problems)
        return True, rows, ctx.t("msg.valid", lang_, rows=rows, stage=stage)

    def on_validate(file: str | None, fmt: str, rank: bool, lang_: str, *mapped: str) -> str:
        return check(file, fmt, rank, lang_, *mapped)[2]

    def on_register(file: str | None, dataset: str, fmt: str, rank: bool, current: str | None, lang_: str,
                    *mapped: str) -> list[Any]:
        ok, rows, message = check(file, fmt, rank, lang_, *mapped)
        if ok:
            columns_ = logic.entry_columns(fmt, rank, dict(zip(logic.ROLES, mapped)))
            try:
                spec = register_dataset(ctx.dataset_dir, dataset or "", file, formatting=fmt, columns=columns_,
                                        ranking=rank)
                message = ctx.t("msg.registered", lang_, name=spec.name, rows=rows, catalogue=spec.catalogue_file)
                current = spec.name
            except DataError as exc:
                message = problems_text(ctx, lang_, exc.problems)
        return [message, *show_catalogue(current)]

    validate.click(on_validate, [upload, formatting, ranking, lang, *role_list], result, api_visibility="private")
    register.click(on_register, [upload, name, formatting, ranking, which, lang, *role_list], [result, table, which],
                   api_visibility="private")
