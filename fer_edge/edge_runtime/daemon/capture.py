"""The capture thread: reads a source, keeps only the newest frame, reopens lost sources.

Live sources (cameras, streams) must be read continuously or their drivers buffer stale frames,
so the thread reads at the source's pace and a frame the pipeline had no time for is replaced
(and counted as dropped); memory stays at one frame. A video file is played at its own frame rate
(`pace`) and optionally looped; unpaced, nothing is dropped: the thread waits for the pipeline.
Streams are opened with open and read timeouts, so a dead or hung IP camera is reported lost
within seconds instead of blocking a read forever; a video file that cannot be read is not
retried like a camera that may come back.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Generator

import numpy as np

from fer_edge.edge_runtime import sources
from fer_edge.edge_runtime.daemon.config import ConfigError, SourceConfig
from fer_edge.edge_runtime.daemon.metrics import DaemonMetrics
from fer_edge.edge_runtime.errors import SourceError

log = logging.getLogger(__name__)

STARTING, OK, LOST, ENDED, FAILED = "starting", "ok", "lost", "ended", "failed"


def check_source(uri: str) -> None:
    """Refuse, at start, a source that can never work (a missing, still-image or undecodable file)."""
    if sources.is_camera(uri):
        return
    if not Path(uri).is_file():
        raise ConfigError(f"source.uri: no such file, camera or stream: {uri!r}")
    if sources.is_image(uri):
        raise ConfigError(f"source.uri: {uri!r} is a still image; the daemon needs a camera, stream or video")
    frames = sources.read_frames(uri)
    try:
        next(frames)
    except (SourceError, StopIteration):
        raise ConfigError(f"source.uri: {uri!r} is not a video that can be decoded (no frame could be read)") from None
    finally:
        frames.close()


def video_fps(uri: str) -> float:
    """A video file's own frame rate (25 when the container does not say)."""
    import cv2

    capture = cv2.VideoCapture(uri)
    fps = capture.get(cv2.CAP_PROP_FPS) if capture.isOpened() else 0.0
    capture.release()
    return fps if 1.0 <= fps <= 240.0 else 25.0


@dataclass
class SourceStatus:
    state: str
    """`starting`, `ok` (delivering), `lost` (retrying with back-off), `ended` (a file finished) or
    `failed` (a file could not be read; not retried)."""
    error: str = ""
    since: float = 0.0
    """time.time() of the last state change."""


class FrameGrabber:
    """Owns the capture thread and the one-frame slot the pipeline takes frames from."""

    def __init__(self, config: SourceConfig, metrics: DaemonMetrics,
                 read_frames: Callable[[str], Generator[np.ndarray, None, None]] | None = None):
        self.config = config
        self.metrics = metrics
        self.live = sources.is_camera(config.uri)
        self._read_frames = read_frames or partial(
            sources.read_frames, max_pixels=config.max_frame_pixels or None,
            stream_timeouts_s=(config.open_timeout_s, config.read_timeout_s))
        self._pace = 0.0 if self.live or not config.pace else 1.0 / video_fps(config.uri)
        # An unpaced file is a batch job: wait for the pipeline instead of dropping frames.
        self._wait_for_consumer = not self.live and not config.pace
        self._cond = threading.Condition()
        self._frame: np.ndarray | None = None
        self._seq = 0
        self._taken = 0
        self._stopping = threading.Event()
        self.status = SourceStatus(STARTING, since=time.time())
        # State changes, oldest first, for the daemon to turn into events: a short loss between
        # two polls is still reported, with the error that caused it. Bounded: it is drained often.
        self.changes: deque[SourceStatus] = deque(maxlen=32)
        self.last_frame_at: float | None = None
        """time.monotonic() of the newest frame."""
        self._thread = threading.Thread(target=self._run, name="fer-edge-capture", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 0.5) -> None:
        """Ask the thread to stop and wait a little; a read blocked in a driver must not hold up exit."""
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout)

    def take(self, after: int, timeout: float) -> tuple[int, np.ndarray] | None:
        """The newest frame if it is newer than sequence number `after` (and not discarded); None after
        `timeout` seconds."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._seq > max(after, self._taken) or self._stopping.is_set(),
                                       timeout):
                return None
            if self._seq <= max(after, self._taken):
                return None
            self._taken = self._seq
            self._cond.notify_all()
            return self._seq, self._frame

    def _set_status(self, state: str, error: str = "") -> None:
        if state != self.status.state or error != self.status.error:
            if state == LOST:
                self._discard_pending()
            if state != self.status.state:
                self.changes.append(SourceStatus(state, error, time.time()))
            self.status = SourceStatus(state, error, time.time())
            self.metrics.source_up.set(1 if state == OK else 0)
            (log.warning if state in (LOST, FAILED) else log.info)("source %s: %s%s", self.config.uri, state,
                                                         f" ({error})" if error else "")

    def _discard_pending(self) -> None:
        """Drop a frame not yet taken when the source is lost: processed after the loss is reported,
        it would start tracks that belong to the past (counted as dropped)."""
        with self._cond:
            if self._taken < self._seq:
                self._taken = self._seq
                self.metrics.frames_dropped.inc()
                self._cond.notify_all()

    def _offer(self, frame: np.ndarray) -> None:
        with self._cond:
            if self._wait_for_consumer:
                self._cond.wait_for(lambda: self._taken == self._seq or self._stopping.is_set())
            elif self._taken < self._seq:
                self.metrics.frames_dropped.inc()
            self._frame = frame
            self._seq += 1
            self.last_frame_at = time.monotonic()
            self._cond.notify_all()
        self.metrics.frames_captured.inc()

    def _run(self) -> None:
        delay = self.config.retry_min_s
        opened_before = False
        while not self._stopping.is_set():
            if opened_before:
                self.metrics.source_reconnects.inc()
            opened_before = True
            delivered, error = self._pump()
            if self._stopping.is_set():
                return
            if not self.live:
                if error is not None:  # a broken file stays broken: retrying would spin forever
                    self._set_status(FAILED, error)
                    return
                if not self.config.loop:
                    self._set_status(ENDED)
                    return
                continue  # loop the file: reopen at once
            self._set_status(LOST, error or "the stream ended")
            # Back-off restarts from its minimum once a source has delivered again.
            delay = self.config.retry_min_s if delivered else min(delay * 2, self.config.retry_max_s)
            self._stopping.wait(delay)

    def _pump(self) -> tuple[bool, str | None]:
        """Read one opening of the source to its end; return (delivered any frame, error or None)."""
        frames = self._read_frames(self.config.uri)
        delivered = False
        due = time.monotonic()
        try:
            for frame in frames:
                if self._stopping.is_set():
                    break
                delivered = True
                self._set_status(OK)
                self._offer(frame)
                if self._pace:
                    due = max(due + self._pace, time.monotonic() - self._pace)  # don't race to catch up
                    self._stopping.wait(due - time.monotonic())
        except SourceError as error:
            return delivered, str(error)
        except Exception as error:  # a driver or decoder failure must not kill the capture thread
            log.exception("source %s failed", self.config.uri)
            return delivered, f"{type(error).__name__}: {error}"
        finally:
            frames.close()
        return delivered, None
