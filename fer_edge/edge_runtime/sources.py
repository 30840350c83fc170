"""Frames from images, folders, video files, USB cameras, RTSP streams and the Raspberry Pi camera.

A source is named by a string: a file or folder path, a camera index (`0`) or device
(`/dev/video0`), a stream URL (`rtsp://...`), or `picamera` for the Pi camera module.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fer_edge.edge_runtime.errors import SourceError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg"}
PICAMERA = "picamera"


def is_camera(source: str) -> bool:
    """True for live sources that never end: camera indices, /dev/video*, stream URLs, the Pi camera."""
    return source.isdigit() or source.startswith("/dev/video") or "://" in source or source == PICAMERA


def is_image(source: str) -> bool:
    return Path(source).suffix.lower() in IMAGE_SUFFIXES


def expand(sources: list[str]) -> list[str]:
    """Replace each folder by the images and videos in it (sorted, not recursive)."""
    expanded = []
    for source in sources:
        path = Path(source)
        if not is_camera(source) and path.is_dir():
            expanded += sorted(str(p) for p in path.iterdir()
                               if p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES)
        else:
            expanded.append(source)
    return expanded


def probe(source: str) -> tuple[int | None, float | None]:
    """(frame count, frames per second) of a source; None where unknown (cameras, unreadable files)."""
    if is_camera(source):
        return None, None
    if is_image(source):
        return 1, None
    import cv2

    capture = cv2.VideoCapture(source)
    count, fps = (capture.get(cv2.CAP_PROP_FRAME_COUNT), capture.get(cv2.CAP_PROP_FPS)) if capture.isOpened() else (0, 0)
    capture.release()
    return int(count) or None, fps or None


def _picamera_frames(size: tuple[int, int] = (640, 480)) -> Iterator[np.ndarray]:
    try:
        from picamera2 import Picamera2
    except ImportError:
        raise SourceError("the Pi camera needs picamera2: `sudo apt install python3-picamera2`") from None
    camera = Picamera2()
    # The low-resolution YUV420 stream's first plane is already the grayscale image the pipeline needs.
    camera.configure(camera.create_video_configuration(main={"size": size}, lores={"size": size, "format": "YUV420"}))
    camera.start()
    try:
        while True:
            yield camera.capture_array("lores")[:size[1], :size[0]]
    finally:
        camera.stop()
        camera.close()


def _capture_frames(source: str, stream_timeouts_s: tuple[float, float] | None = None) -> Iterator[np.ndarray]:
    import cv2

    if stream_timeouts_s and "://" in source:
        # FFmpeg's own waits are unbounded for a camera that accepts and never answers.
        open_s, read_s = stream_timeouts_s
        capture = cv2.VideoCapture(source, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(open_s * 1000),
                                                            cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(read_s * 1000)])
    else:
        capture = cv2.VideoCapture(int(source) if source.isdigit() else source)
    if not capture.isOpened():
        raise SourceError(f"cannot open {source}" + (f" within {stream_timeouts_s[0]:g} s" if stream_timeouts_s
                                                     and "://" in source else ""))
    try:
        ok, frame = capture.read()
        if not ok:
            raise SourceError(f"{source}: no frame could be read")
        while ok:
            yield frame
            ok, frame = capture.read()
        if stream_timeouts_s and "://" in source:
            raise SourceError(f"{source}: no frame for {stream_timeouts_s[1]:g} s or the stream closed")
    finally:
        capture.release()


def read_frames(source: str, stream_timeouts_s: tuple[float, float] | None = None) -> Iterator[np.ndarray]:
    """Yield the frames of one source (BGR, or gray for the Pi camera); SourceError if it cannot be read.

    `stream_timeouts_s` (open, read) bound the waits on a stream URL (rtsp://, http://)."""
    if source == PICAMERA:
        yield from _picamera_frames()
    elif is_image(source):
        import cv2

        image = cv2.imread(source, cv2.IMREAD_COLOR)
        if image is None:
            raise SourceError(f"cannot read image {source}")
        yield image
    elif is_camera(source) or Path(source).is_file():
        yield from _capture_frames(source, stream_timeouts_s)
    else:
        raise SourceError(f"no such file: {source}")
