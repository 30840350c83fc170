"""The daemon: capture -> pipeline -> tracking -> outputs, until stopped or a file ends."""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from fer_edge import __version__
from fer_edge.spec import NUM_CLASSES
from fer_edge.edge_runtime import calibration
from fer_edge.edge_runtime.classifier import ClassifierOptions, EmotionClassifier, file_sha256, resolve_model
from fer_edge.edge_runtime.daemon import discovery
from fer_edge.edge_runtime.daemon.capture import ENDED, FAILED, LOST, OK, FrameGrabber, check_source
from fer_edge.edge_runtime.daemon.config import ConfigError, DaemonConfig
from fer_edge.edge_runtime.daemon.http_server import HTTP_POLL_S, StatusServer, check_address
from fer_edge.edge_runtime.daemon.jsonl import JsonLinesWriter
from fer_edge.edge_runtime.daemon.metrics import DaemonMetrics
from fer_edge.edge_runtime.daemon.mqtt import MqttPublisher
from fer_edge.edge_runtime.daemon.tracking import EmotionShares, FaceTracker, dominant
from fer_edge.edge_runtime.errors import ModelError
from fer_edge.edge_runtime.pipeline import EmotionPipeline, PipelineOptions

log = logging.getLogger(__name__)

STAGES = ("detect", "preprocess", "classify", "total")
# How long the loop waits for a frame before it checks for a stop request and periodic output.
POLL_S = 0.2
# A stop request (SIGTERM) ends the process within STOP_BUDGET_S plus one frame in flight, by
# construction: the loop notices it within POLL_S, then each part gets a fixed share and nothing
# else waits (a capture read stuck in a driver and paho's thread are daemon threads).
CAPTURE_STOP_S = 0.3
MQTT_STOP_S = 0.6
STOP_BUDGET_S = POLL_S + CAPTURE_STOP_S + MQTT_STOP_S + HTTP_POLL_S


def model_path(config: DaemonConfig) -> Path:
    """The configured model (or the one shipped with fer-edge) and, when one is named, its stored
    calibration, checked without loading the model; ConfigError naming the key when missing."""
    try:
        model = resolve_model(config.model.path)
    except ModelError as error:
        raise ConfigError(f"model.path: {error} or set model.path") from None
    if config.model.calibration != calibration.NONE:
        try:
            calibration.load(model, config.model.calibration, file_sha256(model), NUM_CLASSES)
        except ModelError as error:
            raise ConfigError(f"model.calibration: {error}") from None
    return model


def _loading(key: str, build, *args, **kwargs):
    """build(*args, **kwargs), a model that does not load reported as a ConfigError naming `key`."""
    try:
        return build(*args, **kwargs)
    except ModelError as error:
        raise ConfigError(f"{key}: {error}") from None


def build_pipeline(config: DaemonConfig) -> EmotionPipeline:
    """The classifier and detector, loaded once for the daemon's lifetime."""
    classifier = _loading("model.path", EmotionClassifier, ClassifierOptions(
        model_path(config), num_threads=config.model.threads, device=config.model.device,
        fallback_cpu=config.model.fallback_cpu, verify_sha256=config.model.sha256 or None,
        tta=config.model.tta, calibration=config.model.calibration))
    return _loading("pipeline.detector_model", EmotionPipeline, classifier, options=PipelineOptions(
        detector=config.pipeline.detector, detector_model=config.pipeline.detector_model or None,
        min_face=config.pipeline.min_face, turned_search=config.pipeline.turned_search, align=config.pipeline.align,
        detect_every=config.pipeline.detect_every, search_every=config.pipeline.search_every))


def prepare(config: DaemonConfig) -> EmotionPipeline:
    """Every check the daemon makes before it starts work, and the pipeline it loads: the source,
    the HTTP listen address (not its port, which a running daemon may hold), the model and the
    detector. `--check-config`, the start and a SIGHUP reload all go through here, so a config
    that passes the check starts too."""
    check_source(config.source.uri)
    if config.http.enabled:
        check_address(config.http.host, config.http.port)
    return build_pipeline(config)


