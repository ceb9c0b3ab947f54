"""Catalogue entries on the Hugging Face Hub (`hf_hub_url`), read through `datasets`.

`datasets` downloads into its own cache and honours HF_ENDPOINT (a mirror such as hf-mirror.com) and
HF_HUB_OFFLINE (then only the cache is read). Whatever goes wrong (offline, unknown id, no such
split) becomes one DataError naming the catalogue entry and the dataset id.
"""

from __future__ import annotations

import os
from typing import Any

from app.data.catalogue import DatasetSpec
from app.data.errors import DataError, Problem


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


def hub_rows(spec: DatasetSpec) -> list[dict[str, Any]]:
    """Every row of the entry's hub dataset (its `split`, its `subset`), as plain dicts."""
    assert spec.hub_id is not None
    try:
        from datasets import load_dataset

        dataset = load_dataset(spec.hub_id, name=spec.subset, split=spec.split)
    except Exception as exc:  # noqa: BLE001 - network, auth, missing split: all say the same to the user
        raise DataError([Problem(spec.catalogue_file, None, spec.name, hub_problem(spec.hub_id, exc))]) from None
    return [dict(row) for row in dataset]


def hub_problem(hub_id: str, exc: BaseException) -> str:
    """One line that names the id, the endpoint and the reason (offline mode said plainly)."""
    reason = " ".join(str(exc).split())[:300] or type(exc).__name__
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    where = f"from {endpoint()}" + (" (HF_HUB_OFFLINE is set: only the local cache is read)" if offline else "")
    return (f"cannot load hub dataset {hub_id!r} {where}: {type(exc).__name__}: {reason}. Connect to the network "
            f"(or set HF_ENDPOINT to a mirror), or download the files next to the catalogue and set 'file_name'")
