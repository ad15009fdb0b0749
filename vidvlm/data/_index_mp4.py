"""The packets of an MP4/MOV video track read from its sample table, without demuxing every packet.

An MP4 lists every sample in its ``moov`` box: decode-time deltas (``stts``), composition offsets (``ctts``, so
``pts = dts + offset``), sizes (``stsz``) and sync samples (``stss``). FFmpeg's demuxer turns exactly these tables into
packet timestamps, shifted by constants (edit-list start, negative-offset shift). Reading the tables costs about a
millisecond where demuxing a 10-minute video costs 100 ms. Nothing is trusted unread: the first packets and the whole
last GOP are demuxed and must match the tables packet for packet (timestamps, size, keyframe flag, duration, no
discard flag), which also fixes the two constants; any mismatch, any layout this reader does not understand (no
``moov``, fragments, several edits, compressed headers) returns None and the caller demuxes every packet.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import av
import numpy as np

FORMAT = "mov,mp4,m4a,3gp,3g2,mj2"
_HEAD_PACKETS = 64  # packets demuxed at the start to fix the timestamp constants


class _Unsupported(Exception):
    """A layout this reader does not handle: the caller falls back to demuxing."""


@dataclass(frozen=True)
class SampleTable:
    """One track's samples in decode order, with the timestamps FFmpeg's demuxer gives their packets.

    Attributes:
        pts: int64 [N], presentation times (stream time base).
        keyframes: bool [N], sync samples.
        durations: int64 [N], packet durations.
        end: the byte offset just past the sample that ends furthest into the file.
    """

    pts: np.ndarray
    keyframes: np.ndarray
    durations: np.ndarray
    end: int = 0


def read(path: str, container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> SampleTable | None:
    """The verified sample table of ``stream``, or None when it cannot be read and checked against real packets.

    Leaves the container positioned anywhere (the caller seeks before decoding).
    """
    if container.format.name != FORMAT or not stream.index_entries:
        return None
    try:
        with open(path, "rb") as f:
            tables = _track_tables(f, os.fstat(f.fileno()).st_size, stream.id)
    except (_Unsupported, OSError, struct.error, ValueError):
        return None
    if tables is None:
        return None
    deltas, offsets, sizes, sync, end = tables
    n = len(sizes)
    if n != len(stream.index_entries) or len(deltas) != n or (offsets is not None and len(offsets) != n):
        return None  # fragments, or an edit list that dropped samples: FFmpeg's index is not the table
    dts = np.concatenate([[0], np.cumsum(deltas[:-1])]).astype(np.int64)
    pts = dts + (offsets if offsets is not None else 0)
    keys = np.zeros(n, dtype=bool)
    if sync is None:
        keys[:] = True  # no stss: every sample is a sync sample
    else:
        if sync.size and (sync.min() < 1 or sync.max() > n):
            return None
        keys[sync - 1] = True
    table = SampleTable(pts, keys, deltas.astype(np.int64))
    try:
        shift = _check_head(container, stream, table, dts, sizes)
        if shift is None:
            return None
        if n > _HEAD_PACKETS and not _check_tail(container, stream, table, dts, sizes, shift):
            return None
    except av.error.FFmpegError:
        return None
    return SampleTable(pts + shift[0], keys, table.durations, end)


def _packets(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> Iterator[av.Packet]:
    for packet in container.demux(stream):
        if packet.size:  # not the flush packet
            yield packet


Container = av.container.InputContainer
Stream = av.video.stream.VideoStream
# (stts deltas [N], ctts offsets [N] or None, stsz sizes [N], stss sync sample numbers or None, end of the furthest
# sample in the file)
Tables = tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray | None, int]


def _matches(
    packet: av.Packet, i: int, table: SampleTable, dts: np.ndarray, sizes: np.ndarray, shift: tuple[int, int]
) -> bool:
    return (
        not packet.is_discard
        and not packet.is_corrupt
        and packet.pts is not None
        and packet.dts is not None
        and packet.pts == int(table.pts[i]) + shift[0]
        and packet.dts == int(dts[i]) + shift[1]
        and packet.size == int(sizes[i])
        and bool(packet.is_keyframe) == bool(table.keyframes[i])
        and int(packet.duration or 0) == int(table.durations[i])
    )


def _check_head(
    container: Container, stream: Stream, table: SampleTable, dts: np.ndarray, sizes: np.ndarray
) -> tuple[int, int] | None:
    """Demuxes the first packets; returns the (pts, dts) shifts FFmpeg applied, or None when they do not match.

    A track of at most ``_HEAD_PACKETS`` samples is demuxed to its end here: every packet must be the table's and
    none may follow, which is what the tail check would prove (short clips then cost one pass, not two).
    """
    container.seek(0, stream=stream, backward=True, any_frame=False)
    shift: tuple[int, int] | None = None
    n = len(sizes)
    whole = n <= _HEAD_PACKETS
    i = -1
    for i, packet in enumerate(_packets(container, stream)):
        if i == n and whole:
            return None  # a packet the table does not list
        if i == _HEAD_PACKETS:
            break
        if shift is None:
            if packet.pts is None or packet.dts is None:
                return None
            shift = (packet.pts - int(table.pts[0]), packet.dts - int(dts[0]))
        if not _matches(packet, i, table, dts, sizes, shift):
            return None
    if whole and i != n - 1:
        return None  # packets missing
    return shift


def _check_tail(
    container: Container, stream: Stream, table: SampleTable, dts: np.ndarray, sizes: np.ndarray, shift: tuple[int, int]
) -> bool:
    """Demuxes from the last sync sample to the end: every packet must be the table's, and none may be missing."""
    last_key = int(np.flatnonzero(table.keyframes)[-1])
    container.seek(int(table.pts[last_key]) + shift[0], stream=stream, backward=True, any_frame=False)
    i = None
    for packet in _packets(container, stream):
        if i is None:
            # The seek lands on the last sync sample or an earlier one: find which, by its decode time.
            hits = np.flatnonzero(dts + shift[1] == packet.dts) if packet.dts is not None else []
            if len(hits) != 1 or hits[0] > last_key:
                return False
            i = int(hits[0])
        if i >= len(sizes) or not _matches(packet, i, table, dts, sizes, shift):
            return False
        i += 1
    return i == len(sizes)


