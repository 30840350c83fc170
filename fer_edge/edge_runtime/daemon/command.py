"""`fer-edge daemon`: the command line of the camera daemon."""
from __future__ import annotations

import logging
import os
import signal
import sys

import click

from fer_edge.edge_runtime.daemon.config import DaemonConfig, resolve
from fer_edge.edge_runtime.detection import DETECTORS
from fer_edge.errors import FerEdgeError

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
    ("--detect-every", "pipeline.detect_every", dict(type=int, metavar="N", help="Detect faces on every Nth frame.")),
    ("--max-fps", "pipeline.max_fps", dict(type=float, help="Process at most this many frames a second (0: no cap).")),
    ("--threads", "model.threads", dict(type=int, help="Interpreter threads.")),
    ("--device", "model.device", dict(help="cpu, edgetpu, edgetpu:usb or edgetpu:pci.")),
    ("--jsonl", "output.jsonl", dict(metavar="PATH|-", help="Write face events and summaries as JSON lines.")),
    ("--mqtt-host", "mqtt.host", dict(help="MQTT broker host (credentials and TLS keys: config file or environment).")),
    ("--mqtt-port", "mqtt.port", dict(type=int, help="MQTT broker port.")),
    ("--http/--no-http", "http.enabled", dict(help="Serve /healthz, /state and /metrics.")),
    ("--http-host", "http.host", dict(help="HTTP listen address (default 127.0.0.1: this machine only).")),
    ("--http-port", "http.port", dict(type=int, help="HTTP port.")),
    ("--log-level", "log_level", dict(help="debug, info, warning or error.")),
)


def _param(key: str) -> str:
    return key.replace(".", "__")


def _with_config_flags(command):
    for declaration, key, options in reversed(FLAGS):
        command = click.option(declaration, _param(key), default=None, **options)(command)
    return command


def _run(config: DaemonConfig) -> int:
    from fer_edge.edge_runtime.daemon.service import Daemon

    logging.basicConfig(level=config.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    daemon = Daemon(config)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: daemon.stop())
    return daemon.run()


@click.command("daemon")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="FER_EDGE_CONFIG",
              help="TOML config file (also $FER_EDGE_CONFIG). Flags override it; it overrides FER_EDGE_* variables.")
@click.option("--check-config", is_flag=True, help="Validate the configuration, print it (secrets masked) and exit.")
@_with_config_flags
def daemon(config_path: str | None, check_config: bool, **flags) -> None:
    """Run the camera daemon: faces and smoothed emotions to JSON lines, MQTT and HTTP.

    No frame or face image is written or sent anywhere. Stops cleanly (MQTT `offline`) on SIGTERM
    or Ctrl-C; a non-looped video file stops it at its end.
    """
    # paho, prometheus-client and LiteRT load only when the verb runs: other verbs stay light.
    from fer_edge.edge_runtime.daemon.capture import check_source
    from fer_edge.edge_runtime.daemon.service import model_path

    try:
        config = resolve({key: flags[_param(key)] for _, key, _ in FLAGS}, config_path, os.environ)
        check_source(config.source.uri)
        model_path(config)
        if check_config:
            click.echo(config.to_toml(mask_secrets=True), nl=False)
            return
        sys.exit(_run(config))
    except FerEdgeError as error:  # ConfigError included
        raise click.ClickException(str(error)) from None
    except OSError as error:  # e.g. the HTTP port is taken
        raise click.ClickException(f"cannot start: {error}") from None
