"""Daemon configuration: precedence, validation, secrets and --check-config (no dataset, no model run)."""
import contextlib
import os
import shutil
import socket
import subprocess
import re
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from fer_edge.cli import main
from fer_edge.edge_runtime.daemon.config import tomllib  # tomli on Python 3.10, as the daemon reads it
from fer_edge.edge_runtime.daemon.config import ALL_KEYS, ConfigError, DaemonConfig, resolve

REPO = Path(__file__).resolve().parents[1]


def write_video(path: Path, frames: int = 2) -> Path:
    import cv2
    import numpy as np

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (64, 48))
    for _ in range(frames):
        writer.write(np.zeros((48, 64, 3), np.uint8))
    writer.release()
    return path


@pytest.fixture
def files(tmp_path):
    """The model shipped with fer-edge (--check-config loads it, as the run does) and a real
    two-frame video (the source must decode)."""
    from fer_edge.edge_runtime.classifier import SHIPPED_MODEL

    return SHIPPED_MODEL, write_video(tmp_path / "v.mp4")


def flatten(document: dict) -> dict:
    """A parsed TOML document as {dotted key: value}."""
    flat = {f"{t}.{k}": v for t, table in document.items() if isinstance(table, dict) for k, v in table.items()}
    flat.update({k: v for k, v in document.items() if not isinstance(v, dict)})
    return flat


def write_toml(tmp_path, text):
    path = tmp_path / "daemon.toml"
    path.write_text(text)
    return path


def test_defaults_are_safe():
    config = resolve()
    assert config.http.host == "127.0.0.1"
    assert config.mqtt.host == ""  # MQTT off until a broker is named
    assert config.output.jsonl == ""


def test_flags_override_file_override_environment(tmp_path):
    path = write_toml(tmp_path, '[mqtt]\nport = 1884\nqos = 2\n[pipeline]\nmax_fps = 5\n')
    environ = {"FER_EDGE_MQTT_PORT": "1885", "FER_EDGE_MQTT_QOS": "0", "FER_EDGE_MQTT_KEEPALIVE_S": "60",
               "FER_EDGE_CAMERA_ID": "porch", "FER_EDGE_DATA": "/elsewhere"}  # FER_EDGE_DATA: another tool's
    config = resolve({"mqtt.port": 1886, "mqtt.qos": None}, path, environ)
    assert config.mqtt.port == 1886  # flag
    assert config.mqtt.qos == 2  # file over environment
    assert config.mqtt.keepalive_s == 60  # environment over default
    assert config.camera_id == "porch"
    assert config.pipeline.max_fps == 5.0  # a TOML integer is accepted for a float


