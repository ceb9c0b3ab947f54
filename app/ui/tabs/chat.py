"""Chat tab: talk to the base model (picked on the Model tab) or a finished run's adapter, streamed;
side by side, the same prompt goes to two models and a verdict becomes a DPO row (app.ui.preference).

Engines live in a process-wide cache (app.ui.chat_engines): the base loads on the first message and
switching adapters never reloads it. The engine batches: both side-by-side answers (and every other
session's) decode together. Every failure shows as a status line, never as a traceback.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr

from app.ui.chat_engines import BASE, ENGINES, plain_messages, prompt_messages
from app.ui.context import StudioContext, model_name
from app.ui.feedback import THUMBS, build_feedback
from app.ui.preference import (
    DEFAULT_DATASET,
    Preference,
    PreferenceError,
    count_rows,
    history_pairs,
    save_preference,
)

log = logging.getLogger(__name__)
PRIVATE: dict[str, Any] = {"api_visibility": "private"}

STRINGS: dict[str, dict[str, str]] = {
    "chat.model": {"en": "Model (left in side-by-side)", "zh": "模型（并排模式中为左侧）"},
    "chat.model.info": {"en": "The base model, or a finished run's adapter on top of it.",
                        "zh": "基座模型，或叠加某个已完成训练的适配器。"},
    "chat.model_b": {"en": "Right model", "zh": "右侧模型"},
    "chat.compare": {"en": "Side by side", "zh": "并排对比"},
    "chat.compare.info": {"en": "Same prompt to two models; pick the better reply.",
                          "zh": "同一提示发送给两个模型，选出更好的回答。"},
    "chat.refresh": {"en": "↻ Runs", "zh": "↻ 刷新"},
    "chat.settings": {"en": "System prompt and sampling", "zh": "系统提示与采样参数"},
    "chat.system": {"en": "System prompt", "zh": "系统提示"},
    "chat.temperature": {"en": "Temperature", "zh": "温度"},
    "chat.temperature.info": {"en": "0 = greedy (deterministic)", "zh": "0 = 贪心解码（确定性）"},
    "chat.top_p": {"en": "Top-p", "zh": "Top-p"},
    "chat.max_new_tokens": {"en": "Max new tokens", "zh": "最大生成长度"},
    "chat.bot_a": {"en": "Chat (left)", "zh": "对话（左侧）"},
    "chat.bot_b": {"en": "Right", "zh": "右侧"},
    "chat.message": {"en": "Message", "zh": "消息"},
    "chat.send": {"en": "Send", "zh": "发送"},
    "chat.stop": {"en": "Stop", "zh": "停止"},
    "chat.clear": {"en": "Clear", "zh": "清空"},
    "chat.left_better": {"en": "◀ Left is better", "zh": "◀ 左侧更好"},
    "chat.right_better": {"en": "Right is better ▶", "zh": "右侧更好 ▶"},
    "chat.pref_dataset": {"en": "Save preferences to dataset", "zh": "偏好数据保存到数据集"},
    "chat.pref_dataset.info": {"en": "Registered with ranking: true on first use; train DPO on it.",
                               "zh": "首次使用时以 ranking: true 注册，可直接用于 DPO 训练。"},
    "chat.base_choice": {"en": "Base model (no adapter)", "zh": "基座模型（无适配器）"},
    "chat.msg.base": {"en": "Base model: **{model}** (set on the Model tab). {engine}",
                      "zh": "基座模型：**{model}**（在“模型”标签页设置）。{engine}"},
    "chat.msg.not_loaded": {"en": "It loads with the first message.", "zh": "发送第一条消息时加载。"},
    "chat.msg.loaded": {"en": "In memory: {engine}.", "zh": "已加载：{engine}。"},
    "chat.msg.loading": {"en": "⏳ loading model {model}… (only the first message waits for this)",
                         "zh": "⏳ 正在加载模型 {model}…（仅第一条消息需要等待）"},
    "chat.msg.loading_adapter": {"en": "⏳ loading adapter {run}…", "zh": "⏳ 正在加载适配器 {run}…"},
    "chat.msg.generating": {"en": "✍ {model} is replying…", "zh": "✍ {model} 正在回答…"},
    "chat.msg.done": {"en": "✓ {model}: {tokens} tokens in {seconds:.1f} s ({rate:.1f} tokens/s, {reason})",
                      "zh": "✓ {model}：{tokens} 个词元，用时 {seconds:.1f} 秒（{rate:.1f} 词元/秒，{reason}）"},
    "chat.msg.empty": {"en": "Type a message first.", "zh": "请先输入消息。"},
    "chat.msg.error": {"en": "⚠ {error}", "zh": "⚠ {error}"},
    "chat.msg.no_run": {"en": "Run '{run}' is not a finished run with an adapter in {runs}: press ↻ Runs.",
                        "zh": "运行 '{run}' 不是 {runs} 中已完成且带适配器的运行：请点击 ↻ 刷新。"},
    "chat.msg.no_path": {"en": "Enter a model folder or hub id on the Model tab.",
                         "zh": "请在“模型”标签页填写模型目录或模型 ID。"},
    "chat.msg.no_turn": {"en": "Nothing to compare yet: send a prompt in side-by-side mode first.",
                         "zh": "暂无可比较的回答：请先在并排模式下发送提示。"},
    "chat.msg.already": {"en": "This turn is already saved; send the next prompt.",
                         "zh": "本轮已保存，请发送下一条提示。"},
    "chat.msg.saved": {"en": "✓ Saved to **{name}** ({file}); rows saved: {rows}. Both sides continue from the "
                              "chosen reply.",
                       "zh": "✓ 已保存到 **{name}**（{file}），共 {rows} 行。两侧将从选中的回答继续对话。"},
    "chat.msg.count": {"en": "**{name}**: rows saved: {rows}.", "zh": "**{name}**：已保存 {rows} 行。"},
    "chat.msg.new_set": {"en": "**{name}**: no rows yet; the first verdict registers it in dataset_info.json.",
                         "zh": "**{name}**：尚无数据；第一次选择时将注册到 dataset_info.json。"},
}

_streams: dict[str, list[Any]] = {}  # session hash -> the StreamResults it is reading (for Stop)
_streams_lock = threading.Lock()


def _finished_with_adapter(ctx: StudioContext) -> list[Any]:
    try:
        return [s for s in ctx.manager.summaries() if s.state == "finished" and (Path(s.path) / "adapter").is_dir()]
    except OSError:
        return []


def finished_runs(ctx: StudioContext) -> list[str]:
    """Names of runs that finished and left a chat model in adapter/ (newest first): what the Chat, Evaluate,
    Export and Loop tabs offer. A reward model (stage rm) scores answers, it does not write them: left out."""
    return [s.name for s in _finished_with_adapter(ctx) if s.stage != "rm"]


def reward_model_runs(ctx: StudioContext) -> list[str]:
    """Finished reward-model runs (stage rm): what GRPO's reward_model can name."""
    return [s.name for s in _finished_with_adapter(ctx) if s.stage == "rm"]


