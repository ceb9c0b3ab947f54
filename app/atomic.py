"""Whole files or nothing: every state, config and report file is written through here.

A temp file in the same folder (same filesystem, so the rename is atomic), flushed and fsynced, then
renamed over the target. A reader sees the old file or the new one, never half of either; a crash
leaves at worst a hidden `.name.PID.tmp` beside it.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    path = Path(path)
    # pid and thread in the name: two writers of one file (processes or threads) never share a temp file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike[str], data: Any, indent: int | None = 2) -> None:
    write_text_atomic(path, json.dumps(data, ensure_ascii=False, indent=indent) + "\n")


def append_line(path: str | os.PathLike[str], line: str) -> None:
    """Append one line (a newline is added) with a single write, flushed and fsynced.

    For append-only files (feedback rows): a reader sees whole lines, plus at worst a torn last line
    after a crash, which line readers skip. A missing newline at the end of the file is repaired first.
    """
    path = Path(path)
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    with open(path, "a+b") as handle:
        if handle.tell() > 0:
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":
                data = b"\n" + data
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
