"""The daemon's MQTT side against a real mosquitto: Home Assistant discovery (messages, retain flags,
re-publish on Home Assistant's birth message, removal by the CLI), two daemons claiming one camera,
the final state of a finished video, and logged connection failures."""
import json
import logging
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import pytest

from fer_edge.edge_runtime.classifier import SHIPPED_MODEL
from fer_edge.edge_runtime.daemon.config import MqttConfig
from fer_edge.edge_runtime.daemon.metrics import DaemonMetrics
from fer_edge.edge_runtime.daemon.mqtt import MqttPublisher
from fer_edge.edge_runtime.daemon.service import Daemon
from fer_edge.spec import CLASS_NAMES

paho = pytest.importorskip("paho.mqtt.client")
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from test_daemon import (CAMERA, blank_video, broker, free_port, make_config, needs_data, processed,  # noqa: E402,F401
                         running, video, wait_until)

NODE = f"fer_edge_{CAMERA}"
ENTITIES = {"sensor/emotion", "sensor/faces", "binary_sensor/face_present"} | {
    f"sensor/share_{name}" for name in CLASS_NAMES}


class Listener:
    """Every message under the given topic filters, with its retain flag."""

    def __init__(self, port: int, *filters: str):
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2)
        self.client.on_connect = lambda c, *_: c.subscribe([(f, 1) for f in filters])
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self._subscribed.wait(5), "listener never subscribed"

    def _on_message(self, client, userdata, message) -> None:
        with self._lock:
            self.messages.append((message.topic, message.payload, message.retain))

    def on(self, prefix: str) -> list[tuple[str, bytes, bool]]:
        with self._lock:
            return [m for m in self.messages if m[0].startswith(prefix)]

    def configs(self) -> list[tuple[str, bytes, bool]]:
        """Discovery configs only (not Home Assistant's own status messages)."""
        return [m for m in self.on("") if m[0].endswith("/config")]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextmanager
def listening(port: int, *filters: str):
    listener = Listener(port, *filters)
    try:
        yield listener
    finally:
        listener.close()


def retained(port: int, topic_filter: str, settle: float = 0.5) -> dict[str, bytes]:
    """What a newcomer gets on subscribing: the retained messages, by topic."""
    with listening(port, topic_filter) as listener:
        time.sleep(settle)
        return {topic: payload for topic, payload, retain in listener.messages if retain}


def mqtt_config(video_path, port, model=SHIPPED_MODEL, **overrides):
    """The daemon on the shipped model (loads at once; the trained fixture model is for the face video)."""
    return make_config(model, video_path, **{"mqtt.host": "127.0.0.1", "mqtt.port": port, "http.enabled": False,
                                             **overrides})


