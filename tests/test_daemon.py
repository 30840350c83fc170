"""The camera daemon end to end: a video of FER2013 faces, a real mosquitto broker, HTTP, signals.

Needs FER2013 ($FER_EDGE_DATA or ../shared/data/fer2013/fer2013.npz) and, for the MQTT tests, the
`mosquitto` binary (Debian: `apt-get install -y mosquitto`); each test starts its own broker on a
free port of 127.0.0.1 and never touches a system broker.
"""
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fer_edge.edge_runtime import scenes
from fer_edge.edge_runtime.daemon.capture import FrameGrabber
from fer_edge.edge_runtime.daemon.config import MqttConfig, resolve
from fer_edge.edge_runtime.daemon.metrics import DaemonMetrics
from fer_edge.edge_runtime.daemon.mqtt import MqttPublisher
from fer_edge.edge_runtime.daemon.service import STOP_BUDGET_S, Daemon, build_pipeline
from fer_edge.edge_runtime.errors import SourceError
from fer_edge.spec import CLASS_NAMES
from fer_edge.train.data import default_data_path

REPO = Path(__file__).resolve().parents[1]
DATA = default_data_path()
MOSQUITTO = shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if Path(p).is_file()), None)

needs_data = pytest.mark.skipif(not DATA.is_file(), reason=f"FER2013 not found at {DATA} (set FER_EDGE_DATA)")
needs_broker = pytest.mark.skipif(MOSQUITTO is None,
                                  reason="no mosquitto binary (Debian: apt-get install -y mosquitto)")
CAMERA = "cam1"
FACE_BOXES = [(30, 50, 150, 150), (290, 50, 150, 150)]
MARGIN = 0.25


# --- helpers ------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Broker:
    """A private mosquitto on a free port; kill() and start() simulate a broker crash and return."""

    def __init__(self, tmp_path: Path):
        self.port = free_port()
        self.conf = tmp_path / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.process = None

    def start(self) -> None:
        self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)

        def accepting():
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return True
            except OSError:
                return False
        wait_until(accepting, 15, "mosquitto to listen")  # slow on a loaded 2-core machine

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


@pytest.fixture
def broker(tmp_path):
    if MOSQUITTO is None:
        pytest.skip("no mosquitto binary (Debian: apt-get install -y mosquitto)")
    b = Broker(tmp_path)
    yield b
    if b.process and b.process.poll() is None:
        b.kill()


