"""Load raw text documents for calibration from files, datasets or lists.

Calibration only needs a bounded prefix of a corpus (a few hundred windows of a
few hundred tokens), so every source can be read lazily: ``max_documents`` and
``max_chars`` stop reading early, and ``.gz`` files are streamed rather than
decompressed whole.
"""

from __future__ import annotations

import codecs
import gzip
import json
import os
import sys
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Union

if TYPE_CHECKING:
    import datasets

__all__ = ["DocumentSource", "SUPPORTED_EXTENSIONS", "load_documents"]

SUPPORTED_EXTENSIONS: tuple[str, ...] = (".txt", ".txt.gz", ".jsonl", ".jsonl.gz")

DocumentSource = Union[str, os.PathLike, "datasets.Dataset", Sequence[str]]


def load_documents(
    source: DocumentSource,
    *,
    max_documents: int | None = None,
    max_chars: int | None = None,
) -> list[str]:
    """Return the non-empty text documents of ``source``, in order.

    ``source`` may be:

    * a path to ``.txt`` / ``.txt.gz``: documents are separated by one or more
      blank (or whitespace-only) lines; the lines of a document are joined
      with ``"\\n"``;
    * a path to ``.jsonl`` / ``.jsonl.gz``: one JSON object per line with a
      string ``text`` field (blank lines are skipped);
    * a ``datasets.Dataset`` with a ``text`` column;
    * a list (or tuple) of strings.

    Whitespace-only documents are dropped everywhere. ``max_documents`` keeps
    at most that many documents; ``max_chars`` keeps at most that many
    characters in total (the last document is cut to fit). Both stop reading
    as soon as they are reached, so a prefix of a large ``.gz`` corpus is
    cheap.

    Raises ``FileNotFoundError`` for a missing path and ``ValueError`` for an
    unsupported extension, a file that is not UTF-8 text (naming the byte
    offset of the first undecodable byte) or not the gzip stream its name
    says, a malformed JSONL line, a Dataset without a ``text`` column, or a
    source that yields no documents.
    """
    _check_limit("max_documents", max_documents)
    _check_limit("max_chars", max_chars)
    documents = list(_take(_iter_source(source), max_documents, max_chars))
    if not documents:
        raise ValueError(
            f"{_describe(source)} contains no text documents "
            "(every document is empty or whitespace-only); pass a corpus with text"
        )
    return documents


