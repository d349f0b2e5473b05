"""Readers: one file (or byte range of one) -> batches of raw documents.

Text and JSONL files are streamed in blocks and can be cut into byte ranges: a line
belongs to the range that holds its first byte, so ranges read in parallel cover
every line exactly once. Parquet files are streamed by record batch. Anything that
makes a file unreadable raises :class:`BadFile` with the reason; the caller decides
(``on_bad_file``) whether that fails the job or skips the file.
"""

from __future__ import annotations

import json
from typing import Iterator

from rayworks import storage

BLOCK_BYTES = 4 << 20
BATCH_DOCS = 2048


class BadFile(Exception):
    """A corrupt or unreadable input file; the message says what is wrong with it."""


def iter_line_ranges(f, start: int, end: int, block: int = BLOCK_BYTES) -> Iterator[list[bytes]]:
    """Yields batches of lines (without newline) whose first byte lies in [start, end)."""
    if start > 0:
        f.seek(start - 1)
        pos = start - 1
        while True:  # skip the line that began in the previous range
            b = f.read(block)
            if not b:
                return
            k = b.find(b"\n")
            if k >= 0:
                pos += k + 1
                buf = b[k + 1:]
                break
            pos += len(b)
    else:
        f.seek(0)
        pos, buf = 0, b""
    # invariant: pos is the file offset of buf[0], the start of the current line
    eof = False
    while pos < end and not eof:
        b = f.read(block)
        eof = not b
        lines = (buf + b).split(b"\n")
        buf = lines.pop()
        if eof and buf:
            lines.append(buf)  # a last line without a trailing newline
        out = []
        for ln in lines:
            if pos >= end:
                break
            out.append(ln)
            pos += len(ln) + 1
        if out:
            yield out


def decode(raw: list[bytes], on_error: str) -> tuple[list[str], int, int]:
    """UTF-8 decodes documents: (texts, undecodable dropped, replaced).

    The whole batch is decoded at once when it is clean (the common case); only a
    batch with bad bytes is decoded document by document.
    """
    try:
        joined = b"\x00".join(raw).decode("utf-8")
        if joined.count("\x00") == len(raw) - 1:
            return joined.split("\x00") if raw else [], 0, 0
    except UnicodeDecodeError:
        pass
    out, dropped, replaced = [], 0, 0
    for r in raw:
        try:
            out.append(r.decode("utf-8"))
        except UnicodeDecodeError:
            if on_error == "drop":
                dropped += 1
            else:
                out.append(r.decode("utf-8", errors="replace"))
                replaced += 1
    return out, dropped, replaced


def _strip_cr(lines: list[bytes]) -> list[bytes]:
    return [ln[:-1] if ln.endswith(b"\r") else ln for ln in lines]


def read_part(f_info: dict, start: int, end: int | None, on_decode_error: str,
              max_file_bytes: int) -> Iterator[tuple[list[str], dict]]:
    """Yields (texts, stats) batches for one file or byte range.

    stats holds ``read`` (documents seen), ``undecodable`` (dropped), ``replaced``
    and ``too_long`` (whole-file documents dropped unread because the file is larger
    than any allowed document could be).
    """
    path, fmt = f_info["path"], f_info["format"]
    fs, p = storage.filesystem(path)
    end = f_info["size_bytes"] if end is None else end
    try:
        if fmt == "text" and f_info["text_mode"] == "file":
            if f_info["size_bytes"] > max_file_bytes:
                yield [], {"read": 1, "too_long": 1}
                return
            with fs.open_input_stream(p) as f:
                texts, dropped, replaced = decode([f.read()], on_decode_error)
            yield texts, {"read": 1, "undecodable": dropped, "replaced": replaced}
        elif fmt == "text":
            with fs.open_input_file(p) as f:
                for lines in iter_line_ranges(f, start, end):
                    lines = [ln for ln in _strip_cr(lines) if ln.strip()]
                    texts, dropped, replaced = decode(lines, on_decode_error)
                    yield texts, {"read": len(lines), "undecodable": dropped, "replaced": replaced}
        elif fmt == "jsonl":
            yield from _read_jsonl(fs, p, start, end, f_info["text_field"], on_decode_error)
        else:
            yield from _read_parquet(fs, p, f_info["text_field"], on_decode_error)
    except BadFile:
        raise
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid/ArrowIOError are ValueError/OSError
        raise BadFile(f"cannot read: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from None


def _read_jsonl(fs, p: str, start: int, end: int, field: str, on_decode_error: str):
    with fs.open_input_file(p) as f:
        for lines in iter_line_ranges(f, start, end):
            lines = [ln for ln in lines if ln.strip()]
            raw_texts, dropped, replaced = decode(lines, on_decode_error)
            texts = []
            for ln in raw_texts:
                try:
                    obj = json.loads(ln)
                except json.JSONDecodeError as exc:
                    raise BadFile(f"invalid JSON line ({exc.msg} at column {exc.colno}): {ln[:80]!r}") from None
                if not isinstance(obj, dict) or field not in obj:
                    raise BadFile(f"a JSON line has no field {field!r} (set inputs[].text_field): {ln[:80]!r}")
                v = obj[field]
                if v is None:
                    v = ""
                if not isinstance(v, str):
                    raise BadFile(f"field {field!r} is {type(v).__name__}, not a string: {ln[:80]!r}")
                texts.append(v)
            yield texts, {"read": len(lines), "undecodable": dropped, "replaced": replaced}


def _read_parquet(fs, p: str, field: str, on_decode_error: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    with fs.open_input_file(p) as f:
        pf = pq.ParquetFile(f)
        if field not in pf.schema_arrow.names:
            raise BadFile(f"no column {field!r} (columns: {pf.schema_arrow.names[:10]}); set inputs[].text_field")
        typ = pf.schema_arrow.field(field).type
        is_bin = pa.types.is_binary(typ) or pa.types.is_large_binary(typ)
        if not (is_bin or pa.types.is_string(typ) or pa.types.is_large_string(typ)):
            raise BadFile(f"column {field!r} has type {typ}, not a string column")
        for batch in pf.iter_batches(batch_size=BATCH_DOCS, columns=[field]):
            vals = batch.column(0).to_pylist()
            if is_bin:
                texts, dropped, replaced = decode([v or b"" for v in vals], on_decode_error)
            else:
                texts, dropped, replaced = [v or "" for v in vals], 0, 0
            yield texts, {"read": len(vals), "undecodable": dropped, "replaced": replaced}
