"""Frames from images, folders, video files, USB cameras, RTSP streams and the Raspberry Pi camera.

A source is named by a string: a file or folder path, a camera index (`0`) or device
(`/dev/video0`), a stream URL (`rtsp://...`), or `picamera` for the Pi camera module.
"""
from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fer_edge.edge_runtime.errors import SourceError

log = logging.getLogger(__name__)

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
    if is_camera(source) or not Path(source).is_file():  # opening a fifo would wait for a writer
        return None, None
    if is_image(source):
        return 1, None
    import cv2

    capture = cv2.VideoCapture(source)
    count, fps = (capture.get(cv2.CAP_PROP_FRAME_COUNT), capture.get(cv2.CAP_PROP_FPS)) if capture.isOpened() else (0, 0)
    capture.release()
    return int(count) or None, fps or None


def _check_header(source: str, max_pixels: int | None) -> None:
    """Apply the `max_pixels` cap to an image file's header, before anything is decoded."""
    from PIL import Image, UnidentifiedImageError

    if not max_pixels:
        return
    try:
        with warnings.catch_warnings():  # Pillow warns about large images; the cap here is the caller's
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                check_frame_size(source, *image.size, max_pixels)
    except Image.DecompressionBombError:  # Pillow refuses, without its size, a header above twice its own limit
        if max_pixels < 2 * Image.MAX_IMAGE_PIXELS:
            raise SourceError(f"{source}: more than {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels, larger than "
                              f"the cap of {max_pixels / 1e6:.1f} megapixels (max_frame_pixels)") from None
    except (UnidentifiedImageError, OSError, ValueError):  # a format Pillow does not know: checked once decoded
        pass


def check_frame_size(source: str, width: int, height: int, max_pixels: int | None) -> None:
    """SourceError naming the source when a width x height frame is above the `max_pixels` cap."""
    if max_pixels and width * height > max_pixels:
        raise SourceError(f"{source}: {width}x{height} frame ({width * height / 1e6:.1f} megapixels) is larger "
                          f"than the cap of {max_pixels / 1e6:.1f} megapixels (max_frame_pixels)")


def _read_image(source: str, max_pixels: int | None) -> np.ndarray:
    import cv2

    _check_header(source, max_pixels)  # the decoded frame is what would exhaust the memory
    try:
        image = cv2.imread(source, cv2.IMREAD_COLOR)
    except cv2.error as error:  # e.g. above OpenCV's own pixel limit, with no cap or a header Pillow cannot read
        raise SourceError(f"cannot decode image {source} ({' '.join(str(error).split())[-120:]})") from None
    if image is None:
        raise SourceError(f"cannot read image {source}: OpenCV cannot decode its format or sample type")
    check_frame_size(source, image.shape[1], image.shape[0], max_pixels)
    # libjpeg decodes a truncated JPEG with a gray lower part and a warning that names no file.
    with open(source, "rb") as f:
        head = f.read(2)
        f.seek(max(0, f.seek(0, 2) - 1024))
        if head == b"\xff\xd8" and b"\xff\xd9" not in f.read():
            log.warning(f"{source}: JPEG data ends early (truncated file?); its lower part decodes as gray")
    return image


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


# Open and read waits on a stream URL (s): FFmpeg's own are 30 s to open and unbounded to read.
STREAM_TIMEOUTS_S = (5.0, 5.0)


def _capture_frames(source: str, max_pixels: int | None = None,
                    stream_timeouts_s: tuple[float, float] | None = None) -> Iterator[np.ndarray]:
    import cv2

    started = time.monotonic()
    if stream_timeouts_s and "://" in source:
        # FFmpeg's own waits are unbounded for a camera that accepts and never answers.
        open_s, read_s = stream_timeouts_s
        capture = cv2.VideoCapture(source, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(open_s * 1000),
                                                            cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(read_s * 1000)])
    else:
        capture = cv2.VideoCapture(int(source) if source.isdigit() else source)
    if not capture.isOpened():
        if stream_timeouts_s and "://" in source:
            # A hung camera uses up the open timeout; a refused connection or a scheme FFmpeg does
            # not read (foo://) fails at once.
            waited = time.monotonic() - started >= 0.8 * stream_timeouts_s[0]
            raise SourceError(f"cannot open {source}" + (f" within {stream_timeouts_s[0]:g} s" if waited else
                                                         ": refused, or not a stream FFmpeg can read"))
        raise SourceError(f"cannot open {source}")
    try:
        check_frame_size(source, int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
                         int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)), max_pixels)
        announced = 0 if is_camera(source) else int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        ok, frame = capture.read()
        if not ok:
            raise SourceError(f"{source}: no frame could be read")
        read = 0
        while ok:
            check_frame_size(source, frame.shape[1], frame.shape[0], max_pixels)  # streams may change size
            yield frame
            read += 1
            ok, frame = capture.read()
        if read < announced:
            log.warning(f"{source}: ended after {read} of the {announced} frames its header announces "
                        "(truncated or damaged file?)")
        if stream_timeouts_s and "://" in source:
            raise SourceError(f"{source}: no frame for {stream_timeouts_s[1]:g} s or the stream closed")
    finally:
        capture.release()


def read_frames(source: str, max_pixels: int | None = None,
                stream_timeouts_s: tuple[float, float] = STREAM_TIMEOUTS_S) -> Iterator[np.ndarray]:
    """Yield the frames of one source (BGR, or gray for the Pi camera); SourceError if it cannot be read
    or a frame is larger than `max_pixels` (width x height; None: no cap).

    `stream_timeouts_s` (open, read) bound the waits on a stream URL (rtsp://, http://)."""
    if source == PICAMERA:
        yield from _picamera_frames()
    elif not is_camera(source) and not Path(source).is_file():
        # A fifo or other device blocks its reader in C, where not even SIGTERM reaches it.
        raise SourceError(f"{source}: not a regular file (a fifo, device or folder)" if Path(source).exists()
                          else f"no such file: {source}")
    elif is_image(source):
        yield _read_image(source, max_pixels)
    else:
        yield from _capture_frames(source, max_pixels, stream_timeouts_s)
