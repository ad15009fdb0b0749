"""decord decoding, made safe by the PyAV frame index.

decord trusts the container header: it hangs in ``get_batch`` when asked for frames the header lists but the file
does not hold (dmlc/decord#373). So the PyAV index built at open decides how many frames exist and decord is never
asked for a position at or past that count. Whether decord applies the display matrix depends on the build (the
project reports it ignores it, dmlc/decord#24; the 0.6.0 wheel here applies it), so for a rotated video the reader
checks once, against PyAV's first frame, which orientation decord returns.
decord is imported here only, after torch (importing it first can freeze DataLoader workers, #251).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch  # noqa: F401 - must be imported before decord

from vidvlm.data._pyav import FrameIndex
from vidvlm.errors import VideoDecodeError


class DecordReader:
    """One decord ``VideoReader`` per output size, opened on first use, bounded to ``num_threads`` threads."""

    def __init__(
        self, path: str, index: FrameIndex, num_threads: int, reference: Callable[[], np.ndarray] | None = None
    ) -> None:
        """Prepares a reader; decord itself is imported and opened on the first :meth:`get`.

        Args:
            path: the video file.
            index: the PyAV frame index (the truth for frame count and rotation).
            num_threads: decord decoding threads.
            reference: returns frame 0 in display orientation, uint8 [H, W, 3] (PyAV); used once, for rotated videos.
        """
        self.path = path
        self.index = index
        self.num_threads = max(1, int(num_threads))
        self._reference = reference
        self._reader: Any = None
        self._reader_wh: tuple[int, int] | None = None
        self.rotates: bool | None = None if index.rotation else False  # does decord apply the display matrix?

    def _calibrate(self) -> None:
        """Finds out once whether decord returns display-oriented frames for this (rotated) video."""
        assert self._reference is not None, "a rotated video needs a reference frame"
        raw = self._open(None).get_batch([0]).asnumpy()[0]
        ref = self._reference()
        turned = np.rot90(raw, k=self.index.rotation // 90)

        def close(a: np.ndarray) -> bool:
            return a.shape == ref.shape and float(np.abs(a.astype(np.int16) - ref).mean()) < 8.0

        if close(raw):
            self.rotates = True
        elif close(turned):
            self.rotates = False
        else:
            raise VideoDecodeError(f"{self.path}: decord and PyAV disagree on frame 0; use backend='pyav'")

    def _open(self, stored_wh: tuple[int, int] | None) -> Any:
        if self._reader is not None and self._reader_wh == stored_wh:
            return self._reader
        try:
            import decord
        except ImportError as err:
            raise VideoDecodeError(f"{self.path}: backend 'decord' requested but decord is not installed") from err
        width, height = stored_wh if stored_wh is not None else (-1, -1)
        if self.rotates and self.index.rotation in (90, 270) and stored_wh is not None:
            width, height = height, width  # decord takes the size in display orientation when it rotates
        self._reader = None  # release the previous size's reader before opening another
        try:
            reader = decord.VideoReader(
                self.path, ctx=decord.cpu(0), width=width, height=height, num_threads=self.num_threads
            )
        except (decord.DECORDError, RuntimeError) as err:
            raise VideoDecodeError(f"{self.path}: decord cannot open the file ({err})") from err
        if len(reader) < len(self.index.pts):
            raise VideoDecodeError(
                f"{self.path}: decord lists {len(reader)} frames but {len(self.index.pts)} decode with PyAV; "
                "use backend='pyav' for this file"
            )
        self._reader, self._reader_wh = reader, stored_wh
        return reader

    def get(self, wanted: np.ndarray, stored_wh: tuple[int, int] | None) -> np.ndarray:
        """Decodes sorted unique positions ``wanted``; returns uint8 [U, h, w, 3] in stored orientation
        (the orientation PyAV decodes to, before the display rotation).

        Args:
            wanted: int64 [U], each below the PyAV-verified frame count.
            stored_wh: (width, height) to decode at, before rotation; None for native size.
        """
        assert wanted.size == 0 or int(wanted[-1]) < len(self.index.pts), "index past the verified frame count"
        if self.rotates is None:
            self._calibrate()
        reader = self._open(stored_wh)
        try:
            frames = reader.get_batch(wanted.tolist()).asnumpy()
        except Exception as err:  # decord raises its own DECORDError or RuntimeError from native code
            raise VideoDecodeError(f"{self.path}: decord failed to decode frames ({err})") from err
        # decord decodes ahead and keeps state between calls; seeking back to 0 releases that buffer (decord#197).
        reader.seek(0)
        if self.rotates:  # undo decord's rotation so that the caller's single rotation path applies to both backends
            frames = np.ascontiguousarray(np.rot90(frames, k=-(self.index.rotation // 90), axes=(1, 2)))
        return frames
