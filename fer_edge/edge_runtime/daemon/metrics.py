"""Prometheus metrics of one daemon, in its own registry (not the process-global one), so several
daemons can live in one process, as they do in tests."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Per-stage latencies on a Pi run from ~1 ms (classify one face) to ~300 ms (Haar at full size).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class DaemonMetrics:
    """Counters, gauges and histograms exposed on /metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.frames_captured = Counter("fer_edge_frames_captured", "Frames read from the source", registry=r)
        self.frames_processed = Counter("fer_edge_frames_processed", "Frames run through the pipeline", registry=r)
        self.frames_dropped = Counter(
            "fer_edge_frames_dropped", "Frames replaced by a newer one before they were processed", registry=r)
        self.faces = Gauge("fer_edge_faces", "Faces currently tracked and reported", registry=r)
        self.faces_detected = Counter("fer_edge_faces_detected", "Faces found in processed frames", registry=r)
        self.events = Counter("fer_edge_events", "Face and source events emitted", ["type"], registry=r)
        self.stage_latency = Histogram("fer_edge_stage_latency_seconds", "Pipeline latency per stage", ["stage"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.source_up = Gauge("fer_edge_source_up", "1 while the frame source is open and delivering", registry=r)
        self.source_reconnects = Counter("fer_edge_source_reconnects", "Times the source was reopened", registry=r)
        self.mqtt_connected = Gauge("fer_edge_mqtt_connected", "1 while connected to the MQTT broker", registry=r)
        self.mqtt_reconnects = Counter("fer_edge_mqtt_reconnects", "Connections to the broker after the first",
                                       registry=r)
        self.mqtt_published = Counter("fer_edge_mqtt_published", "MQTT messages handed to the broker connection",
                                      registry=r)
        self.mqtt_dropped = Counter("fer_edge_mqtt_dropped",
                                    "MQTT messages dropped because the buffer was full while the broker was away",
                                    registry=r)

    def render(self) -> bytes:
        """The metrics in the Prometheus text format."""
        return generate_latest(self.registry)
