"""Feedback in the Chat tab: 👍/👎 on every answer (both sides in side-by-side) and a corrected answer.

    build_feedback(ctx, [(bot_a, model_a), (bot_b, model_b)], system)

A thumb records at once (app.loop.feedback.FeedbackStore, the same store `POST /v1/feedback` writes);
👎 also opens the correction box with that answer in it, to be edited into the answer it should have been.
Corrections and up-voted answers become `feedback_sft` rows, corrections and up/down votes on one prompt
`feedback_pref` pairs: the continuous fine-tuning loop (Export tab) trains on them.
"""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from app.loop.controller import studio_store
from app.loop.feedback import FEEDBACK_PREF, FEEDBACK_SFT, FeedbackError
from app.ui.chat_engines import BASE, message_text
from app.ui.context import StudioContext

log = logging.getLogger(__name__)
PRIVATE: dict[str, Any] = {"api_visibility": "private"}
THUMBS = ("Like", "Dislike")  # gr.Chatbot's built-in feedback buttons (👍 👎 under each answer)

STRINGS: dict[str, dict[str, str]] = {
    "fb.correct": {"en": "✎ Correct an answer", "zh": "✎ 纠正回答"},
    "fb.correction": {"en": "Corrected answer", "zh": "纠正后的回答"},
    "fb.correction.info": {"en": "Thumbs down on an answer puts it here: edit it into the answer it should have been.",
                           "zh": "对回答点踩后它会出现在这里：把它改成应有的回答。"},
    "fb.save": {"en": "Save correction", "zh": "保存纠正"},
    "fb.msg.counts": {"en": "Feedback: {up} up · {down} down · {corrections} corrected → **{sft}** {sft_rows} rows, "
                            "**{pref}** {pref_rows} pairs (the loop on the Export tab trains on them).",
                      "zh": "反馈：赞 {up} · 踩 {down} · 纠正 {corrections} → **{sft}** {sft_rows} 行，"
                            "**{pref}** {pref_rows} 对（导出标签页的持续微调会用它们训练）。"},
    "fb.msg.saved": {"en": "✓ Saved ({what}). ", "zh": "✓ 已保存（{what}）。"},
    "fb.msg.up": {"en": "thumbs up", "zh": "赞"},
    "fb.msg.down": {"en": "thumbs down: correct it below", "zh": "踩：可在下方纠正"},
    "fb.msg.empty": {"en": "The answer is empty: write the answer it should have been below.",
                     "zh": "该回答为空：请在下方写出应有的回答。"},
    "fb.msg.corrected": {"en": "correction", "zh": "纠正"},
    "fb.msg.target": {"en": "Correcting: “{answer}”", "zh": "正在纠正：“{answer}”"},
    "fb.msg.nothing": {"en": "No answer to correct yet: send a message first.",
                       "zh": "还没有可纠正的回答：请先发送消息。"},
    "fb.msg.error": {"en": "⚠ {error}", "zh": "⚠ {error}"},
}


def counts_line(ctx: StudioContext, lang: str) -> str:
    counts = studio_store(ctx.runs_dir, ctx.dataset_dir).counts()
    return ctx.t("fb.msg.counts", lang, up=counts.up, down=counts.down, corrections=counts.corrections,
                 sft=FEEDBACK_SFT, sft_rows=counts.sft_rows, pref=FEEDBACK_PREF, pref_rows=counts.pref_rows)


def rated(history: list | None, index: Any, system: str) -> tuple[list[dict[str, str]], str] | None:
    """(the conversation the answer at `index` replies to, the answer), or None when it is not an answer."""
    history = list(history or [])
    index = index[0] if isinstance(index, (list, tuple)) else index
    if not isinstance(index, int) or not 0 <= index < len(history):
        return None
    turns = [{"role": m.get("role"), "content": message_text(m.get("content"))} for m in history[: index + 1]
             if isinstance(m, dict)]
    if not turns or turns[-1]["role"] != "assistant":
        return None
    head = [{"role": "system", "content": system.strip()}] if system and system.strip() else []
    return head + turns[:-1], turns[-1]["content"]