@pytest.mark.parametrize("toml, message", [
    ("[mqtt]\npasword = 'x'\n", "unknown config key 'mqtt.pasword' (config file"),
    ("[mqtt]\npasword = 'x'\n", "did you mean 'mqtt.password'"),
    ("[camera]\nid = 'x'\n", "unknown config key 'camera'"),
    ("colour = 'red'\n", "unknown config key 'colour'"),
    ("[mqtt]\nport = 'eighty'\n", "mqtt.port: expected int, got 'eighty'"),
    ("[mqtt]\nqos = 3\n", "mqtt.qos: expected 0, 1 or 2, got 3"),
    ("[http]\nenabled = 1\n", "http.enabled: expected bool"),
    ("[smoothing]\nmethod = 'median'\n", "smoothing.method: expected one of ema, vote"),
    ("[pipeline]\ndetector = 'yolo'\n", "pipeline.detector: expected one of"),
    ("camera_id = 'a/b'\n", "camera_id: expected a non-empty name"),
    ("[mqtt]\npassword = 's'\n", "mqtt.password: set mqtt.username too"),
    ("[mqtt]\ntls_ca = '/no/such/ca.pem'\n", "mqtt.tls_ca: no such file"),
    ("[source]\nretry_min_s = 5\nretry_max_s = 1\n", "source.retry_min_s: must not exceed"),
    ("[mqtt\n", "is not valid TOML"),
    ("[mqtt]\nkeepalive_s = 65536\n", "mqtt.keepalive_s: expected an integer 5..65535 (MQTT's limit), got 65536"),
    ("[output]\njsonl = '/no/such/folder/events.jsonl'\n", "output.jsonl: no such folder: /no/such/folder"),
    ("[homeassistant]\nnode_id = 'my node'\n", "homeassistant.node_id: expected letters, digits, _ and - only"),
    ("[homeassistant]\ndiscovery_prefix = 'ha/'\n", "homeassistant.discovery_prefix: expected a topic"),
    ("[source]\nopen_timeout_s = 0\n", "source.open_timeout_s: expected a number of seconds > 0 and at most 86400"),
    ("[source]\nread_timeout_s = inf\n", "source.read_timeout_s: expected a number of seconds > 0 and at most "
                                         "86400 (a day), got inf"),
    ("[source]\nread_timeout_s = nan\n", "source.read_timeout_s: expected a number of seconds"),
    # Huge finite numbers overflowed the clocks of the HTTP, capture and paho threads, and OpenCV's
    # int32 milliseconds: every time is at most a day.
    ("[http]\nclient_timeout_s = 1e300\n", "http.client_timeout_s: expected a number of seconds > 0 and at most "
                                          "86400 (a day), got 1e+300"),
    ("[source]\nretry_min_s = 1e300\nretry_max_s = 1e300\n", "source.retry_min_s: expected a number of seconds"),
    ("[source]\nopen_timeout_s = 3000000\n", "source.open_timeout_s: expected a number of seconds"),
    ("[mqtt]\nretry_max_s = 86401\n", "mqtt.retry_max_s: expected a number of seconds"),
    ("[output]\nsummary_interval_s = 1e20\n", "output.summary_interval_s: expected a number of seconds"),
    ("[model]\nthreads = 100000\n", "model.threads: expected an integer 1..64, got 100000"),
    ("[model]\nsha256 = 'nothex'\n", "model.sha256: expected empty or 64 hexadecimal digits, got 'nothex'"),
    ("[model]\nsha256 = '" + "0" * 63 + "'\n", "model.sha256: expected empty or 64 hexadecimal digits"),
    # MQTT names: paho's thread died on one over 65535 bytes; a control character made the broker
    # drop every connection (an endless reconnect loop).
    (f"camera_id = '{'c' * 70_000}'\n", "camera_id: expected a non-empty name of at most 256 UTF-8 bytes "
                                        "without / # + or control characters, got 'ccccc"),
    (f"camera_id = '{'é' * 129}'\n", "camera_id: expected a non-empty name of at most 256 UTF-8 bytes"),
    ('camera_id = "a\\u0000b"\n', "camera_id: expected a non-empty name"),
    ('camera_id = "porch\\tleft"\n', "camera_id: expected a non-empty name"),
    ("camera_id = ''\n", "camera_id: expected a non-empty name"),
    (f"[mqtt]\nclient_id = '{'i' * 70_000}'\n", "mqtt.client_id: expected at most 256 UTF-8 bytes without control "
                                                "characters, got 'iiii"),
    ('[mqtt]\nclient_id = "cam\\u001b[31m"\n', "mqtt.client_id: expected at most 256 UTF-8 bytes"),
    (f"[mqtt]\nusername = '{'u' * 70_000}'\n", "mqtt.username: expected at most 256 UTF-8 bytes"),
    ('[mqtt]\ntopic_prefix = "home\\u0000cams"\n', "mqtt.topic_prefix: expected a topic of at most 256 UTF-8 "
                                                   "bytes without wildcards (+ #), control characters or a trailing /"),
    ("[mqtt]\ntopic_prefix = 'home/+/cams'\n", "mqtt.topic_prefix: expected a topic"),
    ("[mqtt]\ntopic_prefix = 'home/#'\n", "mqtt.topic_prefix: expected a topic"),
    ("[mqtt]\ntopic_prefix = ''\n", "mqtt.topic_prefix: expected a topic"),
    (f"[mqtt]\ntopic_prefix = '{'t' * 257}'\n", "mqtt.topic_prefix: expected a topic"),
    ('[homeassistant]\ndiscovery_prefix = "ha\\u007f"\n', "homeassistant.discovery_prefix: expected a topic"),
    (f"[homeassistant]\nnode_id = '{'n' * 257}'\n", "homeassistant.node_id: expected letters, digits, _ and - "
                                                    "only, at most 256 of them"),
    ("[mqtt]\nport = " + "9" * 5000 + "\n", "is not valid TOML: Exceeds the limit (4300 digits)"),
    ("[pipeline]\nmax_fps = inf\n", "pipeline.max_fps: expected a finite number >= 0, got inf"),
    ("[pipeline]\nsearch_every = 0\n", "pipeline.search_every: expected"),
    ("[pipeline]\nmin_face = 1\n", "pipeline.min_face: expected an integer >= 8"),
])
def test_bad_file_names_the_key(tmp_path, toml, message):
    with pytest.raises(ConfigError, match=None) as error:
        resolve(config_path=write_toml(tmp_path, toml))
    assert message in str(error.value)
    assert len(str(error.value)) < 400  # one line, also when the value is 70,000 characters long


