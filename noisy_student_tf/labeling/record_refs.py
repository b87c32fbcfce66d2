"""Records named by where they sit, so a pipeline can carry a number, not the record.

Filter/balance decides from three scalars per record (class, confidence,
key) and only the shard writer needs the record's bytes. Carrying the bytes
through every step made the pipeline's host memory grow by ~10 KB per input
record under the DirectRunner, which holds whole PCollections in memory
(benchmarks/scale.py, issue 9). A reference is one int: the input file's
index in the run's file list and the byte offset of the record's frame in
that file. The writer reads the few records of its shard back by seek.

TFRecord framing (tensorflow/core/lib/io/record_writer.cc): uint64 length,
uint32 masked CRC-32C of the length, the data, uint32 masked CRC-32C of the
data, all little endian; so the next record starts 16 + length bytes later.
The length CRC is checked on every frame, which catches a wrong offset or a
file rewritten since it was scanned. The data CRC is not (a pure-Python
CRC over every image costs more than the rest of the pipeline; the
reader in data/records.py does not check it either).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator

import tensorflow as tf

HEADER_BYTES = 12  # uint64 length + uint32 length CRC (record_writer.cc)
FOOTER_BYTES = 4  # uint32 data CRC (record_writer.cc)
OFFSET_BITS = 40  # a reference holds offsets below 1 TiB; the file index goes above
_CRC_MASK_DELTA = 0xA282EAD8  # the masking constant of tensorflow/core/lib/hash/crc32c.h
_CRC32C_POLY = 0x82F63B78  # Castagnoli polynomial, bit-reflected (RFC 3720, B.4)


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (_CRC32C_POLY if crc & 1 else 0)
        table.append(crc)
    return table


_TABLE = _crc_table()


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC-32C; plain Python, meant for 8-byte length fields."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + _CRC_MASK_DELTA) & 0xFFFFFFFF


def make_ref(file_index: int, offset: int) -> int:
    """(file index, byte offset) -> one int, the compact form pipelines carry."""
    if not 0 <= offset < 1 << OFFSET_BITS:
        raise ValueError(f"record offset {offset} is outside [0, 2**{OFFSET_BITS})")
    return (file_index << OFFSET_BITS) | offset


def split_ref(ref: int) -> tuple[int, int]:
    """The inverse of `make_ref`: (file index, byte offset)."""
    return ref >> OFFSET_BITS, ref & ((1 << OFFSET_BITS) - 1)


def _read_frame(f, path: str, offset: int, what: str) -> bytes | None:
    """The data of the frame at the handle's position; None at a clean end of file."""
    header = f.read(HEADER_BYTES)
    if not header:
        return None
    if len(header) < HEADER_BYTES:
        raise OSError(
            f"TFRecord file {path!r} is truncated: {what} at byte {offset} has a "
            f"{len(header)}-byte header (expected {HEADER_BYTES})"
        )
    length, length_crc = struct.unpack("<QI", header)
    if masked_crc32c(header[:8]) != length_crc:
        raise OSError(
            f"TFRecord file {path!r}: {what} at byte {offset} has a bad length checksum "
            "(not a record boundary, or the file changed since it was scanned)"
        )
    body = f.read(length + FOOTER_BYTES)
    if len(body) < length + FOOTER_BYTES:
        raise OSError(
            f"TFRecord file {path!r} is truncated: {what} at byte {offset} "
            f"needs {length + FOOTER_BYTES} bytes, {len(body)} remain"
        )
    return body[:length]


def read_with_offsets(path: str) -> Iterator[tuple[int, bytes]]:
    """Yields (byte offset, data) for each record of one TFRecord file, in order.

    Raises:
      FileNotFoundError: the file does not exist.
      OSError: the file ends inside a record or a length checksum is wrong;
        the message names the file, the record index and its offset.
    """
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"TFRecord file {path!r} does not exist")
    with tf.io.gfile.GFile(path, "rb") as f:
        offset, index = 0, 0
        while True:
            data = _read_frame(f, path, offset, f"record {index}")
            if data is None:
                return
            yield offset, data
            offset += HEADER_BYTES + len(data) + FOOTER_BYTES
            index += 1


def read_refs(paths: list[str], refs: Iterable[int]) -> dict[int, bytes]:
    """Reads the records named by `refs` (duplicates read once), file by file in offset order.

    Memory is that of the records asked for, so callers ask for one output
    shard's worth at a time.

    Raises:
      OSError: a reference does not point at a whole record with a valid
        length checksum; the message names the file and offset.
    """
    by_file: dict[int, list[int]] = {}
    for ref in set(refs):
        file_index, offset = split_ref(ref)
        by_file.setdefault(file_index, []).append(offset)
    found = {}
    for file_index in sorted(by_file):
        path = paths[file_index]
        with tf.io.gfile.GFile(path, "rb") as f:
            for offset in sorted(by_file[file_index]):
                f.seek(offset)
                data = _read_frame(f, path, offset, "the record")
                if data is None:
                    raise OSError(f"TFRecord file {path!r} has no record at byte {offset}")
                found[make_ref(file_index, offset)] = data
    return found