def test_home_assistant_discovery(broker, blank_video):
    broker.start()
    config = mqtt_config(blank_video, broker.port)
    with listening(broker.port, "homeassistant/#", f"fer-edge/{CAMERA}/#") as ha:
        with running(Daemon(config)) as daemon:
            wait_until(lambda: len(ha.configs()) == len(ENTITIES), 10, "the discovery configs")
            wait_until(lambda: ha.on(f"fer-edge/{CAMERA}/state"), 5, "a state message")
            configs = {topic: json.loads(payload) for topic, payload, _ in ha.configs()}
            assert set(configs) == {f"homeassistant/{component}/{NODE}/{name}/config"
                                    for component, name in (e.split("/") for e in ENTITIES)}
            unique_ids = {c["unique_id"] for c in configs.values()}
            assert len(unique_ids) == len(ENTITIES) and all(u.startswith(NODE + "_") for u in unique_ids)
            for entity in configs.values():
                assert entity["state_topic"] == f"fer-edge/{CAMERA}/state"
                assert entity["availability_topic"] == f"fer-edge/{CAMERA}/availability"
                assert entity["device"]["identifiers"] == [NODE]
                assert entity["device"]["name"] == f"fer-edge {CAMERA}"
            # The state carries every field the entities' templates read.
            state = json.loads(ha.on(f"fer-edge/{CAMERA}/state")[-1][1])
            assert state["face_count"] == 0 and state["dominant_emotion"] == "none"
            assert set(state["emotion_shares"]) == set(CLASS_NAMES)
            assert state["publisher"] == daemon.mqtt.client_id
            # Retained: a Home Assistant that starts later still finds them.
            assert set(retained(broker.port, "homeassistant/#")) == set(configs)

            # Home Assistant restarts and announces itself: everything is published again.
            before = len(ha.configs())
            ha.client.publish("homeassistant/status", "online", qos=1).wait_for_publish(5)
            wait_until(lambda: len(ha.configs()) == before + len(ENTITIES), 5,
                       "discovery re-published after the birth message")
            ha.client.publish("homeassistant/status", "offline", qos=1).wait_for_publish(5)
            time.sleep(0.5)
            assert len(ha.configs()) == before + len(ENTITIES)  # only `online` triggers it

    # The camera is retired: the documented command clears its discovery and retained topics.
    command = [sys.executable, "-m", "fer_edge", "daemon", "--camera-id", CAMERA, "--mqtt-host", "127.0.0.1",
               "--mqtt-port", str(broker.port), "--remove-discovery"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert f"cleared homeassistant/sensor/{NODE}/emotion/config" in result.stdout
    assert retained(broker.port, "homeassistant/#") == {}
    assert retained(broker.port, f"fer-edge/{CAMERA}/#") == {}


def test_discovery_off_and_custom_prefix_and_node(broker, blank_video):
    broker.start()
    off = mqtt_config(blank_video, broker.port, **{"homeassistant.discovery": False})
    custom = mqtt_config(blank_video, broker.port, camera_id="porch",
                         **{"homeassistant.discovery_prefix": "ha", "homeassistant.node_id": "porch_node",
                            "homeassistant.emotion_shares": False})
    with listening(broker.port, "homeassistant/#", "ha/#") as ha:
        with running(Daemon(off)) as daemon:
            wait_until(lambda: daemon.mqtt.connected and processed(daemon) > 3, 10, "the daemon to run")
        assert ha.configs() == []
        with running(Daemon(custom)):
            wait_until(lambda: len(ha.on("ha/")) == 3, 10, "three discovery configs under ha/")
        assert {t for t, _, _ in ha.on("ha/")} == {"ha/sensor/porch_node/emotion/config",
                                                   "ha/sensor/porch_node/faces/config",
                                                   "ha/binary_sensor/porch_node/face_present/config"}


def one_line(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def test_two_daemons_with_one_camera_id_are_reported(broker, blank_video, caplog):
    """Same host, same camera_id: the same default client id, so the broker drops each for the other."""
    broker.start()
    config = mqtt_config(blank_video, broker.port)
    first, second = Daemon(config), Daemon(config)
    assert first.mqtt.client_id == f"fer-edge-{socket.gethostname()}-{CAMERA}"
    with caplog.at_level(logging.ERROR, logger="fer_edge.edge_runtime.daemon.mqtt"):
        with running(first), running(second):
            wait_until(lambda: first.mqtt.conflict and second.mqtt.conflict, 20, "both daemons to see the takeover")
    for daemon in (first, second):
        assert f"camera_id '{CAMERA}'" in daemon.mqtt.conflict and "give each its own camera_id" in daemon.mqtt.conflict
    lines = one_line(caplog, "keeps dropping client id")
    assert len(lines) == 2, lines  # one line per daemon, not one per drop


def test_two_devices_sharing_a_camera_id_are_reported(broker, blank_video, caplog):
    """Different client ids (two devices), one camera_id: both publish on one state topic."""
    broker.start()
    config = mqtt_config(blank_video, broker.port)
    other = mqtt_config(blank_video, broker.port, **{"mqtt.client_id": "other-device"})
    first = Daemon(config)
    with caplog.at_level(logging.ERROR, logger="fer_edge.edge_runtime.daemon.mqtt"):
        with running(first), running(Daemon(other)):
            wait_until(lambda: first.mqtt.conflict, 10, "the shared camera id to be reported")
            assert first.health()[1]["mqtt_conflict"] == first.mqtt.conflict
    assert first.mqtt.conflict == (f"another fer-edge daemon (MQTT client id 'other-device') also publishes as "
                                   f"camera_id '{CAMERA}' on fer-edge/{CAMERA}/: give each camera its own camera_id")
    assert len(one_line(caplog, "other-device")) == 1


def test_one_daemon_alone_reports_no_conflict(broker, blank_video):
    broker.start()
    daemon = Daemon(mqtt_config(blank_video, broker.port))
    with running(daemon):
        wait_until(lambda: daemon.mqtt.connected, 5, "connected")
        time.sleep(2)  # several of its own state messages come back to it
        assert daemon.mqtt.conflict is None


@needs_data
def test_finished_video_leaves_a_final_state_without_faces(broker, int8_model_path, video):
    path, expected = video
    broker.start()
    config = mqtt_config(path, broker.port, int8_model_path, **{"source.loop": False, "source.pace": False})
    with listening(broker.port, f"fer-edge/{CAMERA}/#") as listener:
        assert Daemon(config).run() == 0
        events = [json.loads(p)["type"] for _, p, _ in listener.on(f"fer-edge/{CAMERA}/events")]
    assert events.count("face_appeared") == len(expected)
    assert events.count("face_lost") == len(expected)
    assert events[-1] == "source_ended"
    final = retained(broker.port, f"fer-edge/{CAMERA}/#")
    state = json.loads(final[f"fer-edge/{CAMERA}/state"])
    assert state["source"]["state"] == "ended" and state["faces"] == [] and state["face_count"] == 0
    assert final[f"fer-edge/{CAMERA}/availability"] == b"offline"


def test_failed_connection_attempts_are_logged(caplog):
    port = free_port()  # nothing listens there
    publisher = MqttPublisher(MqttConfig(host="127.0.0.1", port=port, retry_min_s=0.1, retry_max_s=0.2),
                              CAMERA, DaemonMetrics())
    with caplog.at_level(logging.WARNING, logger="fer_edge.edge_runtime.daemon.mqtt"):
        publisher.start()
        wait_until(lambda: len(one_line(caplog, "cannot connect")) >= 2, 5, "two logged attempts")
        publisher.close()
    lines = one_line(caplog, "cannot connect")
    assert lines[0].startswith(f"MQTT: cannot connect to 127.0.0.1:{port} (attempt 1): ")
    assert "Connection refused" in lines[0] and "(attempt 2)" in lines[1]


def test_remove_discovery_without_a_broker_is_one_line():
    port = free_port()
    base = [sys.executable, "-m", "fer_edge", "daemon", "--camera-id", CAMERA, "--remove-discovery"]
    result = subprocess.run(base + ["--mqtt-host", "127.0.0.1", "--mqtt-port", str(port)], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"Error: cannot connect to the MQTT broker at 127.0.0.1:{port}: [Errno 111] Connection refused"]
    result = subprocess.run(base, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "--remove-discovery needs the broker: set mqtt.host" in result.stderr
