"""MQTT output: state, events and availability, with a bounded buffer while the broker is away.

paho's network thread reconnects with exponential back-off by itself (also when the broker is
down at start). While it is disconnected, messages wait in our own bounded buffer rather than in
paho's queue: paho drops QoS 0 messages when offline and would keep QoS 1/2 ones without limit.

Two daemons that claim one camera are reported, once, in one line: with one client id the broker
drops each as the other connects (seen as quick drops followed by instant reconnects); with two
client ids both publish `state` on one topic (seen on our own subscription to it).
"""
from __future__ import annotations

import json
import logging
import socket
import sys
import threading
import time
from collections import deque
from typing import Callable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from fer_edge.edge_runtime.daemon.config import MqttConfig
from fer_edge.edge_runtime.daemon.metrics import DaemonMetrics
from fer_edge.errors import FerEdgeError

log = logging.getLogger(__name__)

ONLINE, OFFLINE = "online", "offline"
# Quick drops (connection lost within SHORT_LIVED_S of being made, the next attempt accepted at
# once) that, TAKEOVER_DROPS times within TAKEOVER_WINDOW_S, mean another client uses our id.
SHORT_LIVED_S, TAKEOVER_DROPS, TAKEOVER_WINDOW_S = 10.0, 2, 60.0


def encode(payload: dict) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def default_client_id(camera_id: str) -> str:
    """`fer-edge-<host>-<camera_id>`: unique per device, so two devices never take over each other's connection."""
    return f"fer-edge-{socket.gethostname()}-{camera_id}"


