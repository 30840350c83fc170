"""`fer-edge daemon`: the command line of the camera daemon."""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING, Callable

import click

from fer_edge.edge_runtime.daemon.config import SECRET_KEYS, DaemonConfig, resolve, secret_on_command_line
from fer_edge.edge_runtime.detection import DETECTORS
from fer_edge.errors import FerEdgeError

if TYPE_CHECKING:
    from fer_edge.edge_runtime.pipeline import EmotionPipeline

log = logging.getLogger("fer_edge.edge_runtime.daemon")

# Flag -> config key. Secrets (mqtt.password, mqtt.tls_key) have no flag on purpose: flags are
# visible to every user in `ps`.
FLAGS: tuple[tuple[str, str, dict], ...] = (
    ("--source", "source.uri", dict(metavar="SRC", help="Camera index or /dev/videoN, `picamera`, a video file, "
                                                        "or an rtsp:// or http(s):// stream URL.")),
    ("--model", "model.path", dict(metavar="M.tflite", help="Emotion model (default: the one shipped with fer-edge).")),
    ("--camera-id", "camera_id", dict(help="Name of this camera in MQTT topics and messages.")),
    ("--loop/--no-loop", "source.loop", dict(help="Restart a video file at its end.")),
    ("--pace/--no-pace", "source.pace", dict(help="Play a video file at its own frame rate (--no-pace: as fast as possible).")),
    ("--detector", "pipeline.detector", dict(help=f"Face detector: {', '.join(DETECTORS)}.")),
    ("--turned-search/--no-turned-search", "pipeline.turned_search",
     dict(help="Also search frames turned +-30 degrees for tilted heads (yunet; ~1.6x the detection CPU).")),
    ("--align/--no-align", "pipeline.align", dict(help="Turn each face upright by its eye line before cropping.")),
    ("--detect-every", "pipeline.detect_every", dict(type=int, metavar="N", help="Detect faces on every Nth frame.")),
    ("--search-every", "pipeline.search_every",
     dict(type=int, metavar="N", help="Search the whole frame on every Nth detection; in between, find the known "
                                      "faces again around their last place.")),
    ("--max-fps", "pipeline.max_fps", dict(type=float, help="Process at most this many frames a second (0: no cap).")),
    ("--threads", "model.threads", dict(type=int, help="Interpreter threads.")),
    ("--device", "model.device", dict(help="cpu, edgetpu, edgetpu:usb or edgetpu:pci.")),
    ("--tta", "model.tta", dict(help="none, or flip: average each face with its mirror image.")),
    ("--calibration", "model.calibration", dict(help="A calibration stored beside the model by `fer-edge calibrate`.")),
    ("--jsonl", "output.jsonl", dict(metavar="PATH|-", help="Write face events and summaries as JSON lines.")),
    ("--mqtt-host", "mqtt.host", dict(help="MQTT broker host (credentials and TLS keys: config file or environment).")),
    ("--mqtt-port", "mqtt.port", dict(type=int, help="MQTT broker port.")),
    ("--http/--no-http", "http.enabled", dict(help="Serve /healthz, /state and /metrics.")),
    ("--http-host", "http.host", dict(help="HTTP listen address (default 127.0.0.1: this machine only).")),
    ("--http-port", "http.port", dict(type=int, help="HTTP port.")),
    ("--log-level", "log_level", dict(help="debug, info, warning or error.")),
)


def _remove_discovery(config: DaemonConfig) -> None:
    from fer_edge.edge_runtime.daemon import discovery

    if not config.mqtt.host:
        raise click.UsageError("--remove-discovery needs the broker: set mqtt.host (or --mqtt-host)")
    for topic in discovery.remove(config):
        click.echo(f"cleared {topic}")


def _param(key: str) -> str:
    return key.replace(".", "__")


def _with_config_flags(command):
    for declaration, key, options in reversed(FLAGS):
        command = click.option(declaration, _param(key), default=None, **options)(command)
    for key in sorted(SECRET_KEYS):
        command = _refuse_secret(key)(command)
    return command


def _refuse_secret(key: str):
    """A hidden flag for a secret, so that trying it says where the secret goes instead of 'no such option'."""
    def refuse(ctx, param, value):
        if value is not None:
            raise click.UsageError(secret_on_command_line(key), ctx)
    return click.option("--" + key.replace(".", "-").replace("_", "-"), hidden=True, expose_value=False,
                        callback=refuse, is_eager=True)


