"""A shard's bytes as a stream of lines: raw, gzip (multi-member) or zstd (multi-frame) in bounded
pieces, a truncated or corrupt stream raised (``CorruptStream``), never ended quietly; lines split
with a length limit (``TooLong`` marks a line past it)."""

from __future__ import annotations

import zlib
from collections.abc import Iterator

from pipeline.errors import JobError, TransientError
from pipeline.io.shard import Shard

# A shard is read in chunks of this many (compressed) bytes; decompressed output per step is
# bounded by the same amount for gzip, and by one zstd block window for zstd.
READ_CHUNK = 1 << 20
COMPRESSED_PIECE = 16 << 10
UTF8_BOM = b"\xef\xbb\xbf"


class CorruptStream(JobError):
    """The compressed stream cannot be decoded further: the rest of the shard is lost."""


class ShortRead(TransientError):
    """The store ended a shard's bytes before its listed size (a ranged GET answered 206 with an
    empty body, a connection closed cleanly mid-object): transient, never an end of file."""


def _raw_chunks(f, piece: int = READ_CHUNK, expected: int = 0) -> Iterator[bytes]:
    """The bytes of ``f`` in pieces; ``expected`` (the listed size, when known): fewer bytes than
    that raise ``ShortRead`` at the end, before a reader can take a cut line for a whole one."""
    read = 0
    while True:
        data = f.read(READ_CHUNK)
        if not data:
            if expected and read < expected:
                raise ShortRead(f"read {read} of {expected} bytes: the store's answer ended early")
            return
        read += len(data)
        for i in range(0, len(data), piece):
            yield data[i : i + piece]


def _gzip_chunks(raw: Iterator[bytes]) -> Iterator[bytes]:
    """Multi-member gzip; truncation or garbage raises CorruptStream (never ends quietly).
    Output per step is bounded (``max_length``), so a small bomb cannot fill memory."""
    d = zlib.decompressobj(wbits=31)
    in_member = False
    try:
        for data in raw:
            while data:
                if d.eof:  # a next member, or zero padding after the last one
                    if not data.strip(b"\x00"):
                        break
                    d = zlib.decompressobj(wbits=31)
                in_member = True
                out = d.decompress(data, READ_CHUNK)
                if out:
                    yield out
                data = d.unused_data if d.eof else d.unconsumed_tail
                if d.eof:
                    in_member = False
        if in_member:
            tail = d.flush()
            if tail:
                yield tail
            raise CorruptStream("gzip stream ends before its end-of-stream marker (truncated)")
    except zlib.error as e:
        raise CorruptStream(f"gzip: {e}") from e


def _zstd_chunks(raw: Iterator[bytes]) -> Iterator[bytes]:
    """Multi-frame zstd; a truncated last frame raises CorruptStream (zstandard's stream reader
    would end quietly with what it had)."""
    import zstandard

    dctx = zstandard.ZstdDecompressor()
    d = dctx.decompressobj()
    in_frame = False
    try:
        for data in raw:
            while data:
                in_frame = True
                out = d.decompress(data)
                if out:
                    yield out
                if d.eof:
                    data, d, in_frame = d.unused_data, dctx.decompressobj(), False
                else:
                    data = b""
        if in_frame and not d.eof:
            raise CorruptStream("zstd stream ends inside a frame (truncated)")
    except zstandard.ZstdError as e:
        raise CorruptStream(f"zstd: {e}") from e


def shard_chunks(f, shard: Shard) -> Iterator[bytes]:
    if shard.compression is None:
        return _raw_chunks(f, expected=shard.size)
    # Compressed input goes to the decoder in small pieces: a corrupt stream loses at most
    # the output of one piece beyond what was already decoded.
    raw = _raw_chunks(f, COMPRESSED_PIECE, expected=shard.size)
    return _gzip_chunks(raw) if shard.compression == "gzip" else _zstd_chunks(raw)


class TooLong:
    """Stands for a line longer than the record limit (its bytes were not kept)."""

    def __init__(self, size: int):
        self.size = size


def split_lines(chunks: Iterator[bytes], max_bytes: int) -> Iterator[bytes | TooLong]:
    """Lines ending in ``\n``, ``\r\n`` or a lone ``\r``, without their endings. A line longer
    than ``max_bytes`` is yielded as ``TooLong`` and never held in memory whole."""
    buf = b""
    skipping = 0  # > 0: inside an over-long line, this many bytes dropped so far
    pending_cr = False  # the previous chunk ended in "\r": a "\n" starting this one belongs to it
    for data in chunks:
        if pending_cr:
            pending_cr = False
            if data[:1] == b"\n":
                data = data[1:]
        if not data:
            continue
        lines = (buf + data).splitlines(keepends=True) if not skipping else data.splitlines(keepends=True)
        buf = b""
        last = lines[-1]
        complete = lines if last.endswith((b"\n", b"\r")) else lines[:-1]
        for line in complete:
            body = line.rstrip(b"\r\n") if line.endswith(b"\r\n") else line[:-1]
            if skipping:
                yield TooLong(skipping + len(body))
                skipping = 0
            elif len(body) > max_bytes:
                yield TooLong(len(body))
            else:
                yield body
        if last.endswith(b"\r"):
            pending_cr = True
        elif complete is not lines:  # an unfinished line
            if skipping:
                skipping += len(last)
            elif len(last) > max_bytes:
                skipping = len(last)
            else:
                buf = last
    if skipping:
        yield TooLong(skipping)
    elif buf:
        yield buf
