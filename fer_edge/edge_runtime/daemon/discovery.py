"""Home Assistant MQTT discovery: each camera shows up as a device with its sensors, no YAML.

Retained `<prefix>/<component>/<node_id>/<object_id>/config` messages describe entities that read
the camera's retained `state` topic and follow its `availability` topic. An empty retained message
on the same topics removes them: `fer-edge daemon --config FILE --remove-discovery` when a camera is
retired (a running daemon would publish them again).
"""
from __future__ import annotations

import json
import re

from fer_edge.edge_runtime.daemon.config import DaemonConfig
from fer_edge.spec import CLASS_NAMES


def node_id(config: DaemonConfig) -> str:
    """The discovery node id: configured, or `fer_edge_<camera_id>` in the characters HA allows."""
    return config.homeassistant.node_id or "fer_edge_" + re.sub(r"[^A-Za-z0-9_-]", "_", config.camera_id)


def _entities(config: DaemonConfig, with_shares: bool) -> list[tuple[str, str, dict]]:
    """(component, object_id, entity-specific config) of every entity of one camera."""
    entities = [
        ("sensor", "emotion", {"name": "Emotion", "icon": "mdi:emoticon-outline",
                               "value_template": "{{ value_json.dominant_emotion }}"}),
        ("sensor", "faces", {"name": "Faces", "icon": "mdi:face-recognition", "state_class": "measurement",
                             "value_template": "{{ value_json.face_count }}"}),
        ("binary_sensor", "face_present", {"name": "Face present", "device_class": "occupancy",
                                           "value_template": "{{ 'ON' if value_json.face_count > 0 else 'OFF' }}"}),
    ]
    if with_shares:
        entities += [("sensor", f"share_{name}", {
            "name": f"{name.capitalize()} share (last minute)", "unit_of_measurement": "%",
            "state_class": "measurement", "icon": "mdi:chart-donut", "entity_category": "diagnostic",
            "value_template": f"{{{{ value_json.emotion_shares.{name} }}}}"}) for name in CLASS_NAMES]
    return entities


def topics(config: DaemonConfig, with_shares: bool | None = None) -> list[str]:
    """The config topics of the camera's entities (all of them, shares included, by default)."""
    node = node_id(config)
    with_shares = True if with_shares is None else with_shares
    return [f"{config.homeassistant.discovery_prefix}/{component}/{node}/{object_id}/config"
            for component, object_id, _ in _entities(config, with_shares)]


def messages(config: DaemonConfig, base_topic: str, version: str) -> list[tuple[str, bytes]]:
    """The retained discovery messages for one camera; `base_topic` is `<topic_prefix>/<camera_id>`."""
    node = node_id(config)
    device = {"identifiers": [node], "name": f"fer-edge {config.camera_id}", "manufacturer": "fer-edge",
              "model": "fer-edge camera daemon", "sw_version": version}
    common = {"state_topic": f"{base_topic}/state", "availability_topic": f"{base_topic}/availability",
              "payload_available": "online", "payload_not_available": "offline", "device": device,
              "origin": {"name": "fer-edge", "sw_version": version}}  # who sent it, shown in HA's logs
    entities = _entities(config, config.homeassistant.emotion_shares)
    names = topics(config, config.homeassistant.emotion_shares)
    return [(topic, json.dumps({**specific, "unique_id": f"{node}_{object_id}", **common},
                               separators=(",", ":")).encode())
            for topic, (_, object_id, specific) in zip(names, entities)]


def remove(config: DaemonConfig, timeout: float = 10.0) -> list[str]:
    """Retire a camera: empty retained messages on its discovery topics (all entities, whatever the
    current options) and on its own retained `state` and `availability`. Returns the topics cleared;
    raises MqttUnavailable when the broker cannot be reached within `timeout`."""
    from fer_edge.edge_runtime.daemon.mqtt import clear_retained

    base = f"{config.mqtt.topic_prefix}/{config.camera_id}"
    cleared = topics(config) + [f"{base}/state", f"{base}/availability"]
    clear_retained(config.mqtt, config.camera_id, cleared, timeout)
    return cleared
