"""Errors of the numeric core."""

from __future__ import annotations


class ModelError(Exception):
    """Base class of every error raised by model/."""


class RefusedUpdate(ModelError):
    """A learning step was refused because some weight would have become non-finite.

    The network's weights and optimiser state are exactly as they were before the step.
    """


class FormatError(ModelError, ValueError):
    """Serialised bytes are malformed: truncated, padded, wrong version or wrong shape."""
