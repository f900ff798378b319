"""Walk a tar stream block by block and re-emit it, encrypting selected regular files.

Only a selected file changes: its header gets the new size and checksum (and a PAX
``size`` record, if it had one, is rewritten); its content becomes an envelope. Every
other byte — headers of every format (ustar, GNU, PAX, v7), GNU long names, PAX
records, global headers, sparse maps and extension blocks, hard links, whiteouts,
padding and whatever follows the end-of-archive marker — is copied unchanged, because
nothing re-encodes it. ``tarfile`` is deliberately not used for writing: re-encoding a
header changes bytes (and so a layer digest) for no reason.

Runs synchronously over a file-like source (a worker thread drives it); memory is
bounded by ``PIECE`` plus the extended headers of one entry (``max_header_bytes``).
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterable, Protocol

__all__ = [
    "BLOCK",
    "TarError",
    "TarLimits",
    "Sealer",
    "RewriteStats",
    "compile_globs",
    "scan_tar",
    "measure_tar",
    "rewrite_tar",
    "encode_number",
    "ustar_header",
]

BLOCK = 512
PIECE = 1024 * 1024
_REGULAR = (b"0", b"\0", b"7")
_HEADER_ONLY = (b"1", b"2", b"3", b"4", b"5", b"6")  # no data follows, whatever size says
_OCTAL_MAX = 8**11


class TarError(Exception):
    """A layer that is not a valid tar, is truncated, unsafe, or over a limit."""


@dataclass(frozen=True)
class TarLimits:
    max_bytes: int = 64 * 1024**3
    max_entries: int = 1_000_000
    max_header_bytes: int = 1024 * 1024
    # Which limit ``max_bytes`` is, for the error (the tightest of several may apply).
    max_bytes_reason: str = "the decompressed size limit"


class Sealer(Protocol):
    """Encrypts one file: ``size`` is the output size, known before any content."""

    size: int

    def update(self, data: bytes) -> bytes: ...

    def finish(self) -> bytes: ...


@dataclass
class RewriteStats:
    entries: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    encrypted: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


# -- globs --------------------------------------------------------------------------
def _glob_regex(pattern: str) -> str:
    pattern = pattern.strip()
    while pattern.startswith("./"):
        pattern = pattern[2:]
    pattern = pattern.lstrip("/")
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            end = pattern.find("]", i + 2)
            if end == -1:
                out.append(re.escape(c))
                i += 1
                continue
            body = pattern[i + 1 : end]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


def compile_globs(patterns: Iterable[str]) -> Callable[[str], bool]:
    """Match root-filesystem paths (no leading ``./`` or ``/``): ``*`` and ``?`` stay
    within one path segment, ``**`` crosses segments (``opt/**/*.onnx``)."""
    parts = [_glob_regex(p) for p in patterns if p.strip()]
    if not parts:
        return lambda path: False
    regex = re.compile("^(?:" + "|".join(parts) + ")$", re.DOTALL)
    return lambda path: regex.match(path) is not None


# -- numbers and headers ----------------------------------------------------------------
def _parse_number(field_: bytes, what: str) -> int:
    if field_ and field_[0] & 0x80:
        # GNU base-256: 0x80 positive, 0xff negative (two's complement).
        value = 0
        for byte in field_[1:]:
            value = (value << 8) | byte
        if field_[0] == 0xFF:
            value -= 256 ** (len(field_) - 1)
        elif field_[0] != 0x80:
            raise TarError(f"corrupt tar header: bad base-256 {what}")
        return value
    text = field_.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise TarError(f"corrupt tar header: {what} is not a number") from None


def encode_number(value: int, width: int = 12) -> bytes:
    """Octal with a NUL terminator when it fits, else GNU base-256 (as Go and GNU tar read)."""
    if 0 <= value < 8 ** (width - 1):
        return b"%0*o\0" % (width - 1, value)
    if value < 0 or value >= 256 ** (width - 1):
        raise TarError(f"number {value} does not fit a tar header field")
    return b"\x80" + value.to_bytes(width - 1, "big")


def _checksums(block: bytes) -> tuple[int, int]:
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
    signed = sum((b - 256 if b > 127 else b) for b in block[:148]) + 8 * 32 + sum(
        (b - 256 if b > 127 else b) for b in block[156:]
    )
    return unsigned, signed


def _set_checksum(block: bytearray) -> None:
    block[148:156] = b" " * 8
    block[148:155] = b"%06o\0" % _checksums(bytes(block))[0]


def _with_size(block: bytes, size: int) -> bytes:
    out = bytearray(block)
    out[124:136] = encode_number(size)
    _set_checksum(out)
    return bytes(out)


def ustar_header(name: str, size: int, *, typeflag: bytes = b"0", mode: int = 0o644) -> bytes:
    """A fixed ustar header (uid/gid 0, mtime 0, no owner names) for names up to 100 bytes."""
    raw = name.encode()
    if len(raw) > 100:
        raise TarError(f"name too long for a plain ustar header: {name}")
    block = bytearray(BLOCK)
    block[0 : len(raw)] = raw
    block[100:108] = b"%07o\0" % mode
    block[108:116] = b"0000000\0"
    block[116:124] = b"0000000\0"
    block[124:136] = encode_number(size)
    block[136:148] = b"00000000000\0"
    block[156:157] = typeflag
    block[257:263] = b"ustar\0"
    block[263:265] = b"00"
    block[329:337] = b"0000000\0"
    block[337:345] = b"0000000\0"
    _set_checksum(block)
    return bytes(block)


def _padding(size: int) -> int:
    return -size % BLOCK


def _pax_records(data: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """(key, value, raw record) for each ``"<len> <key>=<value>\\n"`` record."""
    records, pos = [], 0
    while pos < len(data):
        if data[pos] == 0:  # some writers pad the record area with NULs
            break
        space = data.find(b" ", pos)
        if space == -1 or not data[pos:space].isdigit():
            raise TarError("corrupt PAX header: bad record length")
        length = int(data[pos:space])
        record = data[pos : pos + length]
        if length <= space - pos + 1 or len(record) != length or not record.endswith(b"\n") or b"=" not in record:
            raise TarError("corrupt PAX header: bad record")
        key, _, value = record[space - pos + 1 : -1].partition(b"=")
        records.append((key, value, record))
        pos += length
    return records


def _pax_record(key: bytes, value: bytes) -> bytes:
    body = len(key) + len(value) + 3
    length = body
    while True:
        total = body + len(str(length))
        if total == length:
            return b"%d %s=%s\n" % (length, key, value)
        length = total


# -- the walker -------------------------------------------------------------------------
class _Source:
    """Exact reads with the decompressed-size limit enforced as bytes arrive."""

    def __init__(self, src: BinaryIO, limit: int, reason: str = "the decompressed size limit") -> None:
        self._src = src
        self.reason = reason
        self.entry = ""  # the entry whose bytes are being read, for the error
        # Bulk content is taken as it comes (``read1``: no joining, and a source that
        # hands out views of its own blocks copies nothing).
        self._some: Callable[[int], bytes] = getattr(src, "read1", src.read)
        self.limit = limit
        self.offset = 0

    def read(self, n: int) -> bytes:
        data = self._src.read(n)
        if len(data) < n and data:
            parts = [data]
            got = len(data)
            while got < n:
                more = self._src.read(n - got)
                if not more:
                    break
                parts.append(more)
                got += len(more)
            data = b"".join(parts)
        self.offset += len(data)
        if self.offset > self.limit:
            self._over()
        return data

    def some(self, n: int) -> bytes:
        """Up to ``n`` bytes (at least one unless the stream ended)."""
        data = self._some(n)
        self.offset += len(data)
        if self.offset > self.limit:
            self._over()
        return data

    def _over(self) -> None:
        where = f" (reading {self.entry[:200]!r})" if self.entry else ""
        raise TarError(f"layer exceeds {self.reason}: more than {self.limit} bytes decompressed{where}")

    def exact(self, n: int, what: str) -> bytes:
        data = self.read(n)
        if len(data) != n:
            raise TarError(f"layer is truncated inside {what} at offset {self.offset}")
        return data


@dataclass
class _Pending:
    """Extended headers (PAX 'x', GNU 'L'/'K') waiting for the entry they describe."""

    parts: list[tuple[bytes, bytes, bytes]] = field(default_factory=list)  # (type, header, data+padding)
    pax: dict[bytes, bytes] = field(default_factory=dict)
    long_name: bytes | None = None
    long_link: bytes | None = None
    size: int = 0

    def raw(self) -> bytes:
        return b"".join(h + d for _, h, d in self.parts)


def _clean(raw: bytes, what: str) -> str:
    name = raw.decode("utf-8", "surrogateescape")
    if name.startswith("/"):
        raise TarError(f"absolute path in layer: {what} {name[:200]!r}")
    if ".." in name.split("/"):
        raise TarError(f"'..' in a layer path: {what} {name[:200]!r}")
    while name.startswith("./"):
        name = name[2:]
    return name.rstrip("/") if name not in ("", ".") else ""


class _Walker:
    def __init__(
        self,
        src: BinaryIO,
        limits: TarLimits,
        select: Callable[[str], bool],
        sink: Callable[[bytes], None] | None,
        seal: Callable[[str, int], Sealer] | None,
    ) -> None:
        self.src = _Source(src, limits.max_bytes, limits.max_bytes_reason)
        self.limits = limits
        self.select = select
        self.sink = sink
        self.seal = seal
        self.stats = RewriteStats()
        # A scan stops once the selected files it passed hold this many bytes (0: at the
        # first one); ``matched_bytes`` is their total so far.
        self.enough = 0
        self.matched_bytes = 0

    def emit(self, data: bytes) -> None:
        if self.sink is not None and data:
            self.stats.bytes_out += len(data)
            self.sink(data)

    def copy(self, size: int, what: str) -> None:
        while size:
            piece = self.src.some(min(size, PIECE))
            if not piece:
                raise TarError(f"layer is truncated inside {what} at offset {self.src.offset}")
            size -= len(piece)
            self.emit(piece)

    def skip(self, size: int, what: str) -> None:
        while size:
            piece = self.src.some(min(size, PIECE))
            if not piece:
                raise TarError(f"layer is truncated inside {what} at offset {self.src.offset}")
            size -= len(piece)

    def run(self, stop_at_match: bool) -> bool:
        """Walk to the end (or the first selected file when ``stop_at_match``)."""
        pending = _Pending()
        found = False
        first = True
        while True:
            self.src.entry = ""
            block = self.src.read(BLOCK)
            if not block and first:
                return False  # an empty layer: a valid, empty tar
            first = False
            if len(block) != BLOCK:
                raise TarError(f"layer is truncated: no end-of-archive marker (offset {self.src.offset})")
            if block == b"\0" * BLOCK:
                if pending.parts:
                    raise TarError("corrupt tar: extended header without an entry")
                self.emit(block)
                # End of archive: everything after it (the second zero block, record
                # padding) is copied as it is.
                while rest := self.src.some(PIECE):
                    self.emit(rest)
                self.stats.bytes_in = self.src.offset
                return found
            self._check_header(block)
            self.stats.entries += 1
            if self.stats.entries > self.limits.max_entries:
                raise TarError(f"layer has more than {self.limits.max_entries} entries")
            typeflag = block[156:157]
            size = _parse_number(block[124:136], "size")
            if size < 0:
                raise TarError("corrupt tar header: negative size")
            if typeflag in (b"x", b"L", b"K"):
                pending.size += size
                if pending.size > self.limits.max_header_bytes:
                    raise TarError(f"extended tar header over {self.limits.max_header_bytes} bytes")
                data = self.src.exact(size + _padding(size), "an extended header")
                payload = data[:size]
                if typeflag == b"x":
                    for key, value, _ in _pax_records(payload):
                        pending.pax[key] = value
                elif typeflag == b"L":
                    pending.long_name = payload.split(b"\0", 1)[0]
                else:
                    pending.long_link = payload.split(b"\0", 1)[0]
                pending.parts.append((typeflag, block, data))
                continue
            if typeflag == b"g":  # global PAX header: applies to what follows; copy it
                self.emit(block)
                self.copy(size + _padding(size), "a global header")
                continue
            if self._entry(block, typeflag, size, pending, stop_at_match):
                found = True
                if stop_at_match and self.matched_bytes >= self.enough:
                    return True
            pending = _Pending()

    def _check_header(self, block: bytes) -> None:
        stored = _parse_number(block[148:156], "checksum")
        if stored not in _checksums(block):
            raise TarError(f"corrupt tar header at offset {self.src.offset - BLOCK} (checksum mismatch)")

    def _entry(self, block: bytes, typeflag: bytes, size: int, pending: _Pending, stop_at_match: bool) -> bool:
        gnu = block[257:265] == b"ustar  \0"
        if b"path" in pending.pax:
            raw_name = pending.pax[b"path"]
        elif pending.long_name is not None:
            raw_name = pending.long_name
        else:
            raw_name = block[0:100].split(b"\0", 1)[0]
            prefix = block[345:500].split(b"\0", 1)[0]
            if prefix and block[257:263] == b"ustar\0" and not gnu:
                raw_name = prefix + b"/" + raw_name
        name = _clean(raw_name, "entry")
        self.src.entry = name
        if typeflag == b"1":
            link = pending.pax.get(b"linkpath", pending.long_link or block[157:257].split(b"\0", 1)[0])
            target = _clean(link, "hard link target")
            if self.select(name) and target not in self.stats.encrypted and self.sink is not None:
                self.stats.warnings.append(f"hard link {name} matches a model pattern but its target {target} "
                                           "was not encrypted in this layer")
        if b"size" in pending.pax:
            try:
                size = int(pending.pax[b"size"])
            except ValueError:
                raise TarError("corrupt PAX header: size is not a number") from None
        sparse = typeflag == b"S" or any(k.startswith(b"GNU.sparse.") for k in pending.pax)
        extension = b""
        if typeflag == b"S" and block[482]:
            # Old GNU sparse: more sparse-map blocks follow the header.
            blocks = []
            while True:
                ext = self.src.exact(BLOCK, "a sparse map")
                blocks.append(ext)
                if len(blocks) * BLOCK > self.limits.max_header_bytes:
                    raise TarError("sparse map over the header size limit")
                if not ext[504]:
                    break
            extension = b"".join(blocks)
        data_size = 0 if typeflag in _HEADER_ONLY else size
        base = posixpath.basename(name)
        wanted = (typeflag in _REGULAR or typeflag == b"S") and not base.startswith(".wh.") and bool(name) \
            and self.select(name)
        if wanted and sparse:
            raise TarError(f"model file {name} is a sparse tar entry; sparse model files are not supported")
        if not wanted:
            self.emit(pending.raw())
            self.emit(block)
            self.emit(extension)
            self.copy(data_size + _padding(data_size), name or "an entry")
            return False
        if self.sink is None:
            self.matched_bytes += data_size
            if not (stop_at_match and self.matched_bytes >= self.enough):
                self.skip(data_size + _padding(data_size), name)
            return True
        assert self.seal is not None
        sealer = self.seal(name, data_size)
        self._emit_pending_resized(pending, sealer.size)
        self.emit(_with_size(block, sealer.size))
        remaining = data_size
        while remaining:
            piece = self.src.some(min(remaining, PIECE))
            if not piece:
                raise TarError(f"layer is truncated inside {name} at offset {self.src.offset}")
            remaining -= len(piece)
            self.emit(sealer.update(piece))
        self.emit(sealer.finish())
        self.skip(_padding(data_size), name)
        self.emit(b"\0" * _padding(sealer.size))
        self.stats.encrypted.append(name)
        return True

    def _emit_pending_resized(self, pending: _Pending, new_size: int) -> None:
        for typeflag, header, data in pending.parts:
            if typeflag != b"x":
                self.emit(header + data)
                continue
            size = _parse_number(header[124:136], "size")
            records = _pax_records(data[:size])
            if not any(key == b"size" for key, _, _ in records):
                self.emit(header + data)
                continue
            payload = b"".join(
                _pax_record(key, str(new_size).encode()) if key == b"size" else raw for key, _, raw in records
            )
            self.emit(_with_size(header, len(payload)) + payload + b"\0" * _padding(len(payload)))


def scan_tar(src: BinaryIO, select: Callable[[str], bool], limits: TarLimits = TarLimits()) -> bool:
    """Whether any regular file in the tar matches ``select`` (stops at the first one).

    Validates every header passed on the way (checksums, paths, limits)."""
    return _Walker(src, limits, select, None, None).run(stop_at_match=True)


def measure_tar(src: BinaryIO, select: Callable[[str], bool], limits: TarLimits, enough: int) -> tuple[bool, int]:
    """Whether any regular file matches ``select``, and the matching files' total size,
    counted until it reaches ``enough`` (the walk stops there) or the tar ends."""
    walker = _Walker(src, limits, select, None, None)
    walker.enough = enough
    found = walker.run(stop_at_match=True)
    return found, walker.matched_bytes


def rewrite_tar(
    src: BinaryIO,
    sink: Callable[[bytes], None],
    select: Callable[[str], bool],
    seal: Callable[[str, int], Sealer],
    limits: TarLimits = TarLimits(),
) -> RewriteStats:
    """Copy the tar to ``sink`` with every selected regular file sealed by ``seal``.

    ``sink`` gets bytes-like pieces (views of the source's blocks where it hands out
    views); none of them is reused or changed afterwards, so the sink may keep them."""
    walker = _Walker(src, limits, select, sink, seal)
    walker.run(stop_at_match=False)
    return walker.stats