class Subscriber:
    """Collects every message under fer-edge/<camera>/#, resubscribing after each reconnect."""

    def __init__(self, port: int, camera: str = CAMERA):
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2)
        self.client.on_connect = lambda c, *_: c.subscribe(f"fer-edge/{camera}/#", qos=1)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 0.5)
        self._subscribed = threading.Event()
        self.client.connect_async("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client, userdata, message) -> None:
        with self._lock:
            self.messages.append((message.topic, message.payload, message.retain))

    def wait_subscribed(self) -> None:
        assert self._subscribed.wait(5), "subscriber never subscribed"

    def of(self, suffix: str) -> list:
        with self._lock:
            return [(p, r) for t, p, r in self.messages if t == f"fer-edge/{CAMERA}/{suffix}"]

    def json(self, suffix: str) -> list[dict]:
        return [json.loads(p) for p, _ in self.of(suffix)]

    def count(self) -> int:
        with self._lock:
            return len(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextmanager
def subscriber(port: int):
    s = Subscriber(port)
    try:
        yield s
    finally:
        s.close()


def retained_availability(port: int) -> str:
    """What a newcomer sees on the availability topic (the retained value)."""
    with subscriber(port) as s:
        found = wait_until(lambda: s.of("availability"), 5, "retained availability")
        return found[-1][0].decode()


def http_get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def check_face(face: dict) -> None:
    assert {"face_id", "since", "box", "label", "confidence", "probabilities"} <= set(face)
    assert face["label"] in CLASS_NAMES
    assert list(face["probabilities"]) == list(CLASS_NAMES)
    assert sum(face["probabilities"].values()) == pytest.approx(1.0, abs=0.05)
    assert face["confidence"] == max(face["probabilities"].values())
    assert len(face["box"]) == 4


def margin(probabilities) -> float:
    """How far the most probable class is ahead of the second."""
    top2 = np.sort(probabilities)[-2:]
    return float(top2[1] - top2[0])


def box_iou(a, b) -> float:
    from fer_edge.edge_runtime.daemon.tracking import iou
    return iou(tuple(a), tuple(b))


# --- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def video(int8_model_path, tmp_path_factory):
    """A still 480x270 video (15 fps, 4 s) of two PrivateTest faces on a synthetic background,
    with the label a fresh pipeline gives each face: the smoothed labels must agree with it.
    Faces are kept only when the small test model is clearly sure of them (top probability ahead
    of the runner-up by MARGIN), so a pixel of box jitter between frames cannot flip a label."""
    if not DATA.is_file():
        pytest.skip(f"FER2013 not found at {DATA}")
    import cv2

    data = np.load(DATA)
    faces = data["images"][data["usage"] == "PrivateTest"]
    pipeline = build_pipeline(resolve({"model.path": str(int8_model_path), "pipeline.detect_every": 1}))
    rng = np.random.default_rng(0)
    frame = scenes.background(rng, 480, 270)
    chosen = 0
    for face in faces:  # keep faces the detector finds where they were pasted
        if chosen == len(FACE_BOXES):
            break
        x, y, w, h = FACE_BOXES[chosen]
        trial = frame.copy()
        trial[y:y + h, x:x + w] = cv2.resize(face, (w, h), interpolation=cv2.INTER_CUBIC)
        found = pipeline.process(trial).faces
        if any(box_iou(f.box, FACE_BOXES[chosen]) > 0.5 and margin(f.probabilities) >= MARGIN for f in found):
            frame, chosen = trial, chosen + 1
    path = tmp_path_factory.mktemp("video") / "faces.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 15.0, (480, 270))
    for _ in range(60):
        writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
    writer.release()
    from fer_edge.edge_runtime.sources import read_frames

    pipeline.reset()
    first = next(iter(read_frames(str(path))))
    expected = [(f.box, f.label) for f in pipeline.process(first).faces]
    assert len(expected) == 2, expected
    return path, expected


@pytest.fixture(scope="module")
def blank_video(tmp_path_factory):
    """Two seconds of a faceless gray scene at 15 fps: enough for the daemon to run, no dataset needed."""
    import cv2

    path = tmp_path_factory.mktemp("blank") / "blank.mp4"
    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 15.0, (160, 120))
    for _ in range(30):
        writer.write(rng.integers(90, 110, (120, 160, 3), dtype=np.uint8))
    writer.release()
    return path


def make_config(model: Path, video_path: Path, **overrides):
    flags = {"model.path": str(model), "source.uri": str(video_path), "camera_id": CAMERA,
             "http.port": free_port(), "source.loop": True, "pipeline.max_fps": 0.0, "smoothing.min_hits": 2,
             "output.state_interval_s": 0.3, "mqtt.retry_min_s": 0.2, "mqtt.retry_max_s": 1.0,
             "source.retry_min_s": 0.1, "source.retry_max_s": 0.4}
    flags.update(overrides)
    return resolve(flags)


@contextmanager
def running(daemon: Daemon):
    thread = threading.Thread(target=daemon.run)
    thread.start()
    try:
        yield daemon
    finally:
        daemon.stop()
        thread.join(5)
        assert not thread.is_alive()


def processed(daemon: Daemon) -> float:
    return daemon.metrics.registry.get_sample_value("fer_edge_frames_processed_total")


# --- tests --------------------------------------------------------------------------------------

@needs_broker
def test_mqtt_buffer_is_bounded_and_flushed_on_connect(broker):
    """While the broker is away, events queue up to the bound (oldest dropped, counted) and only
    the newest retained state is kept; all of it goes out, in order, once connected."""
    metrics = DaemonMetrics()
    publisher = MqttPublisher(MqttConfig(host="127.0.0.1", port=broker.port, buffer=5, retry_min_s=0.1,
                                         retry_max_s=0.2), CAMERA, metrics)
    for i in range(8):
        publisher.publish("events", {"n": i})
        publisher.publish("state", {"n": i}, retain=True)
    assert metrics.registry.get_sample_value("fer_edge_mqtt_dropped_total") == 3
    broker.start()
    with subscriber(broker.port) as s:
        s.wait_subscribed()
        publisher.start()
        wait_until(lambda: len(s.of("events")) == 5 and s.of("state"), 5, "the buffered messages")
        assert [m["n"] for m in s.json("events")] == [3, 4, 5, 6, 7]
        assert s.json("state") == [{"n": 7}]
        wait_until(lambda: s.of("availability"), 5, "availability")
        assert s.of("availability")[-1][0] == b"online"
    publisher.close()
    assert retained_availability(broker.port) == "offline"
    assert metrics.registry.get_sample_value("fer_edge_mqtt_connected") == 0


@needs_data
@needs_broker
def test_daemon_survives_broker_down_at_start_and_restart(broker, int8_model_path, video):
    path, expected = video
    config = make_config(int8_model_path, path, **{"mqtt.host": "127.0.0.1", "mqtt.port": broker.port,
                                                   "source.pace": True})
    with running(Daemon(config)) as daemon:
        # Broker down at start: frames are processed anyway and /healthz says why it is unhealthy.
        wait_until(lambda: processed(daemon) >= 10, 10, "frames processed without a broker")
        status, body = http_get(config.http.port, "/healthz")
        health = json.loads(body)
        assert status == 503 and health["broker_connected"] is False and health["source_ok"] is True

        broker.start()
        with subscriber(broker.port) as s:
            states = wait_until(lambda: [m for m in s.json("state") if len(m["faces"]) == 2], 10, "state with 2 faces")
            assert s.of("availability")[-1][0] == b"online"
            state = states[-1]
            assert state["camera_id"] == CAMERA and state["source"]["state"] == "ok"
            for face in state["faces"]:
                check_face(face)
            labels = {f["label"] for f in state["faces"]}
            assert labels == {label for _, label in expected}, (state["faces"], expected)
            for box, label in expected:
                assert any(box_iou(f["box"], box) > 0.7 and f["label"] == label for f in state["faces"])
            assert http_get(config.http.port, "/healthz")[0] == 200

            # The broker dies mid-run: processing goes on, then messages resume after its restart.
            broker.kill()
            wait_until(lambda: http_get(config.http.port, "/healthz")[0] == 503, 5, "/healthz to report the broker")
            before = processed(daemon)
            wait_until(lambda: processed(daemon) > before + 10, 10, "frames processed while the broker is away")
            broker.start()
            wait_until(lambda: daemon.mqtt.connected, 10, "the daemon to reconnect")
            seen = s.count()
            wait_until(lambda: s.count() > seen and s.of("state"), 10, "messages after the broker restart")
        assert daemon.metrics.registry.get_sample_value("fer_edge_mqtt_reconnects_total") >= 1
        assert retained_availability(broker.port) == "online"

        status, body = http_get(config.http.port, "/state")
        assert status == 200 and len(json.loads(body)["faces"]) == 2
        status, body = http_get(config.http.port, "/metrics")
        text = body.decode()
        for name in ("fer_edge_frames_captured_total", "fer_edge_frames_dropped_total", "fer_edge_faces 2.0",
                     'fer_edge_stage_latency_seconds_count{stage="detect"}', "fer_edge_mqtt_reconnects_total"):
            assert name in text, name
        assert http_get(config.http.port, "/nothing")[0] == 404
    assert retained_availability(broker.port) == "offline"


@needs_data
@needs_broker
def test_daemon_reports_a_lost_camera_and_resumes(broker, int8_model_path, video):
    """A live source delivers, is unplugged, fails to reopen twice, then comes back."""
    path, _ = video
    from fer_edge.edge_runtime.sources import read_frames

    openings = []

    def flaky_camera(uri):
        openings.append(time.monotonic())
        if len(openings) in (2, 3):
            raise SourceError("cannot open /dev/video0")
        while True:  # a camera never ends: replay the clip (a loaded machine may take longer than it lasts)
            for index, frame in enumerate(read_frames(str(path))):
                if len(openings) == 1 and index == 20:
                    raise SourceError("camera unplugged")
                yield frame
                time.sleep(1 / 30)

    broker.start()
    config = make_config(int8_model_path, path, **{"source.uri": "/dev/video0", "mqtt.host": "127.0.0.1",
                                                   "mqtt.port": broker.port})
    daemon = Daemon(config)
    daemon.grabber = FrameGrabber(config.source, daemon.metrics, read_frames=flaky_camera)
    with subscriber(broker.port) as s:
        s.wait_subscribed()
        with running(daemon):
            lost = wait_until(lambda: [e for e in s.json("events") if e["type"] == "source_lost"], 10, "source_lost")
            assert lost[0]["error"] == "camera unplugged"
            restored = wait_until(lambda: [e for e in s.json("events") if e["type"] == "source_restored"], 10,
                                  "source_restored")
            assert restored and len(openings) == 4
            # Back-off: 0.1 s after the loss, then 0.2 and 0.4 after the failed reopenings.
            gaps = np.diff(openings)
            assert gaps[1] >= 0.18 and gaps[2] >= 0.38, gaps
            wait_until(lambda: http_get(config.http.port, "/healthz")[0] == 200, 5, "healthy again")
            types = [e["type"] for e in s.json("events")]
            # Faces are dropped with the source and found again after it returns.
            assert types.index("source_lost") < types.index("source_restored")
            assert "face_lost" in types[types.index("source_lost"):]
            wait_until(lambda: "face_appeared" in [e["type"] for e in s.json("events")][types.index("source_restored"):],
                       10, "faces after the restore")
    assert daemon.metrics.registry.get_sample_value("fer_edge_source_reconnects_total") == 3


@needs_data
def test_unlooped_video_runs_to_its_end_with_jsonl(int8_model_path, video, tmp_path):
    path, expected = video
    out = tmp_path / "events.jsonl"
    config = make_config(int8_model_path, path, **{"source.loop": False, "source.pace": False,
                                                   "output.jsonl": str(out), "output.summary_interval_s": 0.05,
                                                   "http.enabled": False})
    daemon = Daemon(config)
    assert daemon.run() == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    appeared = [r for r in records if r["type"] == "face_appeared"]
    assert sorted(r["label"] for r in appeared) == sorted(label for _, label in expected)
    for record in appeared:
        check_face(record)
    assert records[-1]["type"] == "source_ended"
    summaries = [r for r in records if r["type"] == "summary"]
    assert summaries and {"fps", "frames_processed", "frames_dropped", "faces"} <= set(summaries[0])
    # Unpaced files are processed frame by frame: nothing is dropped.
    assert processed(daemon) == 60
    assert daemon.metrics.registry.get_sample_value("fer_edge_frames_dropped_total") == 0


@needs_data
@needs_broker
def test_daemon_process_stops_on_sigterm(broker, int8_model_path, video, tmp_path):
    """The real command in a subprocess: events over MQTT, HTTP endpoints, SIGTERM -> exit 0 within budget, `offline`."""
    path, expected = video
    http_port = free_port()
    config = tmp_path / "daemon.toml"
    config.write_text(f'camera_id = "{CAMERA}"\n[mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\n'
                      f'[output]\nstate_interval_s = 0.3\n')
    broker.start()
    command = [sys.executable, "-m", "fer_edge", "daemon", "--config", str(config),
               "--source", str(path), "--model", str(int8_model_path), "--loop", "--max-fps", "30",
               "--http-port", str(http_port), "--jsonl", "-"]
    with subscriber(broker.port) as s:
        s.wait_subscribed()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            appeared = wait_until(lambda: [e for e in s.json("events") if e["type"] == "face_appeared"], 30,
                                  "face_appeared events over MQTT", interval=0.1)
            for event in appeared:
                assert event["camera_id"] == CAMERA and isinstance(event["ts"], float)
                check_face(event)
            assert {e["label"] for e in appeared} <= {label for _, label in expected}
            assert s.of("availability")[-1][0] == b"online"
            wait_until(lambda: http_get(http_port, "/healthz")[0] == 200, 10, "/healthz 200")
            health = json.loads(http_get(http_port, "/healthz")[1])
            assert health["broker_connected"] is True and health["last_frame_age_s"] < 1
            wait_until(lambda: len(json.loads(http_get(http_port, "/state")[1])["faces"]) == 2, 5, "/state with 2 faces")
            assert b"fer_edge_frames_processed_total" in http_get(http_port, "/metrics")[1]
        finally:
            start = time.monotonic()
            process.send_signal(signal.SIGTERM)
            stdout, stderr = process.communicate(timeout=10)
            elapsed = time.monotonic() - start
    assert process.returncode == 0, stderr
    # The daemon's own budget, plus one frame in flight and the interpreter's exit.
    assert elapsed < STOP_BUDGET_S + 0.5, f"took {elapsed:.2f} s to stop (budget {STOP_BUDGET_S:.1f} s)"
    assert retained_availability(broker.port) == "offline"
    lines = [json.loads(line) for line in stdout.splitlines()]  # stdout carries JSON lines only
    assert [r["type"] for r in lines if r["type"] == "face_appeared"]
    assert f"http://127.0.0.1:{http_port}" in stderr  # loopback unless another address is named


def test_a_video_that_cannot_be_read_fails_once_and_exits_1(blank_video, tmp_path):
    """A file source that errors is not retried like a camera: one `source_failed`, exit status 1."""
    from fer_edge.edge_runtime.classifier import SHIPPED_MODEL

    out = tmp_path / "events.jsonl"
    config = make_config(SHIPPED_MODEL, blank_video, **{"output.jsonl": str(out), "http.enabled": False})
    openings = []

    def broken_file(uri):
        openings.append(uri)
        raise SourceError(f"cannot open {uri}")
        yield  # a generator, like sources.read_frames

    daemon = Daemon(config)
    daemon.grabber = FrameGrabber(config.source, daemon.metrics, read_frames=broken_file)
    started = time.monotonic()
    assert daemon.run() == 1
    assert time.monotonic() - started < 2 and openings == [str(blank_video)]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["type"] for r in records] == ["source_failed"]
    assert records[0]["error"] == f"cannot open {blank_video}"


