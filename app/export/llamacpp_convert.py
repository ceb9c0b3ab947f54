"""GGUF for the architectures the in-house writer does not know, through llama.cpp's own converter.

llama.cpp's `convert_hf_to_gguf.py` (with its `conversion/` package and the matching `gguf-py`) ships
inside the llama-cpp-python source distribution on PyPI. It is fetched once, at a pinned version,
with `pip download` into ~/.cache/ftstudio/llama.cpp-<version>/ (never vendored into this repository)
and run as a subprocess with this interpreter, so its own gguf-py is used, not the installed `gguf`.
FTSTUDIO_LLAMA_CPP_DIR may point at a llama.cpp checkout instead.

    write_any_gguf(merged_dir, out, "q8_0")   # in-house writer for llama/qwen2/mistral, else llama.cpp
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from app.export import llamacpp
from app.export.errors import ExportError, Progress, report, scaled

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
CONVERTER = "convert_hf_to_gguf.py"
# What the converter needs from the sdist's vendor/llama.cpp/ folder.
NEEDED = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")
CONVERTER_TYPES = ("f32", "f16", "bf16", "q8_0")  # written by the converter itself; K-quants re-quantize f16


def cache_root() -> Path:
    return Path(os.environ.get("FTSTUDIO_CACHE") or "~/.cache/ftstudio").expanduser()


def converter_dir(progress: Progress | None = None) -> Path:
    """A folder holding llama.cpp's convert_hf_to_gguf.py, fetched on first use."""
    custom = os.environ.get("FTSTUDIO_LLAMA_CPP_DIR")
    if custom:
        folder = Path(custom).expanduser()
        if not (folder / CONVERTER).is_file():
            raise ExportError(f"FTSTUDIO_LLAMA_CPP_DIR={custom}: no {CONVERTER} in that folder")
        return folder
    folder = cache_root() / f"llama.cpp-{LLAMA_CPP_PYTHON_VERSION}"
    if (folder / CONVERTER).is_file():
        return folder
    report(progress, 0.0, f"fetching llama.cpp's converter (llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION} source, "
                          "~77 MB, once)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".llama.cpp-") as tmp:
        sdist = _download(Path(tmp))
        staging = Path(tmp) / "extracted"
        _extract(sdist, staging)
        if folder.exists():  # another process finished first
            return folder
        staging.rename(folder)
    return folder


def _download(into: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
               f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", "-d", str(into)]
    result = subprocess.run(command, capture_output=True, text=True)
    found = sorted(into.glob("llama_cpp_python-*.tar.gz"))
    if result.returncode != 0 or not found:
        tail = " ".join((result.stderr or result.stdout).split()[-40:])
        raise ExportError(
            f"cannot fetch llama.cpp's converter for this architecture: `pip download "
            f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}` failed (offline? {tail}). Connect to the package "
            f"index once, or set FTSTUDIO_LLAMA_CPP_DIR to a llama.cpp checkout")
    return found[0]


def _extract(sdist: Path, into: Path) -> None:
    prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}/vendor/llama.cpp/"
    with tarfile.open(sdist) as archive:
        members = [m for m in archive.getmembers() if m.name.startswith(prefix)
                   and any(m.name[len(prefix):].startswith(n) for n in NEEDED)]
        for member in members:
            member.name = member.name[len(prefix):]
        archive.extractall(into, members=members, filter="data")
    if not (into / CONVERTER).is_file():
        raise ExportError(f"{sdist.name} holds no vendor/llama.cpp/{CONVERTER}")


def _needs_gpt2_class(model_dir: Path) -> bool:
    """llama.cpp reads a Phi-3/4 BPE vocabulary only when tokenizer_config names GPT2Tokenizer (as Phi-4's
    does); transformers 5 saves a generic class name, so a fine-tune's folder needs it said again."""
    config, tok_config = model_dir / "config.json", model_dir / "tokenizer_config.json"
    if (model_dir / "tokenizer.model").is_file() or not tok_config.is_file() or not config.is_file():
        return False
    archs = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
    current = json.loads(tok_config.read_text(encoding="utf-8")).get("tokenizer_class")
    return "Phi3ForCausalLM" in archs and current != "GPT2Tokenizer" and (model_dir / "tokenizer.json").is_file()


@contextmanager
def _converter_input(model_dir: Path) -> Iterator[Path]:
    """The folder to hand the converter: `model_dir`, or a view of it (links to every file) with the
    tokenizer class llama.cpp expects; the user's folder is never modified."""
    if not _needs_gpt2_class(model_dir):
        yield model_dir
        return
    with tempfile.TemporaryDirectory(prefix="ftstudio-convert-") as tmp:
        view = Path(tmp)
        for item in model_dir.iterdir():
            if item.name != "tokenizer_config.json":
                (view / item.name).symlink_to(item.resolve())
        data = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
        (view / "tokenizer_config.json").write_text(json.dumps(data | {"tokenizer_class": "GPT2Tokenizer"}),
                                                     encoding="utf-8")
        yield view


def convert(model_dir: Path, out_path: Path, outtype: str, progress: Progress | None = None) -> Path:
    """Run convert_hf_to_gguf.py on a merged HF folder; its output goes to a log beside the GGUF."""
    folder = converter_dir(scaled(progress, 0.0, 0.1))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(out_path.name + ".partial")
    log_path = out_path.with_name(out_path.name + ".convert.log")
    report(progress, 0.1, f"converting with llama.cpp's {CONVERTER} ({outtype})")
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}  # use the converter's own gguf-py
    with _converter_input(model_dir) as source, open(log_path, "w", encoding="utf-8") as log:
        command = [sys.executable, str(folder / CONVERTER), str(source), "--outfile", str(partial),
                   "--outtype", outtype]
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    if code != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        lines = [line for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
        raise ExportError(f"llama.cpp's converter failed on {model_dir} (exit {code}): "
                          f"{' | '.join(lines[-3:])[-600:]}; full log: {log_path}")
    partial.replace(out_path)
    log_path.unlink(missing_ok=True)
    report(progress, 1.0, f"wrote {out_path.name}")
    return out_path


def write_any_gguf(model_dir: str | Path, out_path: str | Path, quant: str = "f16", progress: Progress | None = None,
                   name: str | None = None) -> Path:
    """The in-house writer for the architectures it knows (llama, qwen2, mistral), llama.cpp's converter
    for every other one; K-quants are made from an f16 file with llama.cpp's quantizer either way."""
    from app.export.gguf_writer import QUANTS, _config, in_house, write_gguf

    model_dir, out_path = Path(model_dir), Path(out_path)
    if in_house(_config(model_dir)):
        return write_gguf(model_dir, out_path, quant, progress, name=name)
    if quant not in QUANTS:
        raise ExportError(f"unknown GGUF quant type {quant!r}; choose one of {', '.join(QUANTS)}")
    if quant in CONVERTER_TYPES:
        return convert(model_dir, out_path, quant, progress)
    llamacpp.require(f"K-quant GGUF export ({quant})")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".f16-") as tmp:
        f16 = convert(model_dir, Path(tmp) / "model-f16.gguf", "f16", scaled(progress, 0.0, 0.7))
        report(progress, 0.7, f"quantizing to {quant} with llama.cpp")
        llamacpp.quantize(f16, out_path, quant)
    report(progress, 1.0, f"wrote {out_path.name}")
    return out_path