def _check_limit(name: str, value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int or None, got {value!r}")


def _take(
    documents: Iterable[str], max_documents: int | None, max_chars: int | None
) -> Iterator[str]:
    """Yield non-empty documents until either limit is reached (lazily)."""
    count = 0
    chars = 0
    for doc in documents:
        if not doc.strip():
            continue
        if max_chars is not None:
            doc = doc[: max_chars - chars]
            if not doc.strip():
                return
        yield doc
        count += 1
        chars += len(doc)
        if max_documents is not None and count >= max_documents:
            return
        if max_chars is not None and chars >= max_chars:
            return


def _iter_source(source: DocumentSource) -> Iterator[str]:
    if isinstance(source, (str, os.PathLike)):
        return _iter_file(Path(source))
    if _is_dataset(source):
        return _iter_dataset(source)
    if isinstance(source, (list, tuple)):
        return _iter_strings(source)
    raise ValueError(
        f"unsupported document source of type {type(source).__name__}; pass a path "
        f"({', '.join(SUPPORTED_EXTENSIONS)}), a datasets.Dataset with a 'text' "
        "column, or a list of strings"
    )


def _iter_strings(texts: Sequence[object]) -> Iterator[str]:
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(
                f"document list item {i} is a {type(text).__name__}, not a str; "
                "pass a list of strings"
            )
        yield text


def _is_dataset(source) -> bool:
    # A Dataset exists only where `datasets` was imported: reading files needs no `datasets` at all.
    module = sys.modules.get("datasets")
    return module is not None and isinstance(source, module.Dataset)


def _iter_dataset(dataset: datasets.Dataset) -> Iterator[str]:
    if "text" not in dataset.column_names:
        raise ValueError(
            f"Dataset has no 'text' column (columns: {dataset.column_names}); "
            "rename the column holding the documents to 'text'"
        )
    for batch in dataset.select_columns(["text"]).iter(batch_size=1024):
        for text in batch["text"]:
            if text is None:
                continue
            if not isinstance(text, str):
                raise ValueError(
                    f"Dataset 'text' column holds {type(text).__name__} values, not "
                    "str; convert it to strings"
                )
            yield text


def _extension(path: Path) -> str:
    name = path.name.lower()
    for ext in sorted(SUPPORTED_EXTENSIONS, key=len, reverse=True):
        if name.endswith(ext):
            return ext
    return "".join(path.suffixes) or "(none)"


def _open_text(path: Path) -> IO[str]:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _iter_file(path: Path) -> Iterator[str]:
    # Validate eagerly (not inside the generator) so errors surface at the call.
    ext = _extension(path)
    if ext not in SUPPORTED_EXTENSIONS:
        raise ValueError(
            f"unsupported file extension {ext!r} for {path}; supported extensions: "
            f"{', '.join(SUPPORTED_EXTENSIONS)}"
        )
    if not path.exists():
        raise FileNotFoundError(
            f"document file not found: {path}; pass an existing {', '.join(SUPPORTED_EXTENSIONS)} file with --data"
        )
    if not path.is_file():
        raise ValueError(f"{path} is not a file; pass the path of a document file")
    return _decoded(path, _iter_jsonl(path) if ext.startswith(".jsonl") else _iter_txt(path))


_EXPECTED = "pass UTF-8 text with --data: .txt/.txt.gz (blank-line separated documents) or .jsonl/.jsonl.gz"


def _decoded(path: Path, documents: Iterator[str]) -> Iterator[str]:
    """``documents``, with a file that is not (gzipped) UTF-8 text as one ``ValueError`` naming the file."""
    try:
        yield from documents
    except UnicodeDecodeError:
        offset, byte = _first_undecodable_byte(path)
        where = "of the decompressed text" if path.name.lower().endswith(".gz") else "of the file"
        raise ValueError(
            f"{path} is not UTF-8 text: byte 0x{byte:02x} at offset {offset} {where} is not valid UTF-8 "
            f"(a binary file, or another encoding: convert it with iconv -t UTF-8); {_EXPECTED}"
        ) from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise ValueError(
            f"{path} ends in .gz but is not a whole gzip stream ({err}); re-compress it with gzip, "
            f"or drop the .gz suffix if it is plain text; {_EXPECTED}"
        ) from None


def _first_undecodable_byte(path: Path, chunk: int = 1 << 20) -> tuple[int, int]:
    """Offset (in the decompressed bytes, for .gz) and value of the first byte that is not UTF-8."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    offset, pending = 0, b""
    with opener(path, "rb") as handle:
        while True:
            block = handle.read(chunk)
            data = pending + block
            try:
                _, consumed = codecs.utf_8_decode(data, "strict", not block)
            except UnicodeDecodeError as err:
                return offset + err.start, data[err.start]
            offset += consumed
            pending = data[consumed:]
            if not block:
                return offset, data[0] if data else 0


def _iter_txt(path: Path) -> Iterator[str]:
    with _open_text(path) as handle:
        lines: list[str] = []
        for line in handle:
            line = line.rstrip("\r\n")
            if line.strip():
                lines.append(line)
            elif lines:
                yield "\n".join(lines)
                lines = []
        if lines:
            yield "\n".join(lines)


def _iter_jsonl(path: Path) -> Iterator[str]:
    with _open_text(path) as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path} line {lineno} is not valid JSON: {exc.msg}") from exc
            if not isinstance(record, dict) or "text" not in record:
                raise ValueError(
                    f"{path} line {lineno} has no 'text' field; each line must be a "
                    'JSON object like {"text": "..."}'
                )
            text = record["text"]
            if not isinstance(text, str):
                raise ValueError(
                    f"{path} line {lineno}: 'text' is a {type(text).__name__}, not a string"
                )
            yield text


def _describe(source: DocumentSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if _is_dataset(source):
        return f"Dataset ({source.num_rows} rows)"
    return f"document list ({len(source)} items)"
