"""Where to run a fixed-resolution face detector on a frame so that every face of `min_face` pixels
or more is seen at a size the detector resolves.

A detector resolves faces whose side, in its own input pixels, lies within a measured range
(lo, hi). Downscaling a frame by `s` turns a face of F pixels into F*s input pixels, so the finest
scale needed is lo / min_face, and a pyramid of coarser scales, each `ratio` apart, covers faces up
to the whole frame. At each scale the frame is either fed whole (fully convolutional models take any
input size) or cut into overlapping input-sized tiles; the overlap holds the largest face that scale
is responsible for, so no face is cut in two in every tile.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    """A region of the frame and the scale at which it goes into the detector."""

    x: int
    y: int
    width: int
    height: int
    """Region of the frame, in frame pixels."""
    scale: float
    """Input pixels per frame pixel."""
    tensor_height: int
    tensor_width: int
    """Input tensor size; the scaled region fills its top-left corner, the rest is padding."""


def pyramid(height: int, width: int, size: int, face_range: tuple[float, float], min_face: int,
            ratio: float) -> list[float]:
    """Scales from the finest (faces of `min_face` become `lo` input pixels) to the coarsest (the
    whole frame in one `size` input), `ratio` apart."""
    lo, hi = face_range
    coarse = size / max(height, width)
    fine = lo / min_face
    if fine <= coarse:
        # Small frame: whole in one input, and faces of min_face are already large enough there.
        return [coarse]
    count = math.ceil(math.log(fine / coarse) / math.log(ratio) - 1e-9)
    # Spread the levels evenly between the two ends: each step <= ratio.
    return [fine * (coarse / fine) ** (i / count) for i in range(count + 1)]


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile offsets along one axis: as few tiles of `tile` as keep >= `overlap` between neighbours."""
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def search_windows(height: int, width: int, size: int, face_range: tuple[float, float], min_face: int,
                   resizable: bool, multiple: int = 16) -> list[Window]:
    """Windows covering a (height, width) frame for a detector of `size` x `size` input.

    `resizable`: the detector takes any input size (a multiple of `multiple`), so each scale is one
    window of the whole frame; otherwise each scale is tiled with `size` x `size` inputs.
    """
    lo, hi = face_range
    # A fully convolutional run has no tile borders: levels may be as far apart as the face range
    # allows (with 25% overlap between levels). Tiles need overlap for the largest face a level
    # handles, so their levels stay 2x apart to keep that overlap (2 * lo) small.
    ratio = hi / lo / 1.25 if resizable else min(2.0, hi / lo / 1.25)
    windows = []
    for scale in pyramid(height, width, size, face_range, min_face, ratio):
        if resizable:
            th = max(multiple, math.ceil(height * scale / multiple) * multiple)
            tw = max(multiple, math.ceil(width * scale / multiple) * multiple)
            windows.append(Window(0, 0, width, height, scale, th, tw))
            continue
        tile = size / scale  # frame pixels one input covers
        overlap = ratio * lo / scale
        for y in _starts(height, math.floor(tile), math.ceil(overlap)):
            for x in _starts(width, math.floor(tile), math.ceil(overlap)):
                windows.append(Window(x, y, min(width - x, math.floor(tile)), min(height - y, math.floor(tile)),
                                      scale, size, size))
    return windows
