"""Authenticated chunked encryption of one file (the "envelope"), format version 1.

Layout (all integers big-endian)::

    header (48 bytes)
      magic        8  b"ALGOMENC"
      version      1  1
      algorithm    1  1 = AES-256-GCM
      reserved     2  0
      chunk_size   4  plaintext bytes per chunk (the last chunk may be shorter)
      key_id      16  names the data key (the license file carries the same id)
      nonce_prefix 8  random per file, or derived (see below)
      plain_size   8  total plaintext bytes
    chunks: ciphertext || 16-byte tag, one per chunk; an empty file has one empty chunk

Chunk ``i`` is sealed with nonce ``nonce_prefix || i`` (4 bytes) and associated data
``header || final`` where ``final`` is ``b"\\x01"`` for the last chunk and ``b"\\x00"``
otherwise. So a changed header, a reordered, dropped, duplicated or altered chunk, a
truncated file and bytes appended after the last chunk all fail authentication.
Encryption and decryption stream one chunk at a time: memory does not grow with the file.

Derived nonce prefixes (``derived_nonce_prefix``, ``deterministic_sealer``) make sealing
deterministic, so a layer can be sealed again, byte for byte, on every pull instead of
being stored. The prefix is HMAC-SHA256(data key, label || context || ordinal) cut to 8
bytes. GCM is only broken by one (key, nonce) sealing two different plaintexts, and that
cannot happen here: the data key is fresh per licensed image, the context names the exact
source layer (its digest) plus the chunk size, file name and size, and the ordinal is the
file's position in that layer's walk, so a (key, nonce prefix) pair only ever seals the
same plaintext again, giving the same ciphertext (deterministic encryption of identical
input, which reveals nothing new). Distinct files get pseudo-random prefixes, distinct
with the same birthday bound as random ones. The one rule for callers: a key's derived
prefixes seal one image's layers with one file selection (the key is per licensed image).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import os
import struct
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "DEFAULT_CHUNK",
    "HEADER_SIZE",
    "MAGIC",
    "EnvelopeError",
    "EnvelopeHeader",
    "Encryptor",
    "Decryptor",
    "NONCE_PREFIX_SIZE",
    "derived_nonce_prefix",
    "deterministic_sealer",
    "encrypted_size",
    "is_envelope",
    "encrypt_stream",
    "decrypt_stream",
]

MAGIC = b"ALGOMENC"
VERSION = 1
ALG_AES256_GCM = 1
DEFAULT_CHUNK = 64 * 1024
MAX_CHUNK = 16 * 1024 * 1024
TAG_SIZE = 16
KEY_ID_SIZE = 16
NONCE_PREFIX_SIZE = 8
_NONCE_LABEL = b"algomint-envelope-nonce/1\0"
_HEADER = struct.Struct(">8sBBHI16s8sQ")
HEADER_SIZE = _HEADER.size  # 48
_MAX_CHUNKS = 2**32
# cryptography >= 45 seals into a caller's buffer: one allocation per batch of chunks.
_HAS_ENCRYPT_INTO = hasattr(AESGCM, "encrypt_into")


class EnvelopeError(Exception):
    """Not an envelope, an unsupported version, or content that fails authentication."""


@dataclass(frozen=True)
class EnvelopeHeader:
    chunk_size: int
    key_id: bytes
    nonce_prefix: bytes
    plain_size: int

    def pack(self) -> bytes:
        return _HEADER.pack(MAGIC, VERSION, ALG_AES256_GCM, 0, self.chunk_size, self.key_id, self.nonce_prefix,
                            self.plain_size)

    @classmethod
    def unpack(cls, data: bytes) -> "EnvelopeHeader":
        if len(data) < HEADER_SIZE or not data.startswith(MAGIC):
            raise EnvelopeError("not an algomint encrypted file (bad magic)")
        magic, version, alg, _reserved, chunk, key_id, prefix, plain = _HEADER.unpack(data[:HEADER_SIZE])
        if version != VERSION:
            raise EnvelopeError(f"unsupported envelope version {version}")
        if alg != ALG_AES256_GCM:
            raise EnvelopeError(f"unsupported envelope algorithm {alg}")
        if not 0 < chunk <= MAX_CHUNK:
            raise EnvelopeError(f"invalid chunk size {chunk}")
        if _chunk_count(plain, chunk) > _MAX_CHUNKS:
            raise EnvelopeError("plaintext size too large for the chunk size")
        return cls(chunk, key_id, prefix, plain)

    @property
    def chunks(self) -> int:
        return _chunk_count(self.plain_size, self.chunk_size)


def _chunk_count(plain_size: int, chunk_size: int) -> int:
    return max(1, -(-plain_size // chunk_size))


def encrypted_size(plain_size: int, chunk_size: int = DEFAULT_CHUNK) -> int:
    """Exact envelope size for ``plain_size`` bytes (a tar header needs it up front)."""
    return HEADER_SIZE + plain_size + TAG_SIZE * _chunk_count(plain_size, chunk_size)


def is_envelope(prefix: bytes) -> bool:
    return prefix.startswith(MAGIC)


def _nonce(prefix: bytes, index: int) -> bytes:
    return prefix + index.to_bytes(4, "big")


def derived_nonce_prefix(key: bytes, context: bytes, ordinal: int) -> bytes:
    """The nonce prefix of the ``ordinal``-th file sealed under ``key`` in ``context``
    (see the module docstring for why a derived prefix is safe)."""
    if not 0 <= ordinal < 2**64:
        raise ValueError("ordinal out of range")
    message = _NONCE_LABEL + len(context).to_bytes(8, "big") + context + ordinal.to_bytes(8, "big")
    return hmac.new(key, message, hashlib.sha256).digest()[:NONCE_PREFIX_SIZE]


def deterministic_sealer(key: bytes, key_id: bytes, chunk_size: int, context: bytes
                         ) -> Callable[[str, int], "Encryptor"]:
    """A ``seal(name, size)`` factory numbering the files it seals in call order
    (0, 1, 2, ...): one pass over a layer seals to the same bytes every time. Create a
    fresh factory for every pass; ``context`` names the source layer (its digest)."""
    ordinals = itertools.count()

    def seal(name: str, size: int) -> Encryptor:
        # Chunk size, name and size are bound too: a prefix can never meet other plaintext
        # chunking, even if a caller reused a context.
        encoded = name.encode("utf-8", "surrogatepass")  # injective, never fails
        bound = (len(context).to_bytes(8, "big") + context + chunk_size.to_bytes(8, "big")
                 + len(encoded).to_bytes(8, "big") + encoded + size.to_bytes(8, "big"))
        prefix = derived_nonce_prefix(key, bound, next(ordinals))
        return Encryptor(key, key_id, size, chunk_size, nonce_prefix=prefix)

    return seal


class Encryptor:
    """Seal exactly ``plain_size`` bytes fed in any pieces; output comes chunk by chunk."""

    def __init__(self, key: bytes, key_id: bytes, plain_size: int, chunk_size: int = DEFAULT_CHUNK,
                 nonce_prefix: bytes | None = None) -> None:
        # ``nonce_prefix``: None for a random one; else a derived one (``derived_nonce_prefix``).
        if len(key) != 32:
            raise ValueError("data key must be 32 bytes")
        if len(key_id) != KEY_ID_SIZE:
            raise ValueError(f"key id must be {KEY_ID_SIZE} bytes")
        if not 0 < chunk_size <= MAX_CHUNK or plain_size < 0:
            raise ValueError("invalid chunk or plaintext size")
        if nonce_prefix is None:
            nonce_prefix = os.urandom(NONCE_PREFIX_SIZE)
        elif not isinstance(nonce_prefix, bytes) or len(nonce_prefix) != NONCE_PREFIX_SIZE:
            raise ValueError(f"nonce prefix must be {NONCE_PREFIX_SIZE} bytes")
        self.header = EnvelopeHeader(chunk_size, key_id, nonce_prefix, plain_size)
        self._packed = self.header.pack()
        self._aead = AESGCM(key)
        self._pending = bytearray()
        self._index = 0
        self._fed = 0
        self._started = False
        self._done = False

    @property
    def size(self) -> int:
        return encrypted_size(self.header.plain_size, self.header.chunk_size)

    def _seal(self, data: bytes | memoryview, final: bool) -> bytes:
        aad = self._packed + (b"\x01" if final else b"\x00")
        out = self._aead.encrypt(_nonce(self.header.nonce_prefix, self._index), data, aad)
        self._index += 1
        return out

    def update(self, data: bytes) -> bytes | bytearray:
        """Feed plaintext; returns the ciphertext of every chunk now complete."""
        if self._done:
            raise ValueError("encryptor already finished")
        self._fed += len(data)
        if self._fed > self.header.plain_size:
            raise ValueError("more plaintext than declared")
        header = b"" if self._started else self._packed
        self._started = True
        chunk = self.header.chunk_size
        view = memoryview(data)
        head: bytes | None = None  # the chunk left pending by the last call, now complete
        if self._pending:
            take = min(len(view), chunk - len(self._pending))
            self._pending += view[:take]
            view = view[take:]
            if len(self._pending) == chunk and (view or self._fed < self.header.plain_size):
                head = bytes(self._pending)
                self._pending.clear()
        # Whole chunks straight from the caller's buffer into one output buffer; the last
        # one is kept back until we know whether it is the final chunk.
        whole = len(view) // chunk
        if whole and len(view) == whole * chunk and self._fed == self.header.plain_size:
            whole -= 1
        sealed = self._seal_many(head, view[: whole * chunk], whole)
        self._pending += view[whole * chunk :]
        return header + sealed if header else sealed

    def _seal_many(self, head: bytes | None, view: memoryview, count: int) -> bytes | bytearray:
        """Seal ``head`` (a whole chunk, if any) and ``count`` whole chunks of ``view``
        into one buffer: input that is not chunk-aligned costs no extra copy."""
        chunk = self.header.chunk_size
        aad = self._packed + b"\x00"
        pieces = ([head] if head is not None else []) + [view[i * chunk : (i + 1) * chunk] for i in range(count)]
        if not pieces:
            return b""
        if not _HAS_ENCRYPT_INTO:
            return b"".join(self._seal(piece, False) for piece in pieces)
        buf = bytearray(len(pieces) * (chunk + TAG_SIZE))
        target = memoryview(buf)
        prefix = self.header.nonce_prefix
        for i, piece in enumerate(pieces):
            self._aead.encrypt_into(_nonce(prefix, self._index), piece, aad,
                                    target[i * (chunk + TAG_SIZE) : (i + 1) * (chunk + TAG_SIZE)])
            self._index += 1
        return buf

    def finish(self) -> bytes:
        """Seal the final chunk; the plaintext fed must equal the declared size."""
        if self._fed != self.header.plain_size:
            raise ValueError(f"plaintext was {self._fed} bytes, declared {self.header.plain_size}")
        out = b"" if self._started else self._packed
        self._started = True
        out += self._seal(bytes(self._pending), True)
        self._pending.clear()
        self._done = True
        return out


class Decryptor:
    """Open an envelope fed in any pieces; raises ``EnvelopeError`` on any tampering."""

    def __init__(self, keys: dict[bytes, bytes] | bytes, key_id: bytes | None = None) -> None:
        # ``keys``: key id -> data key, or one key (then ``key_id`` may pin its id).
        self._keys = keys if isinstance(keys, dict) else {key_id: keys} if key_id else {None: keys}
        self._buffer = bytearray()
        self.header: EnvelopeHeader | None = None
        self._packed = b""
        self._aead: AESGCM | None = None
        self._index = 0
        self._done = False

    def _start(self) -> None:
        header = EnvelopeHeader.unpack(bytes(self._buffer[:HEADER_SIZE]))
        key = self._keys.get(header.key_id, self._keys.get(None))  # type: ignore[arg-type]
        if key is None:
            raise EnvelopeError(f"no license key for key id {header.key_id.hex()}")
        self.header, self._packed, self._aead = header, bytes(self._buffer[:HEADER_SIZE]), AESGCM(key)
        del self._buffer[:HEADER_SIZE]

    def _open(self, sealed: bytes, final: bool) -> bytes:
        assert self.header is not None and self._aead is not None
        aad = self._packed + (b"\x01" if final else b"\x00")
        try:
            out = self._aead.decrypt(_nonce(self.header.nonce_prefix, self._index), sealed, aad)
        except InvalidTag:
            raise EnvelopeError(f"chunk {self._index} failed authentication (tampered, reordered or wrong key)") from None
        self._index += 1
        return out

    def update(self, data: bytes) -> bytes:
        if self._done and data:
            raise EnvelopeError("data after the final chunk")
        self._buffer += data
        if self.header is None:
            if len(self._buffer) < HEADER_SIZE:
                return b""
            self._start()
        assert self.header is not None
        out = bytearray()
        sealed = self.header.chunk_size + TAG_SIZE
        while not self._done and self._index < self.header.chunks - 1 and len(self._buffer) >= sealed:
            out += self._open(bytes(self._buffer[:sealed]), False)
            del self._buffer[:sealed]
        if not self._done and self._index == self.header.chunks - 1:
            last = self.header.plain_size - self._index * self.header.chunk_size + TAG_SIZE
            if len(self._buffer) >= last:
                out += self._open(bytes(self._buffer[:last]), True)
                del self._buffer[:last]
                self._done = True
        if self._done and self._buffer:
            raise EnvelopeError("data after the final chunk")
        return bytes(out)

    def finish(self) -> None:
        if self.header is None:
            raise EnvelopeError("truncated: incomplete header")
        if not self._done:
            raise EnvelopeError(f"truncated: {self.header.chunks - self._index} chunk(s) missing")


def encrypt_stream(src: BinaryIO, dst: BinaryIO, key: bytes, key_id: bytes, plain_size: int,
                   chunk_size: int = DEFAULT_CHUNK) -> int:
    """Encrypt ``plain_size`` bytes of ``src`` into ``dst``; returns bytes written."""
    enc = Encryptor(key, key_id, plain_size, chunk_size)
    written = 0
    remaining = plain_size
    while remaining:
        piece = src.read(min(remaining, 1024 * 1024))
        if not piece:
            raise EnvelopeError("source ended before the declared size")
        remaining -= len(piece)
        out = enc.update(piece)
        dst.write(out)
        written += len(out)
    out = enc.finish()
    dst.write(out)
    return written + len(out)


def _read_pieces(src: BinaryIO, size: int = 1024 * 1024) -> Iterator[bytes]:
    while piece := src.read(size):
        yield piece


def decrypt_stream(src: BinaryIO, dst: BinaryIO, keys: dict[bytes, bytes] | bytes) -> int:
    """Decrypt an envelope from ``src`` into ``dst``; returns plaintext bytes written."""
    dec = Decryptor(keys)
    written = 0
    for piece in _read_pieces(src):
        out = dec.update(piece)
        dst.write(out)
        written += len(out)
    dec.finish()
    return written