def make_client(config: MqttConfig, client_id: str) -> paho.Client:
    """A paho client with the configured credentials and TLS (not yet connected)."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311)
    if config.username:
        client.username_pw_set(config.username, config.password or None)
    if config.uses_tls:
        client.tls_set(ca_certs=config.tls_ca or None, certfile=config.tls_cert or None,
                       keyfile=config.tls_key or None)
    return client


class MqttUnavailable(FerEdgeError):
    """The broker could not be reached or refused us (for one-shot commands; the daemon retries)."""


def clear_retained(config: MqttConfig, camera_id: str, topics: list[str], timeout: float) -> None:
    """Connect once, send an empty retained message to each topic (which deletes it), disconnect."""
    client = make_client(config, f"{default_client_id(camera_id)}-cleanup")
    where = f"{config.host}:{config.port}"
    refusals: list = []
    client.on_connect = lambda c, u, f, reason, p: refusals.append(reason) if reason.is_failure else None
    try:
        client.connect(config.host, config.port, config.keepalive_s)
    except (OSError, ValueError) as error:
        raise MqttUnavailable(f"cannot connect to the MQTT broker at {where}: {error}") from None
    client.loop_start()
    try:
        deadline = time.monotonic() + timeout
        infos = [client.publish(topic, b"", qos=1, retain=True) for topic in topics]
        for info in infos:
            try:
                info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            except (RuntimeError, ValueError) as error:  # the connection was lost or refused
                raise MqttUnavailable(f"MQTT broker at {where}: {refusals[0] if refusals else error}") from None
            if refusals:
                raise MqttUnavailable(f"the MQTT broker at {where} refused the connection: {refusals[0]}")
            if not info.is_published():
                raise MqttUnavailable(f"the MQTT broker at {where} did not acknowledge within {timeout:g} s")
    finally:
        client.disconnect()
        client.loop_stop()


class MqttPublisher:
    """Publishes to `<topic_prefix>/<camera_id>/<suffix>`; `availability` is retained and is the
    last will, so a crash or a lost connection shows `offline`."""

    def __init__(self, config: MqttConfig, camera_id: str, metrics: DaemonMetrics,
                 announcements: Callable[[], list[tuple[str, bytes]]] = list, birth_topic: str | None = None):
        """`announcements`: retained messages (Home Assistant discovery) sent on every connection and
        again whenever `online` arrives on `birth_topic` (Home Assistant restarted and forgot them)."""
        self.config = config
        self.camera_id = camera_id
        self.base = f"{config.topic_prefix}/{camera_id}"
        self.metrics = metrics
        self.connected = False
        self.conflict: str | None = None
        """One line describing another daemon that claims this camera, once one was seen."""
        self._announcements = announcements
        self._birth_topic = birth_topic
        self._ever_connected = False
        self._closing = False
        self._connected_at = 0.0
        self._dropped_at: float | None = None  # an unexpected drop not yet followed by a reconnect
        self._quick_drops: deque[float] = deque(maxlen=TAKEOVER_DROPS)
        self._failed_attempts = 0
        # Reentrant: a paho callback could run inside a publish made under the lock.
        self._lock = threading.RLock()
        self._events: deque[tuple[str, bytes]] = deque()
        # A retained message is the topic's latest value: while offline only the newest one matters.
        self._retained: dict[str, bytes] = {}
        self.client_id = config.client_id or default_client_id(camera_id)
        client = make_client(config, self.client_id)
        client.will_set(self.topic("availability"), OFFLINE, qos=config.qos, retain=True)
        client.reconnect_delay_set(config.retry_min_s, config.retry_max_s)
        # paho's own queue of unacknowledged QoS 1/2 messages is bounded too (drops beyond it are
        # counted), with room for a full flush of our buffer on top of what was in flight at a drop.
        client.max_queued_messages_set(2 * config.buffer)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
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
        self._check_takeover()
        self._connected_at, self._failed_attempts = time.monotonic(), 0
        log.info("MQTT: connected to %s:%d as %s", self.config.host, self.config.port, self.client_id)
        # Our own state topic: a live message there from another client id is another daemon.
        client.subscribe(self.topic("state"), qos=0)
        if self._birth_topic:
            client.subscribe(self._birth_topic, qos=1)
        # Under the lock, so that no new message overtakes the buffered ones.
        with self._lock:
            self._announce()
            self._send_availability(ONLINE)
            self._flush()
            self.connected = True
        self.metrics.mqtt_connected.set(1)

    def _announce(self) -> None:
        for topic, data in self._announcements():
            self._send(topic, data, retain=True)

    def _on_message(self, client, userdata, message) -> None:
        if message.topic == self._birth_topic:
            if message.payload == b"online":
                log.info("MQTT: Home Assistant is online: publishing discovery again")
                with self._lock:
                    self._announce()
            return
        if message.retain:  # the retained state from before this connection, maybe our own last run
            return
        try:
            publisher = json.loads(message.payload).get("publisher")
        except (ValueError, AttributeError):
            publisher = "?"
        if publisher != self.client_id:
            self._report_conflict(f"another fer-edge daemon (MQTT client id {publisher!r}) also publishes as "
                                  f"camera_id {self.camera_id!r} on {self.base}/: give each camera its own camera_id")

    def _check_takeover(self) -> None:
        """Called on each connection: was the one before it dropped quickly and are we back at once?"""
        now = time.monotonic()
        if self._dropped_at is not None and self._dropped_at - self._connected_at < SHORT_LIVED_S \
                and self._failed_attempts == 0:
            self._quick_drops.append(now)
            if len(self._quick_drops) == TAKEOVER_DROPS and now - self._quick_drops[0] <= TAKEOVER_WINDOW_S:
                self._report_conflict(
                    f"the broker keeps dropping client id {self.client_id!r} as soon as another client connects "
                    f"with it: two daemons run as camera_id {self.camera_id!r}; give each its own camera_id "
                    f"(or its own mqtt.client_id)")
        self._dropped_at = None

    def _report_conflict(self, message: str) -> None:
        if self.conflict is None:
            log.error("MQTT: %s", message)
        self.conflict = message

    def _on_connect_fail(self, client, userdata) -> None:
        # paho calls this inside its `except OSError`, so the exception is at hand.
        error = sys.exc_info()[1]
        self._failed_attempts += 1
        log.warning("MQTT: cannot connect to %s:%d (attempt %d): %s; retrying with back-off", self.config.host,
                    self.config.port, self._failed_attempts, error or "connection failed")

    def _send_availability(self, status: str) -> paho.MQTTMessageInfo:
        return self._client.publish(self.topic("availability"), status, qos=self.config.qos, retain=True)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._lock:
            was_connected, self.connected = self.connected, False
        self.metrics.mqtt_connected.set(0)
        if not self._closing:
            if was_connected:
                self._dropped_at = time.monotonic()
            log.warning("MQTT: disconnected (%s); reconnecting with back-off", reason_code)

    def close(self, timeout: float = 1.0) -> None:
        """Publish `offline` (retained), disconnect, and stop the network thread within `timeout`."""
        self._closing = True
        deadline = time.monotonic() + timeout  # one budget for both waits below
        with self._lock:
            online = self.connected
            self.connected = False
        if online:
            try:
                self._send_availability(OFFLINE).wait_for_publish(max(deadline - time.monotonic(), 0.0))
            except (RuntimeError, ValueError) as error:  # the connection dropped meanwhile
                log.warning("MQTT: could not publish offline: %s", error)
        self._client.disconnect()
        # loop_stop() joins paho's thread, which may sit in a blocking connect to an unreachable
        # broker: bound the wait (the thread is a daemon thread and dies with the process).
        stopper = threading.Thread(target=self._client.loop_stop, daemon=True)
        stopper.start()
        stopper.join(max(deadline - time.monotonic(), 0.0))
