"""One export, top to bottom: resolve the source, merge, write GGUF, check fidelity, Modelfile, report.

    export("runs/lumi", fmt="gguf", quant="q8_0", output_dir="exports/lumi")

writes `exports/lumi/merged/` (HF safetensors), `lumi-q8_0.gguf`, `Modelfile` and `export_report.json`.
An export below its fidelity target is written, reported as failed and raised as ExportError: it is
never shipped silently.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from app.atomic import write_json_atomic
from app.export import llamacpp
from app.export.errors import ExportError, Progress, report, scaled
from app.export.fidelity import check_fidelity
from app.export.gguf_writer import QUANTS, gguf_metadata
from app.export.llamacpp_convert import write_any_gguf
from app.export.merge import adapter_base, copy_full_model, is_adapter, merge_adapter
from app.export.modelfile import write_modelfile

FORMATS = ("safetensors", "gguf")
REPORT_NAME = "export_report.json"


def resolve_source(source: str | Path) -> tuple[Path, str]:
    """(model-or-adapter folder, export name) for a run folder, an adapter folder or a model folder."""
    path = Path(source).expanduser()
    if not path.is_dir():
        raise ExportError(f"export source {str(source)!r} is not a folder")
    if (path / "adapter").is_dir():  # a run folder: runs/<name>/adapter
        return path / "adapter", path.resolve().name
    if not is_adapter(path) and not (path / "config.json").is_file():
        raise ExportError(f"{path} holds neither a model (config.json) nor a PEFT adapter (adapter_config.json)")
    name = path.resolve().name
    if name == "adapter":
        name = path.resolve().parent.name
    return path, name


def default_output_dir(source: str | Path, fmt: str, quant: str) -> Path:
    """runs/<name>/exports/<tag> for a run folder, else <parent>/<name>-exports/<tag> beside the source."""
    path = Path(source).expanduser()
    tag = f"gguf-{quant}" if fmt == "gguf" else fmt
    if (path / "adapter").is_dir():
        return path / "exports" / tag
    return path.parent / f"{path.resolve().name}-exports" / tag


def chat_template_of(model_dir: Path) -> str | None:
    if (model_dir / "chat_template.jinja").is_file():
        return (model_dir / "chat_template.jinja").read_text(encoding="utf-8")
    config = model_dir / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        return template if isinstance(template, str) else None
    return None


def _check_request(model_src: Path, fmt: str, quant: str, base_dir: str | Path | None) -> None:
    """Fail before any slow step on what the user can fix: format, quant, extra, architecture."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt != "gguf":
        return
    if quant not in QUANTS:
        raise ExportError(f"unknown GGUF quant type {quant!r}; choose one of {', '.join(QUANTS)}")
    if quant in llamacpp.K_QUANTS:
        llamacpp.require(f"K-quant GGUF export ({quant})")
    config_dir = adapter_base(model_src, base_dir) if is_adapter(model_src) else model_src
    if not (config_dir / "config.json").is_file():
        raise ExportError(f"{config_dir} has no config.json: not a Hugging Face model folder")


def _files(output_dir: Path) -> list[dict[str, Any]]:
    return [
        {"path": str(p.relative_to(output_dir)), "bytes": p.stat().st_size}
        for p in sorted(output_dir.rglob("*"))
        if p.is_file() and p.name != REPORT_NAME
    ]


def _write_report(output_dir: Path, data: dict[str, Any]) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    data["files"] = _files(output_dir)
    write_json_atomic(output_dir / REPORT_NAME, data)


