"""Reading a job's log file in chunks for ``Command.read_logs``: from an offset, or the last N lines."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CHUNK_BYTES = 64 * 1024
#: a read without max_bytes returns at most this much (the client pages on with the returned offset)
DEFAULT_MAX_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class LogChunk:
    offset: int  # file offset of data[0]
    data: bytes
    eof: bool  # last chunk of this answer


def tail_offset(path: Path, lines: int, block: int = 8192) -> int:
    """Offset where the last ``lines`` lines of the file start (a trailing newline ends the last line)."""
    size = path.stat().st_size
    if lines <= 0 or size == 0:
        return size
    with open(path, "rb") as f:
        pos = size
        seen = 0
        # a final newline terminates the last line; it does not start a new one
        f.seek(size - 1)
        skip_last = f.read(1) == b"\n"
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            buf = f.read(pos - start)
            end = len(buf)
            if skip_last and pos == size:
                end -= 1
            idx = buf.rfind(b"\n", 0, end)
            while idx != -1:
                seen += 1
                if seen == lines:
                    return start + idx + 1
                idx = buf.rfind(b"\n", 0, idx)
            pos = start
    return 0


def read_log(path: Path, *, offset: int = 0, max_bytes: int = 0, tail_lines: int = 0) -> list[LogChunk]:
    """Chunks of ``path``: from ``offset`` (negative: from the end), or the last ``tail_lines`` lines, up to
    ``max_bytes`` (0: :data:`DEFAULT_MAX_BYTES`). Always at least one chunk; the last has ``eof`` set."""
    size = path.stat().st_size
    if tail_lines > 0:
        start = tail_offset(path, tail_lines)
    elif offset < 0:
        start = max(0, size + offset)
    else:
        start = min(offset, size)
    limit = max_bytes if max_bytes > 0 else DEFAULT_MAX_BYTES
    end = min(size, start + limit)
    chunks: list[LogChunk] = []
    fd = os.open(path, os.O_RDONLY)
    try:
        pos = start
        while pos < end:
            data = os.pread(fd, min(CHUNK_BYTES, end - pos), pos)
            if not data:
                break
            chunks.append(LogChunk(pos, data, False))
            pos += len(data)
    finally:
        os.close(fd)
    if not chunks:
        return [LogChunk(start, b"", True)]
    last = chunks[-1]
    chunks[-1] = LogChunk(last.offset, last.data, True)
    return chunks