def test_frames_above_the_memory_cap_fail_the_source_by_name(blank_video, tmp_path):
    """`source.max_frame_pixels` is predict's memory cap: a 160x120 video under a 10,000-pixel cap
    fails once, named, instead of being decoded."""
    from fer_edge.edge_runtime.classifier import SHIPPED_MODEL

    out = tmp_path / "events.jsonl"
    config = make_config(SHIPPED_MODEL, blank_video, **{"output.jsonl": str(out), "http.enabled": False,
                                                       "source.max_frame_pixels": 10_000, "source.loop": False})
    assert Daemon(config).run() == 1
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["type"] for r in records] == ["source_failed"]
    assert str(blank_video) in records[0]["error"] and "160x120 frame" in records[0]["error"]


def test_an_idle_http_client_is_disconnected(blank_video):
    from fer_edge.edge_runtime.classifier import SHIPPED_MODEL

    config = make_config(SHIPPED_MODEL, blank_video, **{"http.client_timeout_s": 0.5})
    with running(Daemon(config)):
        wait_until(lambda: http_get(config.http.port, "/healthz")[0] in (200, 503), 5, "the HTTP server")
        with socket.create_connection(("127.0.0.1", config.http.port), 5) as idle:
            idle.settimeout(5)
            started = time.monotonic()
            assert idle.recv(100) == b""  # the server closed it, having received nothing
            assert 0.4 < time.monotonic() - started < 3
        assert http_get(config.http.port, "/healthz")[0] in (200, 503)  # other clients are still served


