"""ftstudio: webui | train | eval | judge | chat | export | api | loop | data: all the UI does, from a terminal."""

from __future__ import annotations

import argparse
import os
import sys

from app.config import STAGES, ConfigError, EvalConfig, GenerateConfig, JobConfig, JudgeConfig, Schema
from app.loop.cli import add_loop_parser


def _schema_parser(sub, cls: type[Schema], help: str, description: str,
                   name: str | None = None) -> argparse.ArgumentParser:
    """A subcommand whose flags are the fields of a config schema (names, help and defaults from it)."""
    parser = sub.add_parser(name or cls.COMMAND, help=help, description=description)
    parser.add_argument("job", nargs="?", help=f"a YAML file of {cls.__name__} keys (LLaMA-Factory's names)")
    for name, f in cls.spec().items():
        choices = [str(c) for c in f.metadata["choices"] if c is not None] if f.metadata["choices"] else None
        default = f" (default: {f.default})" if f.default is not None else ""
        parser.add_argument(f"--{name}", dest=name, default=argparse.SUPPRESS, metavar=
                            "{" + ",".join(choices) + "}" if choices else name.split("_")[-1].upper(),
                            help=f.metadata["help"] + default)
    return parser


def build_config(cls: type[Schema], args: argparse.Namespace):
    """The YAML file's keys (if any), overridden by the flags given; notes go to stderr."""
    from app.config.schema import read_yaml_mapping

    data: dict = read_yaml_mapping(args.job) if args.job else {}
    data.update({k: v for k, v in vars(args).items() if k in cls.spec()})
    notes: list[str] = []
    config = cls.from_dict(data, notes)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return config


def build_job(args: argparse.Namespace) -> JobConfig:
    return build_config(JobConfig, args)


def cmd_train(args) -> int:
    from app.train.startup import skip_unused_imports
    from app.train.worker import run_job

    job = build_job(args)
    skip_unused_imports(job)  # this process runs this one job: no bitsandbytes unless it quantizes
    return run_job(job)


def cmd_continue(args) -> int:
    from app.train.continuation import continue_job
    from app.train.worker import run_job

    try:
        job = continue_job(args.run, args.epochs)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    print(f"continuing {args.run} for {args.epochs:g} more epoch(s) in {job.output_dir}", file=sys.stderr)
    return run_job(job)


def cmd_eval(args) -> int:
    from app.eval.jobfile import load_eval_config
    from app.eval.worker import run_eval

    notes: list[str] = []
    config = load_eval_config(args.job, {k: v for k, v in vars(args).items() if k in EvalConfig.spec()}, notes)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return run_eval(config)


def cmd_judge(args) -> int:
    from app.eval.judge import JudgeError, run_judge

    def progress(done: int, total: int) -> None:
        print(f"[{done}/{total}] judged", file=sys.stderr, flush=True)

    try:
        summary = run_judge(build_config(JudgeConfig, args), progress=progress)
    except JudgeError as exc:
        print(f"judge failed: {exc}", file=sys.stderr)
        return 1
    import json

    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0


def cmd_data(args) -> int:
    from app.data.validate import main_check

    return main_check(args.dataset_dir, args.names, args.stage)


def cmd_data_stats(args) -> int:
    from app.datatools.insight_report import main_stats

    return main_stats(args.dataset_dir, args.name, args.model, args.template, args.cutoff_len, args.json)


def cmd_data_generate(args) -> int:
    from app.datatools.worker import run_generate

    return run_generate(build_config(GenerateConfig, args))


def cmd_chat(args) -> int:
    from app.chat.repl import chat_main

    return chat_main(model=args.model, adapter=args.adapter, prompt=args.prompt, temperature=args.temperature,
                     max_new_tokens=args.max_new_tokens, system=args.system)


def cmd_export(args) -> int:
    from app.export.pipeline import ExportError, export

    def progress(fraction: float, message: str) -> None:
        print(f"[{fraction * 100:5.1f}%] {message}", file=sys.stderr, flush=True)

    if args.format == "adapter" and not args.push_to_hub:
        print("export failed: --format adapter only pushes the run's adapter: add --push-to-hub USER/NAME",
              file=sys.stderr)
        return 2
    if args.format != "adapter" and not args.output:
        print("export failed: --output is required", file=sys.stderr)
        return 2
    report: dict = {}
    try:
        if args.format != "adapter":
            report = export(args.source, fmt=args.format, quant=args.quant, output_dir=args.output,
                            progress=progress, check=not args.no_check)
        if args.push_to_hub:
            from app.export.hub import push_to_hub

            pushed = args.source if args.format == "adapter" else args.output
            report["pushed"] = push_to_hub(pushed, args.push_to_hub, token=args.hub_token, private=args.private,
                                           progress=progress)
    except ExportError as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 1
    import json

    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0


def cmd_api(args) -> int:
    from app.serve.main import api_main

    return api_main(model=args.model, adapters=args.adapter or [], host=args.host, port=args.port,
                    api_key=args.api_key or os.environ.get("FTSTUDIO_API_KEY"), max_queue=args.max_queue,
                    backend=args.backend, max_batch=args.max_batch, runs_dir=args.runs_dir,
                    tensor_parallel=args.tensor_parallel, dtype=args.dtype, dataset_dir=args.dataset_dir,
                    loop=args.loop, feedback=not args.no_feedback)


