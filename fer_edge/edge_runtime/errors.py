"""Errors the edge runtime raises: each carries a one-line message a user can act on."""
from __future__ import annotations


from fer_edge.errors import FerEdgeError

__all__ = ["FerEdgeError", "RuntimeMissingError", "ModelError", "EdgeTpuUnavailableError", "SourceError"]


class RuntimeMissingError(FerEdgeError):
    """No TFLite interpreter package is installed."""


class ModelError(FerEdgeError):
    """A model file is missing, corrupt, fails its checksum or cannot be fed by this runtime."""


class EdgeTpuUnavailableError(FerEdgeError):
    """The Edge TPU delegate library or the Edge TPU device could not be loaded."""


class SourceError(FerEdgeError):
    """An image, video, camera or stream could not be opened or read."""