def last_answer(history: list | None, system: str) -> dict[str, Any] | None:
    for i in range(len(history or []) - 1, -1, -1):
        if isinstance(history[i], dict) and history[i].get("role") == "assistant":  # type: ignore[index]
            found = rated(history, i, system)
            if found:
                return {"messages": found[0], "answer": found[1]}
    return None


def build_feedback(ctx: StudioContext, sides: list[tuple[Any, Any]], system: Any) -> None:
    """Wire 👍/👎 on each chatbot of `sides` [(chatbot, its model dropdown)] and add the correction box."""
    ctx.add_strings(STRINGS)
    lang = ctx.shared["lang"]
    status = gr.Markdown(counts_line(ctx, ctx.lang), elem_id="chat-fb-status")
    with ctx.make(gr.Accordion, "fb.correct", open=False, elem_id="chat-fb") as box:
        target_md = gr.Markdown("", elem_id="chat-fb-target")
        correction = ctx.make(gr.Textbox, "fb.correction", lines=3, elem_id="chat-fb-correction")
        save = ctx.make(gr.Button, "fb.save", size="sm", elem_id="chat-fb-save")
    target = gr.State(None)  # the answer a correction applies to

    def record(lang_: str, what: str, **kwargs: Any) -> str:
        try:
            studio_store(ctx.runs_dir, ctx.dataset_dir).record(source="chat", **kwargs)
        except (FeedbackError, OSError, ValueError) as exc:
            log.warning("feedback not saved", exc_info=True)
            return ctx.t("fb.msg.error", lang_, error=str(exc))
        return ctx.t("fb.msg.saved", lang_, what=what) + counts_line(ctx, lang_)

    def on_like(history: list, system_: str, model: str, lang_: str, data: gr.LikeData) -> tuple[Any, ...]:
        found = rated(history, data.index, system_)
        if found is None or data.liked not in (True, False):
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        messages, answer = found
        name = "" if model in (None, BASE) else str(model)
        up = data.liked is True
        if answer.strip() or up:
            line = record(lang_, ctx.t("fb.msg.up" if up else "fb.msg.down", lang_), messages=messages,
                          answer=answer, rating="up" if up else "down", model=name)
        else:  # nothing to rate in an empty answer, but it can be corrected
            line = ctx.t("fb.msg.empty", lang_)
        if up:
            return line, gr.skip(), gr.skip(), gr.skip(), gr.skip()
        chosen = {"messages": messages, "answer": answer, "model": name}
        shown = ctx.t("fb.msg.target", lang_, answer=answer[:160] + ("…" if len(answer) > 160 else ""))
        return line, chosen, gr.update(value=answer), gr.Accordion(open=True), shown

    for bot, model in sides:
        bot.like(on_like, [bot, system, model, lang], [status, target, correction, box, target_md],
                 show_progress="hidden", **PRIVATE)

    def on_save(text: str, chosen: dict | None, history: list, system_: str, model: str, lang_: str
                ) -> tuple[Any, ...]:
        chosen = chosen or last_answer(history, system_)
        if not chosen:
            return ctx.t("fb.msg.nothing", lang_), gr.skip(), gr.skip(), gr.skip()
        name = chosen.get("model", "" if model in (None, BASE) else str(model))
        line = record(lang_, ctx.t("fb.msg.corrected", lang_), messages=chosen["messages"], answer=chosen["answer"],
                      correction=text, model=name)
        return line, None, "", ""

    bot_a, model_a = sides[0]
    save.click(on_save, [correction, target, bot_a, system, model_a, lang], [status, target, target_md, correction],
               show_progress="hidden", **PRIVATE)
    ctx.shared["tabs"]["chat"].select(lambda lang_: counts_line(ctx, lang_), lang, status, show_progress="hidden",
                                      **PRIVATE)
