"""MQTT output: state, events and availability, with a bounded buffer while the broker is away.

paho's network thread reconnects with exponential back-off by itself (also when the broker is
down at start). While it is disconnected, messages wait in our own bounded buffer rather than in
paho's queue: paho drops QoS 0 messages when offline and would keep QoS 1/2 ones without limit.
"""
from __future__ import annotations

import json
import logging
import threading
from collections import deque

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from fer_edge.edge_runtime.daemon.config import MqttConfig
from fer_edge.edge_runtime.daemon.metrics import DaemonMetrics

log = logging.getLogger(__name__)

ONLINE, OFFLINE = "online", "offline"


def encode(payload: dict) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


class MqttPublisher:
    """Publishes to `<topic_prefix>/<camera_id>/<suffix>`; `availability` is retained and is the
    last will, so a crash or a lost connection shows `offline`."""

    def __init__(self, config: MqttConfig, camera_id: str, metrics: DaemonMetrics):
        self.config = config
        self.base = f"{config.topic_prefix}/{camera_id}"
        self.metrics = metrics
        self.connected = False
        self._ever_connected = False
        self._closing = False
        # Reentrant: a paho callback could run inside a publish made under the lock.
        self._lock = threading.RLock()
        self._events: deque[tuple[str, bytes]] = deque()
        # A retained message is the topic's latest value: while offline only the newest one matters.
        self._retained: dict[str, bytes] = {}
        self.client_id = config.client_id or f"fer-edge-{camera_id}"
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=paho.MQTTv311)
        if config.username:
            client.username_pw_set(config.username, config.password or None)
        if config.tls or config.tls_ca:
            client.tls_set(ca_certs=config.tls_ca or None, certfile=config.tls_cert or None,
                           keyfile=config.tls_key or None)
        client.will_set(self.topic("availability"), OFFLINE, qos=config.qos, retain=True)
        client.reconnect_delay_set(config.retry_min_s, config.retry_max_s)
        # paho's own queue of unacknowledged QoS 1/2 messages is bounded too (drops beyond it are
        # counted), with room for a full flush of our buffer on top of what was in flight at a drop.
        client.max_queued_messages_set(2 * config.buffer)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        self._client = client

    def topic(self, suffix: str) -> str:
        return f"{self.base}/{suffix}"

    def start(self) -> None:
        """Connect in the background; returns at once even when the broker is unreachable."""
        log.info("MQTT: connecting to %s:%d as %s", self.config.host, self.config.port, self.client_id)
        self._client.connect_async(self.config.host, self.config.port, self.config.keepalive_s)
        self._client.loop_start()

    def publish(self, suffix: str, payload: dict, retain: bool = False) -> None:
        """Send now if connected, else keep in the buffer (dropping the oldest event beyond its bound)."""
        topic, data = self.topic(suffix), encode(payload)
        with self._lock:
            if self.connected and self._send(topic, data, retain):
                return
            if retain:
                self._retained[topic] = data
                return
            if len(self._events) >= self.config.buffer:
                self._events.popleft()
                self.metrics.mqtt_dropped.inc()
            self._events.append((topic, data))

    def _send(self, topic: str, data: bytes, retain: bool) -> bool:
        """Hand one message to paho; False when the connection went away under us."""
        info = self._client.publish(topic, data, qos=self.config.qos, retain=retain)
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            return False
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            self.metrics.mqtt_dropped.inc()
        else:
            self.metrics.mqtt_published.inc()
        return True

    def _flush(self) -> None:
        """Send the buffer, oldest first (call with the lock held)."""
        while self._events:
            topic, data = self._events[0]
            if not self._send(topic, data, retain=False):
                return
            self._events.popleft()
        for topic in list(self._retained):
            if not self._send(topic, self._retained[topic], retain=True):
                return
            del self._retained[topic]

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("MQTT: broker refused the connection: %s", reason_code)
            return
        if self._ever_connected:
            self.metrics.mqtt_reconnects.inc()
        self._ever_connected = True
        log.info("MQTT: connected to %s:%d", self.config.host, self.config.port)
        # Under the lock, so that no new message overtakes the buffered ones.
        with self._lock:
            self._send_availability(ONLINE)
            self._flush()
            self.connected = True
        self.metrics.mqtt_connected.set(1)

    def _send_availability(self, status: str) -> paho.MQTTMessageInfo:
        return self._client.publish(self.topic("availability"), status, qos=self.config.qos, retain=True)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._lock:
            self.connected = False
        self.metrics.mqtt_connected.set(0)
        if not self._closing:
            log.warning("MQTT: disconnected (%s); reconnecting with back-off", reason_code)

    def close(self, timeout: float = 1.0) -> None:
        """Publish `offline` (retained), disconnect, and stop the network thread within `timeout`."""
        self._closing = True
        with self._lock:
            online = self.connected
            self.connected = False
        if online:
            try:
                self._send_availability(OFFLINE).wait_for_publish(timeout)
            except (RuntimeError, ValueError) as error:  # the connection dropped meanwhile
                log.warning("MQTT: could not publish offline: %s", error)
        self._client.disconnect()
        # loop_stop() joins paho's thread, which may sit in a blocking connect to an unreachable
        # broker: bound the wait (the thread is a daemon thread and dies with the process).
        stopper = threading.Thread(target=self._client.loop_stop, daemon=True)
        stopper.start()
        stopper.join(timeout)