class Daemon:
    """One camera's daemon. `run()` blocks; `stop()` may be called from a signal handler or thread."""

    def __init__(self, config: DaemonConfig, pipeline: EmotionPipeline | None = None):
        """`pipeline`: what prepare(config) returned, when it was already called."""
        self.pipeline = pipeline or prepare(config)
        self.config = config
        self.camera_id = config.camera_id
        self.metrics = DaemonMetrics()
        self.tracker = FaceTracker(config.smoothing, self.pipeline.classifier.class_names)
        self.shares = EmotionShares(self.pipeline.classifier.class_names)
        self.grabber = FrameGrabber(config.source, self.metrics)
        self.mqtt = self._mqtt_publisher() if config.mqtt.host else None
        self.jsonl = JsonLinesWriter(config.output.jsonl) if config.output.jsonl else None
        self.http = StatusServer(config.http.host, config.http.port, self.health, self.state, self.metrics.render,
                                 client_timeout_s=config.http.client_timeout_s) if config.http.enabled else None
        self._stopping = threading.Event()
        self._source_state = self.grabber.status.state
        self._state: dict = self._snapshot()
        self._last_state_sent = 0.0
        self._summary = {"since": time.monotonic(), "frames": 0, "faces": 0, "captured": 0.0, "dropped": 0.0}

    def _mqtt_publisher(self) -> MqttPublisher:
        config = self.config
        if not config.homeassistant.discovery:
            return MqttPublisher(config.mqtt, config.camera_id, self.metrics)
        base = f"{config.mqtt.topic_prefix}/{config.camera_id}"
        return MqttPublisher(config.mqtt, config.camera_id, self.metrics,
                             announcements=lambda: discovery.messages(config, base, __version__),
                             birth_topic=f"{config.homeassistant.discovery_prefix}/status")

    # --- what the outputs see -------------------------------------------------------------------

    def _snapshot(self) -> dict:
        status = self.grabber.status
        faces = self.tracker.faces()
        self.metrics.faces.set(len(faces))
        snapshot = {"camera_id": self.camera_id, "ts": round(time.time(), 3),
                    "source": {"state": status.state, "error": status.error, "since": round(status.since, 3)},
                    "faces": faces, "face_count": len(faces), "dominant_emotion": dominant(faces),
                    "emotion_shares": self.shares.shares()}
        if self.mqtt:  # lets a second daemon that publishes as this camera be told apart
            snapshot["publisher"] = self.mqtt.client_id
        return snapshot

    def state(self) -> dict:
        """The current faces and source state (what /state serves and MQTT `state` carries)."""
        return self._state

    def health(self) -> tuple[bool, dict]:
        """Healthy while the source delivers fresh frames and, if MQTT is on, the broker is connected."""
        last = self.grabber.last_frame_at
        age = None if last is None else round(time.monotonic() - last, 3)
        source_ok = self.grabber.status.state == OK and age is not None and age <= self.config.http.stale_after_s
        broker = None if self.mqtt is None else self.mqtt.connected
        details = {"camera_id": self.camera_id, "source_ok": source_ok, "source_state": self.grabber.status.state,
                   "source_error": self.grabber.status.error, "last_frame_age_s": age, "broker_connected": broker,
                   "mqtt_conflict": None if self.mqtt is None else self.mqtt.conflict}
        healthy = source_ok and broker is not False
        return healthy, {"status": "ok" if healthy else "unhealthy", **details}

    def _emit(self, events: list[dict]) -> None:
        if not events:
            return
        # /state must already show what an event announces to whoever reacts to the event.
        self._state = self._snapshot()
        now = round(time.time(), 3)
        for event in events:
            record = {"camera_id": self.camera_id, "ts": now, **event}
            self.metrics.events.labels(event["type"]).inc()
            if self.jsonl:
                self.jsonl.write(record)
            if self.mqtt:
                self.mqtt.publish("events", record)

    def _publish_state(self, changed: bool) -> None:
        self._state = self._snapshot()
        now = time.monotonic()
        if self.mqtt and (changed or now - self._last_state_sent >= self.config.output.state_interval_s):
            self.mqtt.publish("state", self._state, retain=True)
            self._last_state_sent = now

    def _summarize(self) -> None:
        """Every summary_interval_s: throughput, drops and the faces in view, as one JSON line."""
        s = self._summary
        now = time.monotonic()
        if not self.jsonl or now - s["since"] < self.config.output.summary_interval_s:
            return
        sample = self.metrics.registry.get_sample_value
        captured, dropped = sample("fer_edge_frames_captured_total"), sample("fer_edge_frames_dropped_total")
        elapsed = now - s["since"]
        self.jsonl.write({
            "camera_id": self.camera_id, "ts": round(time.time(), 3), "type": "summary",
            "interval_s": round(elapsed, 3), "fps": round(s["frames"] / elapsed, 2),
            "frames_captured": int(captured - s["captured"]), "frames_processed": s["frames"],
            "frames_dropped": int(dropped - s["dropped"]), "face_detections": s["faces"],
            "source": self._state["source"],
            "faces": [{k: f[k] for k in ("face_id", "label", "confidence")} for f in self._state["faces"]],
        })
        self._summary = {"since": now, "frames": 0, "faces": 0, "captured": captured, "dropped": dropped}

    # --- the loop -------------------------------------------------------------------------------

    def _watch_source(self, final: bool = False) -> bool:
        """Turn the source's state changes into events; True if there were any. The end of a file is
        left for the `final` call, made once its last frame has been processed."""
        changed = False
        while self.grabber.changes:
            if self.grabber.changes[0].state in (ENDED, FAILED) and not final:
                break
            status = self.grabber.changes.popleft()
            previous, self._source_state = self._source_state, status.state
            changed = True
            if status.state == LOST:
                self._emit([{"type": "source_lost", "error": status.error}] + self.tracker.clear())
            elif status.state == OK and previous == LOST:
                self._emit([{"type": "source_restored"}])
            elif status.state == ENDED:
                # The faces leave with the source: nothing retained may still show them.
                self._emit(self.tracker.clear() + [{"type": "source_ended"}])
            elif status.state == FAILED:
                log.error("source %s: %s", self.config.source.uri, status.error)
                self._emit(self.tracker.clear() + [{"type": "source_failed", "error": status.error}])
        return changed

    def _process(self, frame) -> bool:
        result = self.pipeline.process(frame)
        for stage in STAGES:
            self.metrics.stage_latency.labels(stage).observe(result.timings_ms.get(stage, 0.0) / 1000.0)
        self.metrics.frames_processed.inc()
        self.metrics.faces_detected.inc(len(result.faces))
        self._summary["frames"] += 1
        self._summary["faces"] += len(result.faces)
        now = time.time()
        events = self.tracker.update(result.faces, now)
        self.shares.add(now, [t["label"] for t in self.tracker.faces()])
        self._emit(events)
        return bool(events)

    def run(self) -> int:
        """Process frames until stop() or the end of an unlooped file; return the exit status
        (0; 1 when a video file could not be read)."""
        if self.http:
            self.http.start()
        if self.mqtt:
            self.mqtt.start()
        self.grabber.start()
        min_period = 1.0 / self.config.pipeline.max_fps if self.config.pipeline.max_fps else 0.0
        seq = 0
        try:
            while not self._stopping.is_set():
                changed = self._watch_source()
                taken = self.grabber.take(seq, POLL_S)
                started = time.monotonic()
                if taken is not None:
                    seq, frame = taken
                    changed = self._process(frame) or changed
                elif self.grabber.status.state in (ENDED, FAILED):
                    self._watch_source(final=True)
                    self._publish_state(changed=True)  # the final, retained state: source ended, no faces
                    break
                self._publish_state(changed)
                self._summarize()
                if taken is not None:
                    # The cap: sleep off the rest of this frame's time slot (interrupted by stop()).
                    self._stopping.wait(min_period - (time.monotonic() - started))
        finally:
            self._shutdown()
        return 1 if self.grabber.status.state == FAILED else 0

    def stop(self) -> None:
        """Ask run() to return; safe from a signal handler."""
        self._stopping.set()

    def _shutdown(self) -> None:
        log.info("stopping")
        self.grabber.stop(CAPTURE_STOP_S)
        if self.mqtt:
            self.mqtt.close(MQTT_STOP_S)
        if self.http:
            self.http.stop()
        if self.jsonl:
            self.jsonl.close()