def test_a_client_that_resets_mid_response_leaves_no_traceback(capfd):
    """A reset before the answer is written: a debug line, not socketserver's traceback on stderr."""
    import struct

    from fer_edge.edge_runtime.daemon.http_server import StatusServer

    def slow_metrics() -> bytes:
        time.sleep(0.3)  # the client has reset the connection by the time the answer is written
        return b"x" * 100_000

    server = StatusServer("127.0.0.1", 0, lambda: (True, {}), dict, slow_metrics)
    server.start()
    try:
        for _ in range(3):
            client = socket.create_connection(server.address, 5)
            client.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
            client.close()
        time.sleep(1)
        assert http_get(server.address[1], "/healthz")[0] == 200
    finally:
        server.stop()
    assert "Traceback" not in capfd.readouterr().err


def test_head_requests_get_the_headers_of_a_get():
    """Health checkers often ask with HEAD: the status and headers of GET, no body."""
    from fer_edge.edge_runtime.daemon.http_server import StatusServer

    server = StatusServer("127.0.0.1", 0, lambda: (False, {"why": "no frame"}), dict, lambda: b"m 1\n")
    server.start()
    try:
        for path, status in (("/healthz", 503), ("/metrics", 200), ("/nope", 404)):
            request = urllib.request.Request(f"http://127.0.0.1:{server.address[1]}{path}", method="HEAD")
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    got, headers, body = response.status, response.headers, response.read()
            except urllib.error.HTTPError as error:
                got, headers, body = error.code, error.headers, error.read()
            assert (got, body) == (status, b""), path
            assert int(headers["Content-Length"]) == len(http_get(server.address[1], path)[1]), path
    finally:
        server.stop()