def export(
    source: str | Path,
    fmt: str = "safetensors",
    quant: str = "f16",
    output_dir: str | Path | None = None,
    progress: Progress | None = None,
    check: bool = True,
    base_dir: str | Path | None = None,
    texts: list[str] | None = None,
    system: str | None = None,
) -> dict[str, Any]:
    """Export a run folder, adapter folder or model folder; returns (and writes) the export report.

    fmt="safetensors": merged HF folder in `output_dir`. fmt="gguf": `output_dir/merged/` (adapters only),
    `output_dir/<name>-<quant>.gguf`, a fidelity check against the merged model (unless check=False),
    an Ollama `Modelfile` and `export_report.json`. Raises ExportError on user errors and on a GGUF
    below its fidelity target (after writing the report).
    """
    fmt, quant = fmt.lower(), quant.lower()
    model_src, name = resolve_source(source)
    _check_request(model_src, fmt, quant, base_dir)
    out = Path(output_dir) if output_dir is not None else default_output_dir(source, fmt, quant)
    out.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {
        "name": name,
        "source": str(Path(source).resolve()),
        "format": fmt,
        "quant": quant if fmt == "gguf" else None,
        "adapter": is_adapter(model_src),
        "output_dir": str(out.resolve()),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "fidelity": None,
        "passed": False,
        "error": None,
        "warnings": [],
    }
    timings: dict[str, float] = {}
    data["timings_s"] = timings
    try:
        _run(model_src, name, fmt, quant, out, progress, check, base_dir, texts, system, data, timings)
    except Exception as exc:
        data["error"] = f"{type(exc).__name__}: {exc}"
        _write_report(out, data)
        raise
    if data["passed"] is False:
        fid = data["fidelity"]
        data["error"] = (
            f"GGUF {quant} failed its fidelity check: top-1 agreement {fid['agreement']:.2%} < target "
            f"{fid['target']:.0%} (perplexity {fid['ppl_reference']} -> {fid['ppl_gguf']}); "
            f"see {out / REPORT_NAME}"
        )
    _write_report(out, data)
    if data["error"]:
        raise ExportError(data["error"])
    report(progress, 1.0, "export finished")
    return data


def _run(
    model_src: Path,
    name: str,
    fmt: str,
    quant: str,
    out: Path,
    progress: Progress | None,
    check: bool,
    base_dir: str | Path | None,
    texts: list[str] | None,
    system: str | None,
    data: dict[str, Any],
    timings: dict[str, float],
) -> None:
    gguf_fmt = fmt == "gguf"
    merge_end = 0.35 if gguf_fmt else 0.95
    t = time.time()
    if is_adapter(model_src):
        merged = merge_adapter(
            model_src, out / "merged" if gguf_fmt else out, base_dir=base_dir, progress=scaled(progress, 0.0, merge_end)
        )
        timings["merge"] = round(time.time() - t, 2)
    elif gguf_fmt:
        merged = model_src  # already a full model: convert it in place, no copy
    else:
        merged = copy_full_model(model_src, out, progress=scaled(progress, 0.0, merge_end))
        timings["copy"] = round(time.time() - t, 2)
    data["merged_dir"] = str(merged.resolve())
    if not gguf_fmt:
        data["passed"] = True
        return

    t = time.time()
    gguf_path = write_any_gguf(merged, out / f"{name}-{quant}.gguf", quant, scaled(progress, merge_end, 0.65),
                               name=name)
    timings["gguf"] = round(time.time() - t, 2)
    meta = gguf_metadata(gguf_path)
    arch = meta.get("general.architecture")
    data["gguf"] = {
        "path": str(gguf_path.resolve()),
        "bytes": gguf_path.stat().st_size,
        "architecture": arch,
        "tokenizer": meta.get("tokenizer.ggml.model"),
        "pre_tokenizer": meta.get("tokenizer.ggml.pre"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
        "context_length": meta.get(f"{arch}.context_length"),
        "chat_template": "tokenizer.chat_template" in meta,
    }

    template = chat_template_of(merged)
    data["modelfile"] = str(write_modelfile(gguf_path, template, out / "Modelfile", system=system).resolve())

    if check:
        t = time.time()
        fid = check_fidelity(merged, gguf_path, texts=texts, progress=scaled(progress, 0.65, 0.98))
        timings["fidelity"] = round(time.time() - t, 2)
        data["fidelity"] = fid
        data["passed"] = bool(fid["passed"])
        if fid.get("tokenizer_match") is False:
            data["warnings"].append(
                f"llama.cpp splits the check texts into other tokens than the HF tokenizer (pre-tokenizer "
                f"{data['gguf']['pre_tokenizer']!r}): prompts may tokenize differently than in training"
            )
    else:  # no check ran: say so, never "passed"
        data["passed"] = None
        data["fidelity"] = {"skipped": True, "result": "not checked"}
