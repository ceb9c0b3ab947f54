"""Export tab: merge a finished run (or any model/adapter folder) into safetensors or a GGUF with a
fidelity check and an Ollama Modelfile (app.export.pipeline), and start/stop the OpenAI-compatible API
server for the base model plus chosen adapters (app.ui.export_server).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import gradio as gr

from app.ui.context import StudioContext, model_name
from app.ui.eval_export import build_gguf_eval
from app.ui.export_report import QUANT_CHOICES, default_output, error_markdown, report_markdown
from app.ui.export_server import ApiServer, ServerError, ServerStatus, curl_example
from app.ui.poll import poll
from app.ui.tabs.chat import finished_runs
from app.ui.tabs.export_hub import build_hub
from app.ui.tabs.loop import build as build_loop
from app.ui.tabs.loop import loop_checkbox, loop_server_args

PRIVATE: dict[str, Any] = {"api_visibility": "private"}
FORMATS = ("safetensors", "gguf")
POLL_S = 2.0

STRINGS: dict[str, dict[str, str]] = {
    "export.run": {"en": "Finished run", "zh": "已完成的运行"},
    "export.run.info": {"en": "Its adapter is merged into the base model.", "zh": "其适配器将合并进基座模型。"},
    "export.folder": {"en": "…or a folder", "zh": "…或指定目录"},
    "export.folder.info": {"en": "A run, adapter or model folder; overrides the run when filled.",
                           "zh": "运行目录、适配器目录或模型目录；填写后优先于上方的运行。"},
    "export.refresh": {"en": "↻ Runs", "zh": "↻ 刷新"},
    "export.format": {"en": "Format", "zh": "格式"},
    "export.format.info": {"en": "safetensors: a merged Hugging Face folder; gguf: for llama.cpp and Ollama.",
                           "zh": "safetensors：合并后的 Hugging Face 模型目录；gguf：用于 llama.cpp 与 Ollama。"},
    "export.quant": {"en": "GGUF quantization", "zh": "GGUF 量化类型"},
    "export.quant.info": {"en": "K-quants (q4_k_m, q5_k_m) need llama-cpp-python.",
                          "zh": "K 系列量化（q4_k_m、q5_k_m）需要 llama-cpp-python。"},
    "export.check": {"en": "Check fidelity against the merged model", "zh": "与合并模型对比校验保真度"},
    "export.output": {"en": "Output folder", "zh": "输出目录"},
    "export.start": {"en": "Export", "zh": "导出"},
    "export.raw": {"en": "Report (JSON)", "zh": "报告（JSON）"},
    "export.api": {"en": "OpenAI-compatible API server", "zh": "OpenAI 兼容 API 服务"},
    "export.api_adapters": {"en": "Adapters to serve", "zh": "提供服务的适配器"},
    "export.api_adapters.info": {"en": "Clients pick one with \"model\": \"<run name>\".",
                                 "zh": "客户端通过 \"model\": \"<运行名>\" 选择。"},
    "export.api_host": {"en": "Host", "zh": "主机"},
    "export.api_host.info": {"en": "Beyond 127.0.0.1 an API key is required.",
                             "zh": "绑定非本机地址时必须设置 API 密钥。"},
    "export.api_port": {"en": "Port", "zh": "端口"},
    "export.api_key": {"en": "API key (optional on 127.0.0.1)", "zh": "API 密钥（本机可不填）"},
    "export.api_backend": {"en": "Serving engine", "zh": "推理引擎"},
    "export.api_backend.info": {
        "en": "transformers: batched, CPU or GPU · vLLM: GPU, LoRA adapters · llama.cpp: a GGUF file",
        "zh": "transformers：批处理，CPU/GPU · vLLM：GPU，支持 LoRA 适配器 · llama.cpp：GGUF 文件"},
    "export.api_gguf": {"en": "GGUF file (llama.cpp)", "zh": "GGUF 文件（llama.cpp）"},
    "export.api_gguf.info": {"en": "An exported .gguf; adapters are merged into it.",
                             "zh": "已导出的 .gguf 文件；适配器已合并其中。"},
    "export.api_start": {"en": "Start server", "zh": "启动服务"},
    "export.api_stop": {"en": "Stop server", "zh": "停止服务"},
    "export.api_log": {"en": "Server log", "zh": "服务日志"},
    "export.msg.no_source": {"en": "Choose a finished run or enter a folder.", "zh": "请选择已完成的运行或填写目录。"},
    "export.msg.base": {"en": "Base model: **{model}** (set on the Model tab).",
                        "zh": "基座模型：**{model}**（在“模型”标签页设置）。"},
}


def _source_name(run: str | None, folder: str | None) -> str | None:
    folder = (folder or "").strip()
    if folder:
        path = Path(folder).expanduser()
        return path.parent.name if path.name == "adapter" else path.name
    return run or None


def status_markdown(status: ServerStatus) -> str:
    if status.state == "stopped":
        return "Not running."
    models = ", ".join(f"`{m}`" for m in status.models or [])
    if status.state == "starting":
        return f"⏳ Starting (pid {status.pid}, port {status.port}): loading {models}…"
    if status.state == "exited":
        return "✗ The server is not running (it exited or was stopped outside the studio): see the log."
    model = (status.models or ["model"])[-1]
    key = "a bearer key is required" if status.has_key else "no key (loopback only)"
    return (f"✓ Serving {models} at **{status.base_url}** ({key}).\n\n```shell\n{curl_example(status, model)}\n```\n"
            f"Python: `openai.OpenAI(base_url=\"{status.base_url}\", api_key=\"...\")`")


def build(ctx: StudioContext) -> None:
    ctx.add_strings(STRINGS)
    lang = ctx.shared["lang"]
    root = ctx.runs_dir.parent
    runs = finished_runs(ctx)
    first = runs[0] if runs else None
    with gr.Row():
        run = ctx.make(gr.Dropdown, "export.run", choices=runs, value=first, scale=3, elem_id="export-run")
        folder = ctx.make(gr.Textbox, "export.folder", value="", scale=3, elem_id="export-folder")
        refresh = ctx.make(gr.Button, "export.refresh", size="sm", scale=0, min_width=90, elem_id="export-refresh")
    with gr.Row(equal_height=True):
        fmt = ctx.make(gr.Radio, "export.format", choices=list(FORMATS), value="safetensors", scale=2,
                       elem_id="export-format")
        quant = ctx.make(gr.Dropdown, "export.quant", choices=list(QUANT_CHOICES), value="f16", visible=False,
                         scale=1, elem_id="export-quant")
        check = ctx.make(gr.Checkbox, "export.check", value=True, visible=False, scale=1, elem_id="export-check")
    output = ctx.make(gr.Textbox, "export.output", value=default_output(root, first, "safetensors", "f16"),
                      elem_id="export-output")
    start = ctx.make(gr.Button, "export.start", variant="primary", elem_id="export-start")
    report = gr.Markdown("", elem_id="export-report")
    with ctx.make(gr.Accordion, "export.raw", open=False):
        raw = gr.JSON(elem_id="export-json")
    build_gguf_eval(ctx, raw)  # after a GGUF export: its scores beside the merged model's (app.ui.eval_export)

    def on_refresh(current: str | None) -> Any:
        found = finished_runs(ctx)
        if current in found:  # leave the value alone: the user may have picked another one meanwhile
            return gr.update(choices=found)
        return gr.update(choices=found, value=found[0] if found else None)

    for event in (refresh.click, ctx.shared["tabs"]["export"].select):
        event(on_refresh, run, run, show_progress="hidden", **PRIVATE)

    def on_target(run_: str | None, folder_: str, fmt_: str, quant_: str) -> tuple[Any, Any, Any]:
        gguf = fmt_ == "gguf"
        out = default_output(root, _source_name(run_, folder_), fmt_, quant_)
        return gr.update(visible=gguf), gr.update(visible=gguf), out

    for box in (run, fmt, quant):
        box.change(on_target, [run, folder, fmt, quant], [quant, check, output], show_progress="hidden", **PRIVATE)
    folder.blur(on_target, [run, folder, fmt, quant], [quant, check, output], show_progress="hidden", **PRIVATE)

    def on_export(run_: str | None, folder_: str, fmt_: str, quant_: str, check_: bool, out: str, lang_: str,
                  progress: gr.Progress = gr.Progress()) -> tuple[str, Any]:  # noqa: B008 - gradio's idiom
        from app.export.errors import ExportError
        from app.export.pipeline import REPORT_NAME, export

        source = (folder_ or "").strip() or (str(ctx.runs_dir / run_) if run_ else "")
        if not source:
            return error_markdown(ctx.t("export.msg.no_source", lang_)), None
        out = (out or "").strip() or default_output(root, _source_name(run_, folder_), fmt_, quant_)
        began = time.time()
        progress(0.0, desc="starting")

        def report_progress(fraction: float, message: str) -> None:
            progress(min(max(fraction, 0.0), 1.0), desc=message)

        try:
            data = export(source, fmt=fmt_, quant=quant_, output_dir=out, progress=report_progress, check=check_)
        except Exception as exc:  # noqa: BLE001 - ExportError and anything else: a message, never a traceback
            message = str(exc) if isinstance(exc, ExportError) else f"{type(exc).__name__}: {exc}"
            written = Path(out) / REPORT_NAME
            if written.is_file() and written.stat().st_mtime >= began - 1:
                data = json.loads(written.read_text(encoding="utf-8"))
                return report_markdown(data, error=message), data
            return error_markdown(message), None
        return report_markdown(data), data

    start.click(on_export, [run, folder, fmt, quant, check, output, lang], [report, raw], concurrency_limit=1,
                **PRIVATE)

    build_hub(ctx, run, folder, output, lang)  # push the adapter or the export to the Hugging Face Hub
    build_api(ctx, lang)
    build_loop(ctx)  # the continuous fine-tuning panel (app.ui.tabs.loop)


def build_api(ctx: StudioContext, lang: Any) -> None:
    server = ApiServer(ctx.runs_dir / ".api-server")
    with ctx.make(gr.Accordion, "export.api", open=True, elem_id="export-api"):
        base = gr.Markdown(ctx.t("export.msg.base", model="SmolLM2-135M-Instruct (embedded)"), elem_id="api-base")
        with gr.Row(equal_height=True):
            adapters = ctx.make(gr.Dropdown, "export.api_adapters", choices=finished_runs(ctx), value=[],
                                multiselect=True, scale=3, elem_id="api-adapters")
            host = ctx.make(gr.Textbox, "export.api_host", value="127.0.0.1", scale=1, elem_id="api-host")
            port = ctx.make(gr.Number, "export.api_port", value=8000, precision=0, scale=1, elem_id="api-port")
            key = ctx.make(gr.Textbox, "export.api_key", value="", type="password", scale=2, elem_id="api-key")
        with gr.Row(equal_height=True):
            backend = ctx.make(gr.Dropdown, "export.api_backend", value="transformers", scale=2,
                               choices=[("transformers", "transformers"), ("vLLM", "vllm"), ("llama.cpp", "llamacpp")],
                               elem_id="api-backend")
            gguf = ctx.make(gr.Textbox, "export.api_gguf", value="", scale=3, elem_id="api-gguf")
            follow = loop_checkbox(ctx)  # serve the continuous fine-tuning loop (app.ui.tabs.loop)
        with gr.Row():
            api_start = ctx.make(gr.Button, "export.api_start", variant="primary", elem_id="api-start")
            api_stop = ctx.make(gr.Button, "export.api_stop", variant="stop", elem_id="api-stop")
        status = gr.Markdown(status_markdown(server.status()), elem_id="api-status")
        log = ctx.make(gr.Code, "export.api_log", language="shell", lines=6, max_lines=12, interactive=False,
                       elem_id="api-log")
    timer = gr.Timer(POLL_S, active=False)

    def base_text(lang_: str, src: str, where: str) -> str:
        return ctx.t("export.msg.base", lang_, model=model_name(src, where) or "SmolLM2-135M-Instruct (embedded)")

    def show() -> tuple[str, str, Any]:
        current = server.status()
        return status_markdown(current), current.log_tail, gr.update(active=current.state == "starting")

    def on_load(chosen: list[str] | None, lang_: str, src: str, where: str) -> tuple[Any, ...]:
        found = finished_runs(ctx)
        kept = [c for c in chosen or [] if c in found]
        picked = gr.update(choices=found) if kept == (chosen or []) else gr.update(choices=found, value=kept)
        return picked, base_text(lang_, src, where), *show()

    load_outputs = [adapters, base, status, log, timer]
    for event in (ctx.shared["tabs"]["export"].select,):
        event(on_load, [adapters, lang, *ctx.model_inputs()], load_outputs, show_progress="hidden", **PRIVATE)
    poll(timer, show, [], [status, log, timer])  # ticks in the page (app.ui.poll): no Gradio event per tick

    def on_start(chosen: list[str] | None, host_: str, port_: float | None, key_: str, engine: str, gguf_: str,
                 follow_: bool, src: str, where: str) -> tuple[str, str, Any]:
        found = set(finished_runs(ctx))
        missing = [c for c in chosen or [] if c not in found]
        if missing:
            return f"✗ Not finished runs: {', '.join(missing)} (press ↻ Runs).", gr.skip(), gr.skip()
        if src not in (None, "", "embedded") and not model_name(src, where):
            return "✗ Enter a model folder or hub id on the Model tab.", gr.skip(), gr.skip()
        model = (gguf_ or "").strip() if engine == "llamacpp" else model_name(src, where)
        try:
            server.start(model, [(c, str(ctx.runs_dir / c)) for c in chosen or []], host=host_,
                         port=int(port_ or 0), api_key=(key_ or "").strip() or None, backend=engine or "transformers",
                         extra=loop_server_args(ctx, bool(follow_)))
        except (ServerError, OSError, ValueError) as exc:
            return f"✗ {exc}", gr.skip(), gr.skip()
        return show()

    def on_stop() -> tuple[str, str, Any]:
        server.stop()
        current = server.status()
        return status_markdown(current), server.log_tail(), gr.Timer(active=False)

    api_start.click(on_start, [adapters, host, port, key, backend, gguf, follow, *ctx.model_inputs()],
                    [status, log, timer],
                    show_progress="hidden", **PRIVATE)
    api_stop.click(on_stop, None, [status, log, timer], show_progress="hidden", **PRIVATE)
