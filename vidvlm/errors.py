"""The exceptions vidvlm raises for bad input.

Every error a user can cause is a :class:`VidVLMError`; its message names the file or key at fault and the reason.
They subclass :class:`ValueError` so that code written against plain Python conventions still catches them.
"""

from __future__ import annotations


class VidVLMError(ValueError):
    """Base class of every user-facing vidvlm error."""


class VideoDecodeError(VidVLMError):
    """A video or image could not be opened or decoded: missing, empty, corrupt, no video stream, bad indices."""


class ConfigError(VidVLMError):
    """A configuration file or override is invalid: unknown key, wrong type, missing value."""


class CheckpointError(VidVLMError):
    """A checkpoint directory is missing files, holds unexpected tensors, or is in an unsafe format."""