@pytest.mark.parametrize("toml", [
    f"camera_id = '{'c' * 256}'\n[mqtt]\nclient_id = '{'i' * 256}'\ntopic_prefix = 'home/cams'\n",
    "camera_id = 'Küche – Tür'\n[source]\nopen_timeout_s = 86400\nretry_max_s = 86400\n[model]\nthreads = 64\n",
    f"[model]\nsha256 = '{'aB' * 32}'\n[http]\nclient_timeout_s = 0.5\n",
])
def test_limits_themselves_are_accepted(tmp_path, toml):
    resolve(config_path=write_toml(tmp_path, toml))


@pytest.mark.parametrize("environ, message", [
    ({"FER_EDGE_MQTT_PORTT": "1"}, "unknown config key 'mqtt.portt' (environment variable FER_EDGE_MQTT_PORTT)"),
    ({"FER_EDGE_MODEL": "m.tflite"}, "FER_EDGE_MODEL names the [model] table, not one of its keys: FER_EDGE_MODEL_PATH"),
    ({"FER_EDGE_HTTP_ENABLED": "maybe"}, "http.enabled: expected bool, got 'maybe'"),
    ({"FER_EDGE_PIPELINE_MAX_FPS": "-1"}, "pipeline.max_fps: expected a finite number >= 0"),
    ({"FER_EDGE_PIPELINE_SEARCH_EVERY": "often"}, "pipeline.search_every: expected int, got 'often'"),
    ({"FER_EDGE_CAMERA_ID": "porch\x01"}, "camera_id: expected a non-empty name"),
    # An undecodable byte in the environment arrives as a lone surrogate: not UTF-8 for the broker.
    ({"FER_EDGE_MQTT_CLIENT_ID": "cam\udcff"}, "mqtt.client_id: expected at most 256 UTF-8 bytes"),
])
def test_bad_environment_names_the_variable(environ, message):
    with pytest.raises(ConfigError) as error:
        resolve(environ=environ)
    assert message in str(error.value)


def test_a_ca_file_that_is_not_a_certificate_names_key_and_file(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate\n")
    with pytest.raises(ConfigError) as error:
        resolve(config_path=write_toml(tmp_path, f"[mqtt]\ntls_ca = '{ca}'\n"))
    assert str(error.value).startswith(f"mqtt.tls_ca: {ca} is not a readable PEM CA certificate")


def test_a_jsonl_fifo_is_taken(tmp_path):
    # JSON lines are appended to output.jsonl, so a fifo (a consumer's pipe) is a fine target: only
    # files that are replaced (model, report) refuse one.
    os.mkfifo(tmp_path / "events")
    assert resolve({"output.jsonl": str(tmp_path / "events")}).output.jsonl == str(tmp_path / "events")


def test_a_jsonl_path_that_is_a_folder_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="output.jsonl .*: is a folder, expected a file path"):
        resolve({"output.jsonl": str(tmp_path)})


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to a read-only folder")
def test_an_unwritable_jsonl_file_is_refused(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="output.jsonl .*: cannot write into"):
            resolve({"output.jsonl": str(folder / "events.jsonl")})
    finally:
        folder.chmod(0o700)


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "daemon.toml"
    path.write_bytes(b"camera_id = \"caf\xe9\"\n")  # Latin-1, not UTF-8
    result = CliRunner().invoke(main, ["daemon", "--config", str(path), "--check-config"])
    assert result.exit_code == 1
    assert result.output == f"Error: config file {path} is not UTF-8 text (byte 0xe9 at offset 16)\n"