def cmd_metrics(args) -> int:
    from app.serve.exporter import metrics_main

    return metrics_main(runs_dir=args.runs_dir, host=args.host, port=args.port)


def cmd_webui(args) -> int:
    from app.chat.threads import studio_thread_policy

    studio_thread_policy()  # before the UI imports torch
    from app.ui.app import webui_main

    if args.stop_ceiling:  # settings the job manager and the Dataset tab read from the environment
        os.environ["FTSTUDIO_STOP_CEILING_S"] = str(args.stop_ceiling)
    if args.max_upload_mb:
        os.environ["FTSTUDIO_MAX_UPLOAD_MB"] = str(args.max_upload_mb)

    return webui_main(host=args.host, port=args.port, auth=args.auth or os.environ.get("FTSTUDIO_AUTH"),
                      runs_dir=args.runs_dir, dataset_dir=args.dataset_dir, lang=args.lang)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ftstudio", description="Finetune Studio: fine-tune, chat, export.")
    sub = parser.add_subparsers(dest="command", required=True)

    web = sub.add_parser("webui", help="launch the web studio")
    web.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    web.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    web.add_argument("--auth", help="USER:PASS; required when binding beyond loopback (or FTSTUDIO_AUTH)")
    web.add_argument("--runs-dir", default=os.environ.get("FTSTUDIO_RUNS", "runs"))
    web.add_argument("--dataset-dir", default=".", help="folder holding dataset_info.json")
    web.add_argument("--lang", choices=["en", "zh"], default=os.environ.get("FTSTUDIO_LANG", "en"))
    web.add_argument("--stop-ceiling", type=float, default=None, metavar="SECONDS",
                     help="longest wait after Stop while a run is still saving (or FTSTUDIO_STOP_CEILING_S)")
    web.add_argument("--max-upload-mb", type=float, default=None, metavar="MB",
                     help="largest file the Dataset tab accepts (or FTSTUDIO_MAX_UPLOAD_MB; default 200)")
    web.set_defaults(func=cmd_webui)

    _schema_parser(sub, JobConfig, "run one training job (a YAML job file and/or flags)",
                   "Run a training job in this process. Flags override the YAML file; names are "
                   "LLaMA-Factory's. Example: ftstudio train examples/identity_lora.yaml --max_steps 20",
                   ).set_defaults(func=cmd_train)
    _schema_parser(sub, EvalConfig, "evaluate a model or a run: predictions, BLEU/ROUGE, perplexity",
                   "Generate answers for held-out rows and score them against the references, in this "
                   "process. Example: ftstudio eval --adapter_name_or_path runs/identity-lora "
                   "--eval_dataset identity_eval. Given a training job (runs/<name>/job.yaml), it evaluates that "
                   "run.").set_defaults(func=cmd_eval)
    _schema_parser(sub, JudgeConfig, "pairwise LLM judge of two evaluation runs (win/tie/loss)",
                   "Ask an OpenAI-compatible model which of two evaluation runs answered each row better, twice "
                   "with the answers' positions swapped. Example: ftstudio judge --predictions runs/eval-lora "
                   "--baseline runs/eval-base --judge_base_url http://127.0.0.1:8000/v1").set_defaults(func=cmd_judge)

    more = sub.add_parser("continue", help="train a finished run for more epochs (a new run beside it)")
    more.add_argument("run", help="a finished run folder")
    more.add_argument("--epochs", type=float, default=1.0, help="how many more epochs (default 1)")
    more.set_defaults(func=cmd_continue)

    chat = sub.add_parser("chat", help="chat with a base model or a trained adapter")
    chat.add_argument("--model", help="base model (folder or hub id; empty = embedded default)")
    chat.add_argument("--adapter", help="a run folder or an adapter folder")
    chat.add_argument("--prompt", help="print one reply to this prompt and exit")
    chat.add_argument("--system", help="system prompt")
    chat.add_argument("--temperature", type=float, default=None,
                      help="0 = greedy (default with --prompt); 0.7 in the interactive chat")
    chat.add_argument("--max-new-tokens", type=int, default=256)
    chat.set_defaults(func=cmd_chat)

    exp = sub.add_parser("export", help="merge an adapter and export safetensors or GGUF")
    exp.add_argument("source", help="a run folder, an adapter folder or a model folder")
    exp.add_argument("--format", choices=["safetensors", "gguf", "adapter"], default="safetensors",
                     help="adapter: no conversion, push the run's adapter as is (with --push-to-hub)")
    exp.add_argument("--quant", default="f16", help="GGUF type: f16, bf16, q8_0, q4_k_m, q5_k_m, ...")
    exp.add_argument("--output", help="output folder (required unless --format adapter)")
    exp.add_argument("--no-check", action="store_true", help="skip the GGUF fidelity check")
    exp.add_argument("--push-to-hub", metavar="USER/NAME", help="then upload it to this Hugging Face model "
                     "repository with a model card (honours HF_ENDPOINT)")
    exp.add_argument("--hub-token", help="Hugging Face token (default: HF_TOKEN or the `hf auth login` cache)")
    exp.add_argument("--private", action="store_true", help="create the repository private")
    exp.set_defaults(func=cmd_export)

    api = sub.add_parser("api", help="serve an OpenAI-compatible API")
    api.add_argument("--model", help="base model (empty = embedded default)")
    api.add_argument("--adapter", action="append", metavar="NAME=PATH", help="adapter to serve (repeatable)")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument("--api-key", help="bearer key clients must send (or FTSTUDIO_API_KEY)")
    api.add_argument("--backend", choices=["transformers", "vllm", "llamacpp"], default="transformers",
                     help="serving engine: transformers (default, batched, CPU/GPU), vllm (GPU, extra `vllm`), "
                          "llamacpp (a GGUF file, extra `gguf-quant`)")
    api.add_argument("--max-batch", type=int, help="requests decoded together (default 32; vLLM: its own)")
    api.add_argument("--max-queue", type=int, default=64, help="requests that may wait beyond the batch; then 429")
    api.add_argument("--tensor-parallel", type=int, help="vllm: GPUs to shard over (default: all visible)")
    api.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"],
                     help="transformers: weights' type (auto: bf16/fp16 on GPU, fp32 on CPU)")
    api.add_argument("--runs-dir", default=os.environ.get("FTSTUDIO_RUNS", "runs"),
                     help="export the training runs in this folder on /metrics too; feedback goes to its feedback/")
    api.add_argument("--dataset-dir", default=".", help="catalogue the feedback sets are registered in")
    api.add_argument("--loop", metavar="POLICY", help="serve the continuous fine-tuning loop of this policy "
                     "(runs/loop/policy.yaml): its model name, promotions and rollbacks without a restart, and "
                     "its automatic checks")
    api.add_argument("--no-feedback", action="store_true", help="do not keep answers or accept POST /v1/feedback")
    api.set_defaults(func=cmd_api)
    add_loop_parser(sub)

    met = sub.add_parser("metrics", help="export training runs as Prometheus metrics (for the dashboard)")
    met.add_argument("--runs-dir", default=os.environ.get("FTSTUDIO_RUNS", "runs"))
    met.add_argument("--host", default="127.0.0.1")
    met.add_argument("--port", type=int, default=9400)
    met.set_defaults(func=cmd_metrics)

    from app.jobs.cli import add_parser as add_runs_parser

    add_runs_parser(sub)

    data = sub.add_parser("data", help="dataset catalogue tools")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    check = data_sub.add_parser("check", help="validate datasets before training")
    check.add_argument("names", nargs="*", help="dataset names (default: all)")
    check.add_argument("--dataset-dir", default=".", help="folder holding dataset_info.json")
    check.add_argument("--stage", choices=list(STAGES), help="check fitness for this stage")
    check.set_defaults(func=cmd_data)
    stats = data_sub.add_parser("stats", help="dataset insight under a model's chat template",
                                description="Rows, token lengths (prompt, response), rows cut at cutoff_len, "
                                "a suggested cutoff_len, duplicates, empty fields and the language mix.")
    stats.add_argument("name", help="catalogue dataset name")
    stats.add_argument("--dataset-dir", default=".", help="folder holding dataset_info.json")
    stats.add_argument("--model", help="base model whose chat template renders the rows (empty = embedded)")
    stats.add_argument("--template", help="chat template: a built-in name or a .jinja file (default: the model's)")
    stats.add_argument("--cutoff_len", "--cutoff-len", dest="cutoff_len", type=int,
                       default=JobConfig.spec()["cutoff_len"].default, help="count rows longer than this")
    stats.add_argument("--json", action="store_true", help="print the figures as JSON")
    stats.set_defaults(func=cmd_data_stats)
    _schema_parser(data_sub, GenerateConfig, "generate synthetic rows into a catalogue set",
                   "Generate instruction rows with a local model, a run's adapter or an OpenAI-compatible "
                   "endpoint, from seed topics or documents, and register them in the catalogue. Example: "
                   "ftstudio data generate --topics 'photosynthesis; volcanoes' --num_rows 20 "
                   "--dataset_name science_synth", name="generate").set_defaults(func=cmd_data_generate)
    return parser


def quiet_libraries() -> None:
    """Keep library chatter (deprecation notices, optional-kernel probes) out of the user's terminal."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*gemv_4bit.*")
    # bitsandbytes probes an optional hub kernel at import on AVX512-BF16 CPUs and logs its absence.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    quiet_libraries()
    args = build_parser().parse_args(argv)
    from app.user_errors import report_user_error

    try:
        return args.func(args)
    except ConfigError as exc:
        print("invalid job:\n" + "\n".join(f"  {p}" for p in exc.problems), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a user mistake is one message; anything else is a bug and keeps its traceback
        message = report_user_error(exc)
        if message is None:
            raise
        print(f"ftstudio {args.command}: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
