"""vidvlm: vision-language models over video.

An image is a video of one frame: every model takes ``[B, T, 3, H, W]`` and is exact at ``T = 1``.
The public API is imported lazily so that ``import vidvlm`` stays cheap and never touches optional
backends (xformers, decord) until they are used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from vidvlm.errors import CheckpointError, ConfigError, VideoDecodeError, VidVLMError

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "open_video": "vidvlm.data.video",
    "Video": "vidvlm.data.video",
    "VideoMetadata": "vidvlm.data.video",
}

__all__ = ["VidVLMError", "VideoDecodeError", "ConfigError", "CheckpointError", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vidvlm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover
    from vidvlm.data.video import Video, VideoMetadata, open_video  # noqa: F401
