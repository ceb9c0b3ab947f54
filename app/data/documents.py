"""Documents for synthetic data: .txt, .md and .pdf files read as text and cut into passages.

Passages are cut by `semantic-text-splitter` (a maintained Rust splitter): it fills each passage up to
`max_chars` with the largest units that fit -- Markdown sections and blocks for .md, paragraphs, then
sentences (Unicode sentence boundaries, so Chinese 。！？ end sentences too), then words -- and never
cuts a sentence it can keep whole. PDF text comes from `pypdf` (optional: `pip install pypdf`); without
it a .pdf is a clear error, not a silent skip.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from app.data.errors import DataError, Problem, display_path

DOCUMENT_SUFFIXES = (".txt", ".md", ".markdown", ".pdf")
MIN_PASSAGE_CHARS = 40  # shorter pieces (headings, page numbers) open the next passage, or are dropped


@dataclass(frozen=True)
class Passage:
    source: str  # the file, as the user named it
    index: int  # 1-based, within its file
    text: str


def document_files(paths: list[str]) -> list[Path]:
    """Each named file, and the supported files inside each named folder (sorted); DataError if any is bad."""
    found: list[Path] = []
    problems: list[Problem] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            inside = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in DOCUMENT_SUFFIXES
                            and not p.name.startswith("."))
            if not inside:
                problems.append(Problem(display_path(path), None, None, "folder holds no .txt, .md or .pdf file"))
            found += inside
        elif not path.is_file():
            problems.append(Problem(display_path(path), None, None, "file not found"))
        elif path.suffix.lower() not in DOCUMENT_SUFFIXES:
            problems.append(Problem(display_path(path), None, None, f"unsupported document type {path.suffix!r} "
                                    f"(expected one of: {', '.join(DOCUMENT_SUFFIXES)})"))
        else:
            found.append(path)
    if problems:
        raise DataError(problems)
    return found


def read_document(path: Path) -> str:
    """The text of one document; DataError names the file when it cannot be read."""
    where = display_path(path)
    if path.suffix.lower() == ".pdf":
        return _read_pdf(path)
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError([Problem(where, None, None, f"not UTF-8 text ({exc.reason})")]) from None
    except OSError as exc:
        raise DataError([Problem(where, None, None, f"cannot read the file ({exc.strerror})")]) from None


def pdf_supported() -> bool:
    import importlib.util

    return importlib.util.find_spec("pypdf") is not None


def _read_pdf(path: Path) -> str:
    where = display_path(path)
    if not pdf_supported():
        raise DataError([Problem(where, None, None, "reading PDF needs pypdf: pip install pypdf "
                                 "(or convert the file to .txt)")])
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(str(path))
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PdfReadError, OSError, ValueError) as exc:
        raise DataError([Problem(where, None, None, f"unreadable PDF: {exc}")]) from None
    text = "\n\n".join(p.strip() for p in pages if p.strip())
    if not text:
        raise DataError([Problem(where, None, None, "the PDF has no text layer (scanned pages need OCR first)")])
    return text


def cut_passages(text: str, max_chars: int = 1200, markdown: bool = False) -> list[str]:
    """`text` cut into passages of at most `max_chars` characters at the largest boundaries that fit."""
    from semantic_text_splitter import MarkdownSplitter, TextSplitter

    text = re.sub(r"[ \t]+\n", "\n", text.replace("\r\n", "\n"))
    low = max(MIN_PASSAGE_CHARS, max_chars // 2)
    splitter = (MarkdownSplitter if markdown else TextSplitter)((low, max_chars))
    passages: list[str] = []
    carry = ""  # a piece too short to stand alone (a heading): it opens the next passage when that fits
    for chunk in splitter.chunks(text):
        joined = f"{carry}\n\n{chunk}" if carry else chunk
        if carry and len(joined) > max_chars:
            if len(carry) >= MIN_PASSAGE_CHARS:
                passages.append(carry)
            joined = chunk
        if len(joined) < MIN_PASSAGE_CHARS:
            carry = joined
            continue
        passages.append(joined)
        carry = ""
    if len(carry) >= MIN_PASSAGE_CHARS:
        passages.append(carry)
    return passages


def load_passages(paths: list[str], max_chars: int = 1200) -> list[Passage]:
    """Every passage of every document, in file order; DataError lists every file that failed."""
    passages: list[Passage] = []
    problems: list[Problem] = []
    for path in document_files(paths):
        try:
            text = read_document(path)
        except DataError as exc:
            problems += exc.problems
            continue
        markdown = path.suffix.lower() in (".md", ".markdown")
        pieces = cut_passages(text, max_chars, markdown)
        if not pieces:
            problems.append(Problem(display_path(path), None, None, "no passage of text found"))
        passages += [Passage(display_path(path), i, piece) for i, piece in enumerate(pieces, 1)]
    if problems:
        raise DataError(problems)
    return passages