def test_sighup_reloads_the_config_or_keeps_the_running_one(blank_video, tmp_path):
    """The real command: SIGHUP re-reads the config file; an invalid one is logged and ignored."""
    http_port = free_port()
    config = tmp_path / "daemon.toml"
    config.write_text(f'camera_id = "before"\n[source]\nuri = "{blank_video}"\nloop = true\n'
                      f'[http]\nport = {http_port}\n')
    process = subprocess.Popen([sys.executable, "-m", "fer_edge", "daemon", "--config", str(config)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def camera_id():
        try:
            return json.loads(http_get(http_port, "/state")[1])["camera_id"]
        except (OSError, ValueError):
            return None
    try:
        wait_until(lambda: camera_id() == "before", 30, "the daemon to serve /state", interval=0.2)
        config.write_text(config.read_text().replace('"before"', '"after"'))
        process.send_signal(signal.SIGHUP)
        wait_until(lambda: camera_id() == "after", 30, "the reloaded camera_id", interval=0.2)
        config.write_text(config.read_text().replace("loop = true", "loop = 3"))
        process.send_signal(signal.SIGHUP)
        time.sleep(2)
        assert process.poll() is None and camera_id() == "after"
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0, stderr
    assert "SIGHUP: configuration reloaded" in stderr
    assert "SIGHUP: source.loop: expected bool, got 3" in stderr and "keeping the running configuration" in stderr


def test_a_reload_that_cannot_start_keeps_the_running_daemon(blank_video, tmp_path):
    """The real command: SIGHUP with a config that validates but cannot start (a model file that is
    not a model, an HTTP port another program holds) is logged in one line each; the daemon goes on
    serving with its running configuration, and SIGTERM still ends it with status 0."""
    http_port = free_port()
    config = tmp_path / "daemon.toml"
    good = f'camera_id = "steady"\n[source]\nuri = "{blank_video}"\nloop = true\n[http]\nport = {http_port}\n'
    config.write_text(good)
    not_a_model = tmp_path / "notes.tflite"
    not_a_model.write_text("this is not a model\n")
    process = subprocess.Popen([sys.executable, "-m", "fer_edge", "daemon", "--config", str(config)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log: list[str] = []
    reader = threading.Thread(target=lambda: log.extend(process.stderr), daemon=True)
    reader.start()

    def refusals() -> list[str]:
        return [line for line in list(log) if "SIGHUP:" in line]

    def frames_processed() -> float:
        try:
            metrics = http_get(http_port, "/metrics")[1].decode()
        except OSError:
            return -1.0
        line = next(m for m in metrics.splitlines() if m.startswith("fer_edge_frames_processed_total "))
        return float(line.split()[1])
    try:
        wait_until(lambda: frames_processed() > 0, 30, "the daemon to process frames", interval=0.2)
        config.write_text(good + f'[model]\npath = "{not_a_model}"\n')
        before = frames_processed()
        process.send_signal(signal.SIGHUP)
        wait_until(lambda: len(refusals()) == 1, 20, "the bad model to be refused", interval=0.2)
        # The running daemon was never stopped: its counter goes on from where it was.
        wait_until(lambda: frames_processed() > before + 10, 20, "frames after the refused reload", interval=0.2)
        assert not [line for line in list(log) if line.rstrip().endswith("service: stopping")]
        with socket.socket() as holder:  # a port another program holds: found only when the daemon starts
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            config.write_text(good.replace(f"port = {http_port}", f"port = {holder.getsockname()[1]}"))
            process.send_signal(signal.SIGHUP)
            wait_until(lambda: len(refusals()) == 2, 20, "the taken port to be refused", interval=0.2)
            wait_until(lambda: frames_processed() > 0, 20, "the running configuration to serve again", interval=0.2)
            assert json.loads(http_get(http_port, "/state")[1])["camera_id"] == "steady"
        assert process.poll() is None
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)
        reader.join(5)
    stderr = "".join(log)
    assert process.returncode == 0, stderr
    first, second = refusals()
    assert f"SIGHUP: model.path: cannot load model {not_a_model}" in first
    assert "SIGHUP: http.host, http.port: cannot listen on" in second
    assert all(line.rstrip().endswith("; keeping the running configuration") for line in (first, second))
    assert "configuration reloaded" not in stderr and "Traceback" not in stderr


def test_a_closed_stdout_stops_the_daemon_with_one_line(blank_video, tmp_path):
    """`fer-edge daemon --jsonl - | head -1`: when the reader goes, the daemon stops with one line
    naming output.jsonl, not a traceback or a misleading "cannot start"."""
    from fer_edge.edge_runtime.classifier import SHIPPED_MODEL

    config = tmp_path / "daemon.toml"
    config.write_text("[output]\nsummary_interval_s = 0.2\n")
    process = subprocess.Popen([sys.executable, "-m", "fer_edge", "daemon", "--config", str(config),
                                "--source", str(blank_video), "--model", str(SHIPPED_MODEL), "--loop", "--no-http",
                                "--jsonl", "-"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert json.loads(process.stdout.readline())  # one JSON line, then the reader goes away
        process.stdout.close()
        stderr = process.stderr.read()
        process.wait(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 1, stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
    assert errors == ["Error: output.jsonl: stdout was closed by its reader (a pipe that ended); stopping"], stderr