def test_a_video_that_cannot_be_decoded_fails_the_check(tmp_path, files):
    model, _ = files
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(os.urandom(4096))
    result = CliRunner().invoke(main, ["daemon", "--source", str(broken), "--model", str(model), "--check-config"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: source.uri: {str(broken)!r} is not a video that can be decoded (no frame could be read)"]


def test_environment_types():
    config = resolve(environ={"FER_EDGE_SOURCE_LOOP": "yes", "FER_EDGE_SMOOTHING_ALPHA": "0.5",
                              "FER_EDGE_MQTT_USERNAME": "cam", "FER_EDGE_MQTT_PASSWORD": " s3cret "})
    assert config.source.loop is True and config.smoothing.alpha == 0.5
    assert config.mqtt.password == " s3cret "  # strings are taken verbatim


def test_secrets_are_refused_on_the_command_line():
    with pytest.raises(ConfigError, match="mqtt.password is a secret"):
        resolve({"mqtt.password": "hunter2"})


def test_every_key_round_trips_through_toml():
    config = resolve(environ={"FER_EDGE_MQTT_USERNAME": "u", "FER_EDGE_MQTT_PASSWORD": "p"})
    flat = flatten(tomllib.loads(config.to_toml(mask_secrets=False)))
    assert set(flat) == set(ALL_KEYS)
    assert all(flat[key] == config.get(key) for key in ALL_KEYS)
    assert DaemonConfig().to_toml() == resolve().to_toml()


def test_check_config_prints_masked_config(tmp_path, files):
    model, video = files
    path = write_toml(tmp_path, f'camera_id = "hall"\n[mqtt]\nhost = "broker.lan"\nusername = "cam"\n'
                                f'password = "hunter2"\n[model]\npath = "{model}"\n')
    result = CliRunner().invoke(main, ["daemon", "--config", str(path), "--source", str(video), "--check-config"],
                                env={"FER_EDGE_MQTT_PORT": "8883"})
    assert result.exit_code == 0, result.output
    assert "hunter2" not in result.output
    printed = tomllib.loads(result.output)
    assert printed["mqtt"]["password"] == "********"
    assert printed["mqtt"]["port"] == 8883 and printed["camera_id"] == "hall"
    assert printed["source"]["uri"] == str(video)


@pytest.mark.parametrize("args, code, message", [
    (["--mqtt-password", "x"], 2, "mqtt.password is a secret and is not taken on the command line"),
    (["--mqtt-password", "x"], 2, "set it in the config file ([mqtt] password = ...) or in the environment as "
                                  "FER_EDGE_MQTT_PASSWORD"),
    (["--mqtt-tls-key", "k.pem"], 2, "FER_EDGE_MQTT_TLS_KEY"),
    (["--colour", "red"], 2, "--colour"),
    (["--mqtt-port", "abc"], 2, "'abc' is not a valid integer"),
    (["--mqtt-port", "70000"], 1, "mqtt.port: expected a port number 1..65535, got 70000 (command line)"),
    (["--source", "/no/such/video.mp4"], 1, "source.uri: no such file, camera or stream"),
    (["--model", "/no/such/model.tflite"], 1, "model.path: no such file: /no/such/model.tflite"),
    # --check-config makes the run's own checks: each of these passed it, then failed the run.
    (["--threads", "100000"], 1, "model.threads: expected an integer 1..64, got 100000 (command line)"),
    (["--http-host", "not a host!"], 1, "http.host, http.port: cannot listen on not a host!:8080"),
    (["--http-host", "192.0.2.1"], 1, "http.host, http.port: cannot listen on 192.0.2.1:8080 (Cannot assign"),
])
def test_bad_command_line_is_one_clear_error(files, args, code, message):
    model, video = files
    base = ["daemon", "--source", str(video), "--model", str(model), "--check-config"]
    result = CliRunner().invoke(main, base + args)
    assert result.exit_code == code
    assert message in result.output
    if code == 2 and "secret" not in result.output:
        assert "No such option" in result.output or "not a valid" in result.output
    if code == 1:
        assert result.output.count("\n") == 1  # one line: "Error: ..."


def test_example_config_documents_every_key_with_its_default(tmp_path):
    example = (REPO / "deploy" / "daemon.example.toml").read_text()
    # Everything is commented out: a copied example changes nothing and hides no FER_EDGE_* variable.
    assert resolve(config_path=write_toml(tmp_path, example)) == DaemonConfig()
    uncommented = re.sub(r"(?m)^# ([a-z_0-9]+ = )", r"\1", example)
    assert set(flatten(tomllib.loads(uncommented))) == set(ALL_KEYS)
    assert resolve(config_path=write_toml(tmp_path, uncommented)) == DaemonConfig()


SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="no systemd-analyze (Debian: apt-get install systemd)")
def test_service_unit_is_sandboxed():
    """The unit's exposure, as systemd rates it offline, is OK or better (SAFE)."""
    result = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=true", str(REPO / "deploy" / "fer-edge.service")],
                            capture_output=True, text=True, timeout=60)
    level = re.search(r"Overall exposure level for fer-edge.service: ([\d.]+) (\w+)", result.stdout)
    assert level, result.stdout + result.stderr
    assert level.group(2) in ("OK", "SAFE") and float(level.group(1)) < 4.0, level.group(0)