def model_choices(ctx: StudioContext, lang: str) -> list[tuple[str, str]]:
    return [(ctx.t("chat.base_choice", lang), BASE)] + [(name, name) for name in finished_runs(ctx)]


def base_line(ctx: StudioContext, lang: str, base: str | None) -> str:
    engine = ENGINES.describe(base)
    shown = base or "SmolLM2-135M-Instruct (embedded)"
    note = ctx.t("chat.msg.loaded", lang, engine=engine) if engine else ctx.t("chat.msg.not_loaded", lang)
    return ctx.t("chat.msg.base", lang, model=shown, engine=note)


def pref_count_line(ctx: StudioContext, lang: str, name: str) -> str:
    name = (name or "").strip() or DEFAULT_DATASET
    rows = count_rows(ctx.dataset_dir, name)
    return ctx.t("chat.msg.new_set", lang, name=name) if rows is None else ctx.t("chat.msg.count", lang,
                                                                                  name=name, rows=rows)


def build(ctx: StudioContext) -> None:
    ctx.add_strings(STRINGS)
    lang = ctx.shared["lang"]
    base_md = gr.Markdown(base_line(ctx, ctx.lang, None), elem_id="chat-base")
    choices = model_choices(ctx, ctx.lang)
    with gr.Row():
        model_a = ctx.make(gr.Dropdown, "chat.model", choices=choices, value=BASE, scale=3, elem_id="chat-model")
        compare = ctx.make(gr.Checkbox, "chat.compare", value=False, scale=1, elem_id="chat-compare")
        model_b = ctx.make(gr.Dropdown, "chat.model_b", choices=choices, value=choices[-1][1], scale=3,
                           visible=False, elem_id="chat-model-b")
        refresh = ctx.make(gr.Button, "chat.refresh", size="sm", scale=0, min_width=90, elem_id="chat-refresh")
    with ctx.make(gr.Accordion, "chat.settings", open=False, elem_id="chat-settings"):
        system = ctx.make(gr.Textbox, "chat.system", lines=2, elem_id="chat-system")
        with gr.Row():
            temperature = ctx.make(gr.Slider, "chat.temperature", minimum=0.0, maximum=2.0, step=0.05, value=0.7,
                                   elem_id="chat-temperature")
            top_p = ctx.make(gr.Slider, "chat.top_p", minimum=0.05, maximum=1.0, step=0.05, value=0.9,
                             elem_id="chat-top-p")
            max_new = ctx.make(gr.Slider, "chat.max_new_tokens", minimum=8, maximum=2048, step=8, value=256,
                               elem_id="chat-max-new")
    status = gr.Markdown("", elem_id="chat-status")
    with gr.Row():
        bot_a = ctx.make(gr.Chatbot, "chat.bot_a", height=440, feedback_options=THUMBS, elem_id="chat-a")
        bot_b = ctx.make(gr.Chatbot, "chat.bot_b", height=440, feedback_options=THUMBS, visible=False,
                         elem_id="chat-b")
    with gr.Row(equal_height=True):
        message = ctx.make(gr.Textbox, "chat.message", lines=2, scale=6, elem_id="chat-input")
        with gr.Column(scale=1, min_width=120):
            send = ctx.make(gr.Button, "chat.send", variant="primary", elem_id="chat-send")
            with gr.Row():
                stop = ctx.make(gr.Button, "chat.stop", size="sm", elem_id="chat-stop")
                clear = ctx.make(gr.Button, "chat.clear", size="sm", elem_id="chat-clear")
    with gr.Group(visible=False, elem_id="chat-vote") as vote:
        with gr.Row(equal_height=True):
            left_better = ctx.make(gr.Button, "chat.left_better", elem_id="chat-left-better")
            right_better = ctx.make(gr.Button, "chat.right_better", elem_id="chat-right-better")
            pref_name = ctx.make(gr.Textbox, "chat.pref_dataset", value=DEFAULT_DATASET, elem_id="chat-pref-name")
        pref_status = gr.Markdown(pref_count_line(ctx, ctx.lang, DEFAULT_DATASET), elem_id="chat-pref-status")
    turn = gr.State(None)  # the last side-by-side turn, for a verdict
    build_feedback(ctx, [(bot_a, model_a), (bot_b, model_b)], system)  # 👍/👎 and corrections (app.ui.feedback)

    # -- runs and the base model -----------------------------------------------------------------
    def on_refresh(lang_: str, left: str, right: str, src: str, where: str) -> tuple[Any, Any, str]:
        found = model_choices(ctx, lang_)
        values = [v for _, v in found]
        # a value is only set when the current one is gone: the user may have picked another meanwhile
        update_a = gr.update(choices=found) if left in values else gr.update(choices=found, value=BASE)
        update_b = gr.update(choices=found) if right in values else gr.update(choices=found, value=values[-1])
        return update_a, update_b, base_line(ctx, lang_, model_name(src, where))

    refresh_inputs = [lang, model_a, model_b, *ctx.model_inputs()]
    for event in (refresh.click, ctx.shared["tabs"]["chat"].select):
        event(on_refresh, refresh_inputs, [model_a, model_b, base_md], show_progress="hidden", **PRIVATE)
    for box in ctx.model_inputs():
        box.change(lambda lang_, src, where: base_line(ctx, lang_, model_name(src, where)),
                   [lang, *ctx.model_inputs()], base_md, show_progress="hidden", **PRIVATE)

    def on_compare(on: bool) -> tuple[Any, Any, Any]:
        return gr.update(visible=on), gr.update(visible=on), gr.update(visible=on)

    compare.change(on_compare, compare, [model_b, bot_b, vote], show_progress="hidden", **PRIVATE)

    # -- chatting ---------------------------------------------------------------------------------
    def on_send(text: str, hist_a: list, hist_b: list, comparing: bool, left: str, right: str, system_: str,
                temp: float, top: float, max_tokens: float, lang_: str, src: str, where: str,
                request: gr.Request) -> Iterator[tuple[Any, ...]]:
        session = getattr(request, "session_hash", None) or "?"
        text = (text or "").strip()
        if not text:
            yield gr.skip(), gr.skip(), gr.skip(), ctx.t("chat.msg.empty", lang_), gr.skip()
            return
        base = model_name(src, where)
        if src not in (None, "", "embedded") and not base:
            yield gr.skip(), gr.skip(), gr.skip(), ctx.t("chat.msg.error", lang_, error=ctx.t("chat.msg.no_path",
                                                                                              lang_)), gr.skip()
            return
        sides = [(left or BASE, plain_messages(hist_a))]
        if comparing:
            sides.append((right or BASE, plain_messages(hist_b)))
        shown = [h + [{"role": "user", "content": text}, {"role": "assistant", "content": ""}] for _, h in sides]

        def frame(note: str, turn_: Any = gr.skip()) -> tuple[Any, ...]:
            return "", shown[0], shown[1] if comparing else gr.skip(), note, turn_

        runs = finished_runs(ctx)
        for run, _ in sides:
            if run != BASE and run not in runs:
                yield frame(ctx.t("chat.msg.error", lang_, error=ctx.t("chat.msg.no_run", lang_, run=run,
                                                                         runs=ctx.runs_dir)))
                return
        notes: list[str] = []
        streams: list[Any] = []
        try:
            if not ENGINES.loaded(base):
                yield frame(ctx.t("chat.msg.loading", lang_, model=base or "SmolLM2-135M-Instruct"))
            engine = ENGINES.engine(base)
            targets = []
            for run, _ in sides:
                if run != BASE and not ENGINES.has_current(base, run, ctx.runs_dir / run):
                    yield frame(ctx.t("chat.msg.loading_adapter", lang_, run=run))
                targets.append(ENGINES.target(base, run, ctx.runs_dir / run))
            # Both sides are submitted at once: the engine decodes them in one batch.
            streams = [engine.stream(prompt_messages(system_, history, text), model=target, temperature=float(temp),
                                     top_p=float(top), max_new_tokens=int(max_tokens))
                       for target, (_, history) in zip(targets, sides)]
            with _streams_lock:
                _streams[session] = streams
            events: queue.SimpleQueue = queue.SimpleQueue()
            started = time.time()
            for i, stream in enumerate(streams):
                stream.listen(lambda event, i=i: events.put((i, event)))
            working = ctx.t("chat.msg.generating", lang_, model=" + ".join(dict.fromkeys(targets)))
            yield frame(working)
            finished: dict[int, str] = {}
            while len(finished) < len(streams):
                i, (kind, value) = events.get()
                if kind == "error":
                    raise value
                if kind == "delta":
                    if value.text:
                        shown[i][-1]["content"] += value.text
                        yield frame(working)
                    continue
                seconds = time.time() - started
                finished[i] = ctx.t("chat.msg.done", lang_, model=targets[i], tokens=value.completion_tokens,
                                    seconds=seconds, rate=value.completion_tokens / max(seconds, 1e-6),
                                    reason=value.finish_reason)
            notes = [finished[i] for i in range(len(streams))]
            replies = [shown[i][-1]["content"] for i in range(len(streams))]
        except Exception as exc:  # noqa: BLE001 - model not found, adapter mismatch, too long: a message
            log.warning("chat turn failed", exc_info=True)  # the traceback goes to the log, the UI gets one line
            # the failed turn is taken back (the text returns to the box) so the history stays well-formed
            error = " · ".join(notes + [ctx.t("chat.msg.error", lang_, error=_readable(exc))])
            yield text, hist_a, hist_b if comparing else gr.skip(), error, None
            return
        finally:
            for stream in streams:
                stream.cancel()  # a closed generator (Stop, a closed tab) must not keep the model busy
            with _streams_lock:
                _streams.pop(session, None)
        record = None
        if comparing:
            record = {"prompt": text, "system": system_ or "", "models": [sides[0][0], sides[1][0]],
                      "history": [sides[0][1], sides[1][1]], "replies": replies, "saved": False}
        yield frame(" · ".join(notes), record)

    def on_stop(request: gr.Request) -> None:
        with _streams_lock:
            stream = _streams.get(getattr(request, "session_hash", None) or "?")
        for each in stream or []:
            each.cancel()

    send_inputs = [message, bot_a, bot_b, compare, model_a, model_b, system, temperature, top_p, max_new, lang,
                   *ctx.model_inputs()]
    send_outputs = [message, bot_a, bot_b, status, turn]
    sent = send.click(on_send, send_inputs, send_outputs, show_progress="hidden", **PRIVATE)
    submitted = message.submit(on_send, send_inputs, send_outputs, show_progress="hidden", **PRIVATE)
    for event in (sent, submitted):
        event.then(lambda lang_, src, where: base_line(ctx, lang_, model_name(src, where)),
                   [lang, *ctx.model_inputs()], base_md, show_progress="hidden", **PRIVATE)
    stop.click(on_stop, None, None, show_progress="hidden", queue=False, **PRIVATE)
    clear.click(lambda: ([], [], "", None), None, [bot_a, bot_b, status, turn], show_progress="hidden", **PRIVATE)

    # -- preference capture -----------------------------------------------------------------------
    def on_vote(left_wins: bool, record: dict | None, name: str, hist_a: list, hist_b: list,
                lang_: str) -> tuple[Any, ...]:
        if not record:
            return ctx.t("chat.msg.no_turn", lang_), gr.skip(), gr.skip(), gr.skip()
        if record.get("saved"):
            return ctx.t("chat.msg.already", lang_), gr.skip(), gr.skip(), gr.skip()
        win, lose = (0, 1) if left_wins else (1, 0)
        pref = Preference(prompt=record["prompt"], chosen=record["replies"][win], rejected=record["replies"][lose],
                          system=record["system"], history=history_pairs(record["history"][win]))
        try:
            saved = save_preference(ctx.dataset_dir, name or DEFAULT_DATASET, pref)
        except PreferenceError as exc:
            return ctx.t("chat.msg.error", lang_, error=str(exc)), gr.skip(), gr.skip(), gr.skip()
        except OSError as exc:
            return ctx.t("chat.msg.error", lang_, error=f"could not write the dataset: {exc}"), gr.skip(), \
                gr.skip(), gr.skip()
        shown = _display_path(saved.path, ctx.dataset_dir)
        winner = hist_a if left_wins else hist_b
        return (ctx.t("chat.msg.saved", lang_, name=saved.name, rows=saved.rows, file=shown),
                record | {"saved": True}, winner, winner)

    vote_inputs = [turn, pref_name, bot_a, bot_b, lang]
    vote_outputs = [pref_status, turn, bot_a, bot_b]
    left_better.click(lambda *a: on_vote(True, *a), vote_inputs, vote_outputs, show_progress="hidden", **PRIVATE)
    right_better.click(lambda *a: on_vote(False, *a), vote_inputs, vote_outputs, show_progress="hidden", **PRIVATE)
    pref_name.blur(lambda lang_, name: pref_count_line(ctx, lang_, name), [lang, pref_name], pref_status,
                   show_progress="hidden", **PRIVATE)


def _display_path(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def _readable(exc: BaseException) -> str:
    """One line for the status: the message of errors meant for users, the type name for the rest."""
    from app.chat.adapters import AdapterError
    from app.chat.engine import ContextLengthError, UnknownModelError
    from app.models.source import ModelSourceError

    if isinstance(exc, (AdapterError, ModelSourceError, UnknownModelError, ContextLengthError, ValueError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