def _run(config: DaemonConfig, pipeline: EmotionPipeline, load: Callable[[], DaemonConfig]) -> int:
    """Run daemons until one stops for good. SIGTERM and Ctrl-C stop cleanly. SIGHUP (`systemctl
    reload`) reloads the configuration: the new one is validated and its model and detector loaded
    while the running daemon goes on, and only then does it replace the running one. A new config
    that is invalid or cannot start (a model that does not load, an HTTP port in use) is logged in
    one line, and the running configuration is kept."""
    from fer_edge.edge_runtime.daemon.service import Daemon, prepare

    logging.basicConfig(level=config.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    hangup, terminate = threading.Event(), threading.Event()
    prepared: list = []  # the reloaded (config, pipeline), once ready
    current: list = []  # the running daemon

    def refused(error: Exception) -> None:
        log.error("SIGHUP: %s; keeping the running configuration", error)

    def reloader() -> None:  # a thread: loading a model must not pause the running daemon
        while True:
            hangup.wait()
            hangup.clear()
            try:
                new = load()
                prepared[:] = [(new, prepare(new))]
            except (FerEdgeError, OSError) as error:  # ConfigError included
                refused(error)
                continue
            current[0].stop()  # after `prepared` is set: see start()

    def start(daemon: Daemon) -> None:
        current[:] = [daemon]
        if terminate.is_set() or prepared:  # a signal or reload that came while it was being built
            daemon.stop()

    def on_terminate(*_) -> None:
        terminate.set()
        current[0].stop()

    start(Daemon(config, pipeline))
    signal.signal(signal.SIGHUP, lambda *_: hangup.set())
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_terminate)
    threading.Thread(target=reloader, name="fer-edge-reload", daemon=True).start()
    while True:
        status = current[0].run()
        if terminate.is_set() or not prepared:
            return status
        new, new_pipeline = prepared.pop()
        try:  # what prepare() cannot check while the old daemon runs, e.g. a port another program holds
            daemon = Daemon(new, new_pipeline)
        except (FerEdgeError, OSError) as error:
            refused(error)
            pipeline.reset()  # the running configuration again, its pipeline kept and started afresh
            start(Daemon(config, pipeline))
            continue
        config, pipeline = new, new_pipeline
        logging.getLogger().setLevel(config.log_level.upper())
        log.info("SIGHUP: configuration reloaded")
        start(daemon)


@click.command("daemon")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="FER_EDGE_CONFIG",
              help="TOML config file (also $FER_EDGE_CONFIG). Flags override it; it overrides FER_EDGE_* variables.")
@click.option("--check-config", is_flag=True, help="Validate the configuration, print it (secrets masked) and exit.")
@click.option("--remove-discovery", is_flag=True,
              help="Retire this camera from Home Assistant: clear its discovery configs and its retained "
                   "MQTT state and availability on the configured broker, then exit (stop its daemon first).")
@_with_config_flags
def daemon(config_path: str | None, check_config: bool, remove_discovery: bool, **flags) -> None:
    """Run the camera daemon: faces and smoothed emotions to JSON lines, MQTT and HTTP.

    No frame or face image is written or sent anywhere. Stops cleanly (MQTT `offline`) on SIGTERM
    or Ctrl-C; SIGHUP reloads the configuration; a non-looped video file stops it at its end.
    """
    # paho, prometheus-client and LiteRT load only when the verb runs: other verbs stay light.
    from fer_edge.edge_runtime.daemon.service import prepare

    def load() -> DaemonConfig:
        return resolve({key: flags[_param(key)] for _, key, _ in FLAGS}, config_path, os.environ)

    try:
        config = load()
        if remove_discovery:
            _remove_discovery(config)
            return
        pipeline = prepare(config)  # the run's own checks, the model and detector loaded
        if check_config:
            click.echo(config.to_toml(mask_secrets=True), nl=False)
            return
        sys.exit(_run(config, pipeline, load))
    except FerEdgeError as error:  # ConfigError included
        raise click.ClickException(str(error)) from None
    except OSError as error:  # e.g. the HTTP port is taken
        raise click.ClickException(f"cannot start: {error}") from None