def test_check_config_refuses_a_calibration_the_model_does_not_have(files):
    """`model.calibration` is checked against the model's stored calibrations before the daemon runs."""
    from fer_edge.edge_runtime.classifier import SHIPPED_MODEL

    _, video = files
    base = ["daemon", "--source", str(video), "--model", str(SHIPPED_MODEL), "--check-config", "--calibration"]
    result = CliRunner().invoke(main, [*base, "nonesuch"])
    assert result.exit_code == 1 and "model.calibration:" in result.output and "nonesuch" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    ok = CliRunner().invoke(main, [*base, "neutral"])
    assert ok.exit_code == 0 and 'calibration = "neutral"' in ok.output, ok.output


@pytest.mark.parametrize("toml, message", [
    ("[model]\npath = '{text}'\n", "model.path: cannot load model {text}: "),
    ("[pipeline]\ndetector_model = '{text}'\n", "pipeline.detector_model: cannot load model {text}: "),
    ("[pipeline]\ndetector = 'haar'\ndetector_model = '{text}'\n", "pipeline.detector_model: cannot load Haar cascade"),
])
def test_check_config_loads_the_model_and_detector(tmp_path, files, toml, message):
    """A file that exists but is no model passes a check of its path; --check-config loads it, as the run does."""
    _, video = files
    text = tmp_path / "notes.tflite"
    text.write_text("not a model\n")
    path = write_toml(tmp_path, toml.format(text=text))
    result = CliRunner().invoke(main, ["daemon", "--config", str(path), "--source", str(video), "--check-config"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: " + message.format(text=text)) and result.output.count("\n") == 1


def test_check_config_leaves_the_http_port_to_a_running_daemon(files):
    """The HTTP address is checked, not the port: --check-config beside the running daemon passes."""
    model, video = files
    with socket.create_server(("127.0.0.1", 0)) as running:
        port = running.getsockname()[1]
        result = CliRunner().invoke(main, ["daemon", "--source", str(video), "--model", str(model),
                                           "--http-port", str(port), "--check-config"])
    assert result.exit_code == 0, result.output


OPENSSL = shutil.which("openssl")


@pytest.mark.skipif(OPENSSL is None, reason="no openssl binary (Debian: apt-get install openssl)")
def test_a_client_certificate_turns_tls_on(tmp_path):
    """tls_cert and tls_key without `tls = true` or tls_ca used to be ignored (plaintext MQTT): a client
    certificate now turns TLS on, so the first byte the client sends is a TLS handshake (0x16)."""
    from fer_edge.edge_runtime.daemon.mqtt import make_client

    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    subprocess.run([OPENSSL, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=camera", "-days", "1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    config = resolve(config_path=write_toml(tmp_path, f"[mqtt]\nhost = '127.0.0.1'\ntls_cert = '{cert}'\n"
                                                      f"tls_key = '{key}'\n"))
    assert config.mqtt.tls is False and config.mqtt.uses_tls
    client = make_client(config.mqtt, "probe")
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(10)
        def connect():
            with contextlib.suppress(Exception):  # the handshake fails: this server speaks no TLS
                client.connect("127.0.0.1", server.getsockname()[1])
        connecting = threading.Thread(target=connect, daemon=True)
        connecting.start()
        connection, _ = server.accept()
        with connection:
            connection.settimeout(10)
            first = connection.recv(1)
    connecting.join(10)
    assert first == b"\x16"  # a TLS record, not an MQTT CONNECT packet (0x10)
