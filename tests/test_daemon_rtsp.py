"""IP cameras: the daemon on a real RTSP server on 127.0.0.1 (GStreamer's gst-rtsp-server, run by
Debian's python3, see rtsp_server.py) and on a TCP server that accepts and never answers (a hung
camera). A dead or hung stream must show on /healthz, MQTT and JSON lines within the configured
timeout, and processing must resume when the stream returns.
"""
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fer_edge.edge_runtime.classifier import SHIPPED_MODEL
from fer_edge.edge_runtime.daemon.service import Daemon
from fer_edge.edge_runtime.sources import STREAM_TIMEOUTS_S
from test_daemon import (CAMERA, broker, free_port, http_get, make_config, processed, running,  # noqa: F401
                         subscriber, wait_until)

SYSTEM_PYTHON = "/usr/bin/python3"
SERVER = Path(__file__).with_name("rtsp_server.py")
TIMEOUT_S = 1.0  # open and read timeouts of the stream in these tests


def _gst_rtsp_available() -> bool:
    probe = ("import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
             "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
             "assert all(Gst.ElementFactory.find(e) for e in ('videotestsrc', 'jpegenc', 'rtpjpegpay'))")
    try:
        return subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


needs_rtsp = pytest.mark.skipif(not _gst_rtsp_available(), reason=(
    "no GStreamer RTSP server for /usr/bin/python3 (Debian: apt-get install python3-gi "
    "gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base gstreamer1.0-plugins-good)"))


class RtspServer:
    """The test stream at rtsp://127.0.0.1:<port>/cam; hang() freezes it, kill() ends it, start() again."""

    def __init__(self):
        self.port = free_port()
        self.url = f"rtsp://127.0.0.1:{self.port}/cam"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([SYSTEM_PYTHON, str(SERVER), str(self.port)], stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, text=True)
        ready = threading.Event()
        threading.Thread(target=lambda: self.process.stdout.readline() == "ready\n" and ready.set(),
                         daemon=True).start()
        assert ready.wait(20), "the RTSP server did not start"

    def hang(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGCONT)
        self.process.kill()
        self.process.wait()


@pytest.fixture
def rtsp_server():
    server = RtspServer()
    yield server
    if server.process and server.process.poll() is None:
        server.kill()


@pytest.fixture
def silent_server():
    """A camera that accepts the TCP connection and never says a word."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"rtsp://127.0.0.1:{listener.getsockname()[1]}/cam", accepted
    stop.set()
    thread.join(2)
    for connection in accepted:
        connection.close()
    listener.close()


def stream_config(url: str, tmp_path: Path, broker_port: int):
    return make_config(SHIPPED_MODEL, Path("unused"), **{
        "source.uri": url, "source.open_timeout_s": TIMEOUT_S, "source.read_timeout_s": TIMEOUT_S,
        "mqtt.host": "127.0.0.1", "mqtt.port": broker_port, "output.jsonl": str(tmp_path / "events.jsonl")})


def jsonl_types(path: Path) -> list[str]:
    return [json.loads(line)["type"] for line in path.read_text().splitlines()] if path.exists() else []


def lost_everywhere(config, s, path: Path, since: int = 0) -> dict:
    """The source is reported lost on /healthz (503), MQTT (event and retained state) and JSON lines."""
    status, body = http_get(config.http.port, "/healthz")
    events = [e for e in s.json("events") if e["type"] == "source_lost"]
    states = s.json("state")
    if status == 503 and len(events) > since and states and states[-1]["source"]["state"] == "lost" \
            and jsonl_types(path).count("source_lost") > since:
        return json.loads(body)
    return {}


def test_hung_camera_is_reported_within_the_open_timeout(broker, silent_server, tmp_path):
    url, accepted = silent_server
    broker.start()
    config = stream_config(url, tmp_path, broker.port)
    with subscriber(broker.port) as s:
        s.wait_subscribed()
        started = time.monotonic()
        with running(Daemon(config)) as daemon:
            health = wait_until(lambda: lost_everywhere(config, s, tmp_path / "events.jsonl"), 10,
                                "the hung camera to be reported lost", interval=0.1)
            elapsed = time.monotonic() - started
            assert accepted, "the daemon never connected to the camera"
            assert health["source_state"] == "lost" and f"cannot open {url} within 1 s" in health["source_error"]
            assert elapsed < TIMEOUT_S + 2.5, f"reported after {elapsed:.1f} s"
            # It keeps trying, with back-off, and never processes a frame.
            wait_until(lambda: len(accepted) >= 3, 10, "reconnection attempts")
            assert processed(daemon) == 0


@needs_rtsp
def test_rtsp_stream_hangs_dies_and_returns(broker, rtsp_server, tmp_path):
    broker.start()
    rtsp_server.start()
    config = stream_config(rtsp_server.url, tmp_path, broker.port)
    jsonl = tmp_path / "events.jsonl"
    with subscriber(broker.port) as s:
        s.wait_subscribed()
        with running(Daemon(config)) as daemon:
            wait_until(lambda: processed(daemon) >= 10, 20, "frames from the RTSP stream")
            wait_until(lambda: http_get(config.http.port, "/healthz")[0] == 200, 5, "/healthz 200")

            # The camera hangs mid-stream: no frame for read_timeout_s -> lost everywhere.
            rtsp_server.hang()
            hung_at = time.monotonic()
            health = wait_until(lambda: lost_everywhere(config, s, jsonl), 10, "the hang to be reported",
                                interval=0.1)
            assert time.monotonic() - hung_at < TIMEOUT_S + 2.5
            assert f"no frame for {TIMEOUT_S:g} s" in health["source_error"]

            # It dies and comes back on the same address: processing resumes.
            rtsp_server.kill()
            rtsp_server.start()
            wait_until(lambda: "source_restored" in [e["type"] for e in s.json("events")], 20, "source_restored")
            resumed = processed(daemon)
            wait_until(lambda: processed(daemon) >= resumed + 10, 10, "frames after the restart")
            wait_until(lambda: http_get(config.http.port, "/healthz")[0] == 200, 5, "/healthz 200 again")
            assert s.json("state")[-1]["source"]["state"] == "ok"
    types = jsonl_types(jsonl)
    assert types.index("source_lost") < types.index("source_restored")
    assert daemon.metrics.registry.get_sample_value("fer_edge_source_reconnects_total") >= 1


def test_predict_gives_up_on_a_hung_camera_within_the_stream_timeout(silent_server):
    """`fer-edge predict` bounds its waits on a stream as the daemon does (FFmpeg's own: 30 s to open)."""
    url, accepted = silent_server
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "fer_edge", "predict", url], capture_output=True, text=True,
                            timeout=60)
    elapsed = time.monotonic() - started
    assert accepted, "predict never connected to the camera"
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"cannot open {url} within {STREAM_TIMEOUTS_S[0]:g} s" in result.stderr
    assert elapsed < STREAM_TIMEOUTS_S[0] + 10, f"gave up after {elapsed:.1f} s"
