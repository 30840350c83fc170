"""The daemon's configuration: one dataclass per TOML table, resolved from four layers.

Precedence, highest first: command-line flags, the TOML file (`--config`), environment variables
(`FER_EDGE_<TABLE>_<KEY>`, or `FER_EDGE_<KEY>` for top-level keys), the defaults below. An error names
the key and where its bad value came from (flag, file or variable), so it is clear what to fix.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import ssl
import typing
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, from PyPI
    import tomli as tomllib

from fer_edge.atomic import check_writable
from fer_edge.edge_runtime.classifier import TTA_MODES, ClassifierOptions
from fer_edge.edge_runtime.detection import DETECTORS, SMALLEST_MIN_FACE
from fer_edge.edge_runtime.interpreter import MAX_THREADS
from fer_edge.edge_runtime.pipeline import PipelineOptions
from fer_edge.edge_runtime.sources import STREAM_TIMEOUTS_S
from fer_edge.errors import FerEdgeError

ENV_PREFIX = "FER_EDGE_"

# Flags are visible to every user in `ps`, so these are read only from the file or environment,
# and --check-config masks them.
SECRET_KEYS = frozenset({"mqtt.password", "mqtt.tls_key"})


class ConfigError(FerEdgeError):
    """A configuration key is unknown or its value is invalid; the message names the key."""


def _check(test: Callable[[Any], bool], expected: str) -> dict:
    return {"check": test, "expected": expected}


def _positive() -> dict:
    # TOML and float flags take `inf`: as a timeout or interval it crashes or stalls the daemon.
    return _check(lambda v: 0 < v < math.inf, "a finite number > 0")


def _non_negative() -> dict:
    return _check(lambda v: 0 <= v < math.inf, "a finite number >= 0")


# The longest wait or timeout taken: a day. Longer ones are mistakes, and huge finite ones crash the
# daemon's threads (1e300 s overflows the clock; OpenCV takes stream timeouts as int32 milliseconds).
MAX_SECONDS = 86400


def _seconds() -> dict:
    return _check(lambda v: 0 < v <= MAX_SECONDS, f"a number of seconds > 0 and at most {MAX_SECONDS} (a day)")


# MQTT strings (topics, client ids) may be up to 65535 UTF-8 bytes; paho's thread dies on a longer
# one. Each name we put into a topic or client id is held far below that, so their sums are too.
MAX_MQTT_NAME_BYTES = 256


def _mqtt_name(value: str, forbidden: str = "") -> bool:
    """True if `value` fits in an MQTT topic level or client id: valid UTF-8 of at most
    MAX_MQTT_NAME_BYTES, no control character (a broker drops the connection over one, and paho
    reconnects forever) and none of `forbidden`."""
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:  # an undecodable byte of an environment variable or flag
        return False
    return size <= MAX_MQTT_NAME_BYTES and not any(c in forbidden or unicodedata.category(c) == "Cc" for c in value)


def _topic_prefix() -> dict:
    return _check(lambda v: v and _mqtt_name(v, "#+") and not v.endswith("/"),
                  f"a topic of at most {MAX_MQTT_NAME_BYTES} UTF-8 bytes without wildcards (+ #), "
                  "control characters or a trailing /")


def _one_of(*choices: str) -> dict:
    return _check(lambda v: v in choices, "one of " + ", ".join(choices))


def _port(allow_zero: bool = False) -> dict:
    low = 0 if allow_zero else 1
    return _check(lambda v: low <= v <= 65535, f"a port number {low}..65535")


@dataclass
class SourceConfig:
    """Where frames come from."""

    uri: str = "0"
    """A V4L2 camera (`0`, `/dev/video0`), `picamera` (Raspberry Pi camera), a video file,
    or an `rtsp://`, `http://` or `https://` stream URL."""
    loop: bool = False
    """Restart a video file at its end instead of stopping the daemon."""
    pace: bool = True
    """Play a video file at its own frame rate; off, every frame is processed as fast as possible."""
    retry_min_s: float = field(default=0.5, metadata=_seconds())
    """First wait before reopening a lost camera or stream; doubles on each failure."""
    retry_max_s: float = field(default=30.0, metadata=_seconds())
    open_timeout_s: float = field(default=STREAM_TIMEOUTS_S[0], metadata=_seconds())
    """Streams (rtsp://, http://): give up opening after this long, then retry with back-off."""
    read_timeout_s: float = field(default=STREAM_TIMEOUTS_S[1], metadata=_seconds())
    """Streams: a camera that sends no frame for this long is reported lost and reopened."""
    max_frame_pixels: int = field(default=PipelineOptions.max_frame_pixels, metadata=_non_negative())
    """Largest frame accepted (width x height), the memory cap `predict` has too; a larger source
    fails with a message naming it. 0: no cap."""


@dataclass
class ModelConfig:
    """The emotion classifier."""

    path: str = ""
    """The int8 `.tflite` model; empty uses the model shipped with fer-edge."""
    threads: int = field(default=2, metadata=_check(lambda v: 1 <= v <= MAX_THREADS, f"an integer 1..{MAX_THREADS}"))
    """CPU threads of the emotion model. Unlike `predict` (all cores), an always-on daemon leaves
    cores to capture, MQTT and HTTP, and to whatever else the device runs."""
    device: str = field(default="cpu", metadata=_one_of("cpu", "edgetpu", "edgetpu:usb", "edgetpu:pci"))
    fallback_cpu: bool = True
    """Run on the CPU, with a warning, when the Edge TPU cannot be used. On by default here and off
    in `predict`: an unattended camera should keep reporting (and say why it is slower), while a
    command typed at a terminal should fail loudly."""
    sha256: str = field(default="", metadata=_check(
        lambda v: not v or re.fullmatch(r"[0-9a-fA-F]{64}", v), "empty or 64 hexadecimal digits"))
    """Expected sha256 of the model file (from its model card); a mismatch refuses to start."""
    tta: str = field(default=ClassifierOptions.tta, metadata=_one_of(*TTA_MODES))
    """`flip` averages each face with its mirror image: steadier labels for a second pass per face."""
    calibration: str = ClassifierOptions.calibration
    """`none`, or a calibration stored beside the model by `fer-edge calibrate` (e.g. `neutral`), as
    `predict --calibration`; checked against the model's sha256 when the daemon starts."""


@dataclass
class PipelineConfig:
    """Detection, classification and the frame-rate cap."""

    detector: str = field(default=PipelineOptions.detector, metadata=_one_of(*DETECTORS))
    detector_model: str = ""
    """Model file of the detector; empty uses the one installed with it."""
    min_face: int = field(default=PipelineOptions.min_face, metadata=_check(
        lambda v: v >= SMALLEST_MIN_FACE, f"an integer >= {SMALLEST_MIN_FACE}"))
    """Smallest face to find, in frame pixels; the detector searches no finer than that needs (larger: cheaper)."""
    turned_search: bool = PipelineOptions.turned_search
    """Also search frames turned +-30 degrees for tilted heads (yunet); false: ~0.6x the detection CPU."""
    align: bool = PipelineOptions.align
    """Turn each face upright by its eye line before cropping (detectors with eye keypoints)."""
    detect_every: int = field(default=3, metadata=_positive())
    """Run the detector on every Nth frame and carry its boxes over in between (saves power)."""
    search_every: int = field(default=5, metadata=_positive())
    """Search the whole frame on every Nth detection; in between, find the known faces again around
    their last place (yunet, blazeface-*): far less CPU; a new face waits up to detect_every * search_every frames
    (a new tilted head one whole search more: the turned searches take turns)."""
    max_fps: float = field(default=10.0, metadata=_non_negative())
    """Process at most this many frames a second to save power; 0 means no cap."""


MAX_VOTE_WINDOW = 1000


@dataclass
class SmoothingConfig:
    """Per-face temporal smoothing, so labels do not flicker from frame to frame."""

    method: str = field(default="ema", metadata=_one_of("ema", "vote"))
    """`ema`: exponential moving average of probabilities; `vote`: majority of the last `window` labels."""
    alpha: float = field(default=0.3, metadata=_check(lambda v: 0 < v <= 1, "a number in (0, 1]"))
    """EMA weight of the newest frame."""
    window: int = field(default=5, metadata=_check(lambda v: 1 <= v <= MAX_VOTE_WINDOW,
                                                    f"an integer 1..{MAX_VOTE_WINDOW} (frames)"))
    """Frames the `vote` method takes the majority of: 1000 is minutes of video even at 10 fps, and a
    window above 2^63 crashed the daemon when the first face appeared."""
    iou_threshold: float = field(default=0.3, metadata=_check(lambda v: 0 < v < 1, "a number in (0, 1)"))
    """Minimum box overlap for a face to keep its identity from one frame to the next."""
    min_hits: int = field(default=2, metadata=_positive())
    """Frames a face must be seen before it is reported (filters one-frame false detections)."""
    max_missed: int = field(default=5, metadata=_non_negative())
    """Frames a face may go unseen before it is reported lost."""


@dataclass
class OutputConfig:
    """JSON lines output and message cadence."""

    jsonl: str = ""
    """Write face events and periodic summaries as JSON lines: `-` for stdout, a file path, or empty for none."""
    summary_interval_s: float = field(default=60.0, metadata=_seconds())
    state_interval_s: float = field(default=1.0, metadata=_seconds())
    """Longest gap between MQTT state messages; a face event publishes the state at once."""


@dataclass
class MqttConfig:
    """MQTT output: `<topic_prefix>/<camera_id>/state`, `/events` and `/availability`."""

    host: str = ""
    """Broker host name; empty disables MQTT."""
    port: int = field(default=1883, metadata=_port())
    qos: int = field(default=1, metadata=_check(lambda v: v in (0, 1, 2), "0, 1 or 2"))
    client_id: str = field(default="", metadata=_check(
        _mqtt_name, f"at most {MAX_MQTT_NAME_BYTES} UTF-8 bytes without control characters"))
    """Empty uses `fer-edge-<host name>-<camera_id>`: unique per device, so two devices never share one.
    Two connections with one client id knock each other off the broker."""
    username: str = field(default="", metadata=_check(
        _mqtt_name, f"at most {MAX_MQTT_NAME_BYTES} UTF-8 bytes without control characters"))
    password: str = ""
    """Secret: set it in the config file or FER_EDGE_MQTT_PASSWORD, never on the command line."""
    topic_prefix: str = field(default="fer-edge", metadata=_topic_prefix())
    keepalive_s: int = field(default=30, metadata=_check(lambda v: 5 <= v <= 65535, "an integer 5..65535 (MQTT's limit)"))
    buffer: int = field(default=1000, metadata=_positive())
    """Messages kept while the broker is away; older ones are dropped (and counted) beyond this."""
    retry_min_s: float = field(default=1.0, metadata=_seconds())
    retry_max_s: float = field(default=30.0, metadata=_seconds())
    tls: bool = False
    """Use TLS, checking the broker against the system's CA certificates unless tls_ca names one.
    Implied by tls_ca and by tls_cert: a configured certificate never leaves MQTT in plaintext."""
    tls_ca: str = ""
    tls_cert: str = ""
    """Client certificate (with tls_key) for brokers that require one; turns TLS on."""
    tls_key: str = ""
    """Secret path: set it in the config file or FER_EDGE_MQTT_TLS_KEY."""

    @property
    def uses_tls(self) -> bool:
        """TLS is on: asked for, or implied by a CA or client certificate."""
        return self.tls or bool(self.tls_ca or self.tls_cert)


@dataclass
class HomeAssistantConfig:
    """Home Assistant MQTT discovery: each camera appears as a device with its sensors, no YAML."""

    discovery: bool = True
    """Publish retained discovery configs whenever MQTT is on (and again when Home Assistant restarts)."""
    discovery_prefix: str = field(default="homeassistant", metadata=_topic_prefix())
    node_id: str = field(default="", metadata=_check(
        lambda v: len(v) <= MAX_MQTT_NAME_BYTES and all(c.isascii() and (c.isalnum() or c in "_-") for c in v),
        f"letters, digits, _ and - only, at most {MAX_MQTT_NAME_BYTES} of them"))
    """Empty uses `fer_edge_<camera_id>` (other characters replaced by _)."""
    emotion_shares: bool = True
    """Also one sensor per emotion: its share of the faces seen over the last minute, in %."""


@dataclass
class HttpConfig:
    """HTTP endpoints: /healthz, /state and /metrics."""

    enabled: bool = True
    host: str = field(default="127.0.0.1", metadata=_check(
        bool, "an address; empty listens on every interface, write 0.0.0.0 if that is meant"))
    """Listen address; only this machine can connect unless you name another address (an empty one,
    e.g. an unset variable in FER_EDGE_HTTP_HOST=$HOST, is refused rather than taken as every interface)."""
    port: int = field(default=8080, metadata=_port(allow_zero=True))
    stale_after_s: float = field(default=5.0, metadata=_seconds())
    """/healthz fails when the newest frame is older than this."""
    client_timeout_s: float = field(default=10.0, metadata=_seconds())
    """A client that sends nothing for this long is disconnected (an idle client must not hold a thread)."""


@dataclass
class DaemonConfig:
    """Everything `fer-edge daemon` runs with."""

    camera_id: str = field(default="camera", metadata=_check(
        lambda v: v and _mqtt_name(v, "/#+"),
        f"a non-empty name of at most {MAX_MQTT_NAME_BYTES} UTF-8 bytes without / # + or control characters"))
    """Names this camera in MQTT topics and messages."""
    log_level: str = field(default="info", metadata=_one_of("debug", "info", "warning", "error"))
    source: SourceConfig = field(default_factory=SourceConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    smoothing: SmoothingConfig = field(default_factory=SmoothingConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    homeassistant: HomeAssistantConfig = field(default_factory=HomeAssistantConfig)
    http: HttpConfig = field(default_factory=HttpConfig)

    def get(self, key: str) -> Any:
        """The value of a dotted key, e.g. `mqtt.port`."""
        obj: Any = self
        for part in key.split("."):
            obj = getattr(obj, part)
        return obj

    def to_toml(self, mask_secrets: bool = True) -> str:
        """The resolved configuration as a TOML document (a valid `--config` file)."""
        lines: list[str] = []
        for name, kind in _TABLES.items():
            if name:
                lines.append(f"\n[{name}]")
            for key in _KEYS[name]:
                dotted = f"{name}.{key}" if name else key
                value = self.get(dotted)
                if mask_secrets and dotted in SECRET_KEYS and value:
                    value = "********"
                lines.append(f"{key} = {_toml_value(value)}")
        return "\n".join(lines).lstrip("\n") + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid TOML basic strings
    return repr(value)


# Table name -> section dataclass; "" holds the top-level keys.
_TABLES: dict[str, type] = {"": DaemonConfig}
_TABLES.update({name: kind for name, kind in typing.get_type_hints(DaemonConfig).items()
                if dataclasses.is_dataclass(kind)})
_TYPES: dict[str, dict[str, type]] = {}
_FIELDS: dict[str, dataclasses.Field] = {}
_KEYS: dict[str, list[str]] = {}
for _table, _cls in _TABLES.items():
    _hints = typing.get_type_hints(_cls)
    _KEYS[_table] = [f.name for f in dataclasses.fields(_cls) if f.name not in _TABLES]
    for _f in dataclasses.fields(_cls):
        if _f.name in _KEYS[_table]:
            dotted = f"{_table}.{_f.name}" if _table else _f.name
            _TYPES.setdefault(_table, {})[_f.name] = _hints[_f.name]
            _FIELDS[dotted] = _f
ALL_KEYS: tuple[str, ...] = tuple(_FIELDS)


def _type_of(key: str) -> type:
    table, _, name = key.rpartition(".")
    return _TYPES[table][name]


def _unknown(key: str, origin: str) -> ConfigError:
    hint = difflib.get_close_matches(key, ALL_KEYS, n=1)
    suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
    return ConfigError(f"unknown config key {key!r} ({origin}){suggestion}")


def _shown(value: Any) -> str:
    """A bad value as an error message quotes it: cut short, so that the message stays one line."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text)} characters)"


def _typed(key: str, value: Any, origin: str) -> Any:
    """Check a value from TOML or a flag against the key's type and constraint."""
    kind = _type_of(key)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not kind:
        raise ConfigError(f"{key}: expected {kind.__name__}, got {_shown(value)} ({origin})")
    meta = _FIELDS[key].metadata
    if "check" in meta and not meta["check"](value):
        raise ConfigError(f"{key}: expected {meta['expected']}, got {_shown(value)} ({origin})")
    return value


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _parse_env(key: str, text: str, origin: str) -> Any:
    """Convert an environment variable's text to the key's type."""
    kind = _type_of(key)
    try:
        if kind is bool:
            if text.strip().lower() not in _TRUE | _FALSE:
                raise ValueError
            return _typed(key, text.strip().lower() in _TRUE, origin)
        return _typed(key, kind(text.strip()) if kind is not str else text, origin)
    except ValueError as error:
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(f"{key}: expected {kind.__name__}, got {_shown(text)} ({origin})") from None


def _from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """`FER_EDGE_MQTT_PORT=1884` -> {"mqtt.port": 1884}.

    Other fer-edge tools share the prefix (e.g. FER_EDGE_DATA), so a variable is an error only
    when it names one of the daemon's tables but no key in it: that is a typo, not another tool.
    """
    values: dict[str, Any] = {}
    for variable, text in environ.items():
        if not variable.startswith(ENV_PREFIX):
            continue
        rest = variable[len(ENV_PREFIX):].lower()
        origin = f"environment variable {variable}"
        if rest in _KEYS[""]:
            values[rest] = _parse_env(rest, text, origin)
            continue
        table, _, name = rest.partition("_")
        if table in _TABLES and table:
            if not name:  # FER_EDGE_MODEL=...: a table, not a key; a close match would mislead
                keys = ", ".join(f"{ENV_PREFIX}{table.upper()}_{k.upper()}" for k in _KEYS[table])
                raise ConfigError(f"{origin} names the [{table}] table, not one of its keys: {keys}")
            key = f"{table}.{name}"
            if key not in _FIELDS:
                raise _unknown(key, origin)
            values[key] = _parse_env(key, text, origin)
    return values


def _from_toml(path: Path) -> dict[str, Any]:
    origin = f"config file {path}"
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    except UnicodeDecodeError as error:  # TOML is UTF-8 by definition
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {error.object[error.start]:#04x} "
                          f"at offset {error.start})") from None
    except ValueError as error:  # TOMLDecodeError, or an integer too long for Python to convert
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None
    values: dict[str, Any] = {}
    for name, value in document.items():
        if isinstance(value, dict):
            if name not in _TABLES or not name:
                raise _unknown(name, origin)
            for key, item in value.items():
                dotted = f"{name}.{key}"
                if dotted not in _FIELDS:
                    raise _unknown(dotted, origin)
                values[dotted] = _typed(dotted, item, origin)
        elif name in _FIELDS:
            values[name] = _typed(name, value, origin)
        else:
            raise _unknown(name, origin)
    return values


def resolve(flags: Mapping[str, Any] | None = None, config_path: str | Path | None = None,
            environ: Mapping[str, str] | None = None) -> DaemonConfig:
    """Merge flags (dotted keys; None means not given) > TOML file > environment > defaults."""
    values = _from_environment(environ if environ is not None else {})
    if config_path is not None:
        values.update(_from_toml(Path(config_path)))
    for key, value in (flags or {}).items():
        if value is None:
            continue
        if key in SECRET_KEYS:
            raise ConfigError(secret_on_command_line(key))
        values[key] = _typed(key, value, "command line")
    config = DaemonConfig()
    for key, value in values.items():
        table, _, name = key.rpartition(".")
        setattr(getattr(config, table) if table else config, name, value)
    _check_combinations(config)
    return config


def secret_on_command_line(key: str) -> str:
    """Why a secret is refused as a flag, and where it goes instead."""
    variable = ENV_PREFIX + key.replace(".", "_").upper()
    return (f"{key} is a secret and is not taken on the command line (every user can read it in `ps`): "
            f"set it in the config file ([{key.partition('.')[0]}] {key.partition('.')[2]} = ...) "
            f"or in the environment as {variable}")


def _check_combinations(config: DaemonConfig) -> None:
    """Constraints between keys, which per-key checks cannot see."""
    if config.source.retry_min_s > config.source.retry_max_s:
        raise ConfigError("source.retry_min_s: must not exceed source.retry_max_s")
    if config.mqtt.retry_min_s > config.mqtt.retry_max_s:
        raise ConfigError("mqtt.retry_min_s: must not exceed mqtt.retry_max_s")
    if config.mqtt.password and not config.mqtt.username:
        raise ConfigError("mqtt.password: set mqtt.username too")
    if bool(config.mqtt.tls_cert) != bool(config.mqtt.tls_key):
        raise ConfigError("mqtt.tls_cert: a client certificate needs mqtt.tls_key, and the other way round")
    for key in ("mqtt.tls_ca", "mqtt.tls_cert", "mqtt.tls_key", "model.path", "pipeline.detector_model"):
        value = config.get(key)
        if value and not Path(value).is_file():
            raise ConfigError(f"{key}: no such file: {value}")
    _check_tls(config.mqtt)
    jsonl = config.output.jsonl
    if jsonl and jsonl != "-":
        folder = Path(jsonl).parent
        if not folder.is_dir():
            raise ConfigError(f"output.jsonl: no such folder: {folder} (for {jsonl})")
        try:
            if not (Path(jsonl).is_fifo() or Path(jsonl).is_char_device()):  # appended to as they are, not replaced
                check_writable(jsonl, "output.jsonl")
        except FerEdgeError as error:
            raise ConfigError(str(error)) from None


def _check_tls(mqtt: MqttConfig) -> None:
    """Load the TLS files as the connection will, so a wrong file fails now, naming its key."""
    if not mqtt.uses_tls:
        return
    context = ssl.create_default_context()
    if mqtt.tls_ca:
        try:
            context.load_verify_locations(cafile=mqtt.tls_ca)
        except (ssl.SSLError, OSError) as error:
            raise ConfigError(f"mqtt.tls_ca: {mqtt.tls_ca} is not a readable PEM CA certificate ({error})") from None
    if mqtt.tls_cert:
        try:
            # An empty password: an encrypted key fails here instead of prompting on a terminal.
            context.load_cert_chain(mqtt.tls_cert, mqtt.tls_key, password="")
        except (ssl.SSLError, OSError) as error:
            raise ConfigError(f"mqtt.tls_cert: {mqtt.tls_cert} with mqtt.tls_key {mqtt.tls_key} is not a usable, "
                              f"unencrypted PEM certificate and key pair ({error})") from None
