"""User-facing errors: the CLI prints any ConvplatError as one line on stderr and exits 2."""

from __future__ import annotations


class ConvplatError(Exception):
    """A mistake in what the user asked for (bad path, bad option, empty dataset)."""


class ConfigError(ConvplatError, ValueError):
    """A configuration value is out of range or inconsistent."""


class DatasetError(ConvplatError):
    """A dataset directory is missing, empty or in a layout we cannot read."""


class UnknownModelError(ConvplatError, ValueError):
    """A model name that is not in the registry."""


class ResourceError(ConvplatError):
    """The cluster lacks what was asked for (e.g. --gpus N with fewer GPUs)."""


class ImageDecodeError(Exception):
    """A file that cannot be used as an image; ``reason`` goes to rejected.jsonl.

    Not a ConvplatError: damaged files are recorded and skipped, never fatal.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