def _boxes(f: BinaryIO, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, box end) of each box in [start, end)."""
    pos = start
    while pos + 8 <= end:
        f.seek(pos)
        size, kind = struct.unpack(">I4s", f.read(8))
        header = 8
        if size == 1:
            (size,) = struct.unpack(">Q", f.read(8))
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise _Unsupported(f"box {kind!r} overruns its parent")
        yield kind, pos + header, pos + size
        pos += size


def _child(f: BinaryIO, start: int, end: int, kind: bytes) -> tuple[int, int] | None:
    for k, s, e in _boxes(f, start, end):
        if k == kind:
            return s, e
    return None


def _full_box(f: BinaryIO, start: int, end: int) -> tuple[int, bytes]:
    """(version, payload after version and flags) of a full box."""
    f.seek(start)
    data = f.read(end - start)
    if len(data) != end - start or len(data) < 4:
        raise _Unsupported("short box")
    return data[0], data[4:]


def _track_tables(f: BinaryIO, file_size: int, track_id: int) -> Tables | None:
    """The sample tables of the track whose ``tkhd`` id is ``track_id`` (FFmpeg's ``stream.id``), None without one."""
    moov = _child(f, 0, file_size, b"moov")
    if moov is None:
        return None
    for kind, s, e in _boxes(f, *moov):
        if kind == b"mvex":
            raise _Unsupported("fragmented file")
        if kind != b"trak":
            continue
        tkhd = _child(f, s, e, b"tkhd")
        if tkhd is None:
            continue
        version, body = _full_box(f, *tkhd)
        (tid,) = struct.unpack_from(">I", body, 16 if version == 1 else 8)
        if tid != track_id:
            continue
        edts = _child(f, s, e, b"edts")
        if edts is not None:
            elst = _child(f, *edts, b"elst")
            if elst is not None and struct.unpack_from(">I", _full_box(f, *elst)[1])[0] > 1:
                raise _Unsupported("several edits")
        stbl = s, e
        for path in (b"mdia", b"minf", b"stbl"):
            stbl = _child(f, *stbl, path)
            if stbl is None:
                raise _Unsupported(f"no {path!r}")
        return _sample_tables(f, stbl)
    return None


def _sample_tables(f: BinaryIO, stbl: tuple[int, int]) -> Tables:
    boxes = {k: (s, e) for k, s, e in _boxes(f, *stbl)}
    if b"stts" not in boxes or b"stsz" not in boxes:
        raise _Unsupported("no stts or stsz")
    _, body = _full_box(f, *boxes[b"stsz"])
    fixed, count = struct.unpack_from(">II", body)
    sizes = np.full(count, fixed, np.int64) if fixed else np.frombuffer(body, ">u4", count, 8).astype(np.int64)
    deltas = _runs(f, boxes[b"stts"], ">u4")
    offsets = _runs(f, boxes[b"ctts"], ">i4") if b"ctts" in boxes else None  # FFmpeg reads offsets as signed
    sync = None
    if b"stss" in boxes:
        _, body = _full_box(f, *boxes[b"stss"])
        (n,) = struct.unpack_from(">I", body)
        sync = np.frombuffer(body, ">u4", n, 4).astype(np.int64)
    return deltas, offsets, sizes, sync, _data_end(f, boxes, sizes)


def _data_end(f: BinaryIO, boxes: dict[bytes, tuple[int, int]], sizes: np.ndarray) -> int:
    """Where the furthest sample ends: chunk offsets (stco/co64) plus the sizes of the samples each chunk holds."""
    offsets_box, kind = (boxes[b"co64"], ">u8") if b"co64" in boxes else (boxes.get(b"stco"), ">u4")
    if offsets_box is None or b"stsc" not in boxes:
        raise _Unsupported("no chunk table")
    _, body = _full_box(f, *offsets_box)
    (n,) = struct.unpack_from(">I", body)
    chunk_offsets = np.frombuffer(body, kind, n, 4).astype(np.int64)
    _, body = _full_box(f, *boxes[b"stsc"])
    (m,) = struct.unpack_from(">I", body)
    stsc = np.frombuffer(body, np.dtype([("first", ">u4"), ("per_chunk", ">u4"), ("desc", ">u4")]), m, 4)
    first = stsc["first"].astype(np.int64)
    if m == 0 or first[0] != 1 or np.any(np.diff(first) <= 0):
        raise _Unsupported("odd stsc")
    # samples in chunk c (1-based): per_chunk of the last stsc entry whose first chunk <= c
    entry = np.searchsorted(first, np.arange(1, n + 1), side="right") - 1
    per_chunk = stsc["per_chunk"].astype(np.int64)[entry]
    if per_chunk.sum() != len(sizes):
        raise _Unsupported("stsc and stsz disagree")
    used = per_chunk > 0
    starts = (np.cumsum(per_chunk) - per_chunk)[used]
    chunk_bytes = np.add.reduceat(sizes, starts) if starts.size else np.zeros(0, np.int64)
    return int((chunk_offsets[used] + chunk_bytes).max()) if starts.size else 0


def _runs(f: BinaryIO, box: tuple[int, int], value_type: str) -> np.ndarray:
    """Expands a (sample_count, value) run-length table (stts, ctts) to one int64 per sample."""
    _, body = _full_box(f, *box)
    (n,) = struct.unpack_from(">I", body)
    pairs = np.frombuffer(body, np.dtype([("count", ">u4"), ("value", value_type)]), n, 4)
    return np.repeat(pairs["value"].astype(np.int64), pairs["count"].astype(np.int64))
