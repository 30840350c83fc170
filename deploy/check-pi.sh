#!/usr/bin/env bash
# Raspberry Pi OS check: install this checkout on an emulated Debian bookworm arm64 userland (the
# base of Raspberry Pi OS: Python 3.11) with the README's device command, then run `fer-edge demo`,
# `fer-edge predict` on a short video and `fer-edge daemon` on a file source against a mosquitto
# broker on the host's loopback. Proves install and correctness only: emulated timings are ~300x
# slower than a Pi and mean nothing.
#
#   sudo deploy/check-pi.sh          # as root (debootstrap, binfmt, chroot); ~5 min cold, ~1 min cached
#
# Uses ../shared/tools/arm64-pi-emu.sh (override with EMU=...); installs mosquitto and
# mosquitto-clients on the host if missing. The checkout's committed HEAD is what gets installed.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
EMU=${EMU:-$REPO/../shared/tools/arm64-pi-emu.sh}
[ -f "$EMU" ] || { echo "check-pi: no emulator script at $EMU (set EMU)" >&2; exit 2; }

# The device command from the README's install table, pointed at this checkout instead of PyPI.
device_cmd=$(sed -n 's/^| a device (Pi, Coral host)[^|]*| `\(.*\)` |$/\1/p' README.md | head -n 1)
[ -n "$device_cmd" ] || { echo "check-pi: no device install command found in README.md" >&2; exit 1; }
guest_install=${device_cmd//\"fer-edge\[edge\]\"/\"/opt/proj[edge]\"}
[ "$guest_install" != "$device_cmd" ] || { echo "check-pi: README device command does not install \"fer-edge[edge]\"" >&2; exit 1; }
echo "check-pi: README device command: $device_cmd"

# Host prerequisites the emulator script expects: qemu-user >= 8.1 (bookworm-backports; bookworm's
# 7.2 crashes inside LiteRT) registered with binfmt-support's update-binfmts. Backports' qemu 10
# ships only a systemd binfmt.d entry, so it is imported into binfmt-support here.
export DEBIAN_FRONTEND=noninteractive
command -v update-binfmts >/dev/null && command -v debootstrap >/dev/null \
  || { apt-get update -qq && apt-get install -y -qq binfmt-support debootstrap >/dev/null; }
if ! dpkg --compare-versions "$(dpkg-query -W -f='${Version}' qemu-user 2>/dev/null || echo 0)" ge 1:8.1; then
  mirror=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | head -n 1 || true)
  echo "deb ${mirror:-http://deb.debian.org/debian} bookworm-backports main" > /etc/apt/sources.list.d/bookworm-backports.list
  apt-get update -qq && apt-get install -y -qq -t bookworm-backports qemu-user-static >/dev/null
fi
conf=/usr/lib/binfmt.d/qemu-aarch64.conf
if ! update-binfmts --display qemu-aarch64 >/dev/null 2>&1 && [ -f "$conf" ]; then
  IFS=: read -r _ _ _ _ magic mask interpreter _ < "$conf"
  printf 'package check-pi\ninterpreter %s\nmagic %s\nmask %s\ncredentials yes\nfix_binary yes\npreserve yes\n' \
    "$interpreter" "$magic" "$mask" > /usr/share/binfmts/qemu-aarch64
  update-binfmts --import qemu-aarch64
fi

# A broker on the host's loopback: the chroot shares the host's network, so the guest reaches it.
for tool in mosquitto mosquitto_sub; do
  command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients >/dev/null
    systemctl stop mosquitto 2>/dev/null || true; break; }
done
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
work=$(mktemp -d)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$port" > "$work/mosquitto.conf"
"$MOSQUITTO" -c "$work/mosquitto.conf" >/dev/null 2>&1 &
broker=$!
trap 'kill $broker 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
# Everything the daemon publishes as camera `pi-check`, kept for the checks below.
mosquitto_sub -h 127.0.0.1 -p "$port" -t 'fer-edge/pi-check/#' -v -q 1 > "$work/mqtt.txt" &
sub=$!
trap 'kill $sub $broker 2>/dev/null; rm -rf "$work"' EXIT

# Emulated TLS handshakes are slow and the registry connection is sometimes reset: give the guest's
# pip patience (its rootfs exists from the second run on; the guest script below sets it too).
ROOT=${ROOT:-/var/cache/arm64-pi-emu/rootfs}
export ROOT
if [ -d "$ROOT/etc" ]; then printf '[global]\ntimeout = 120\nretries = 10\n' > "$ROOT/etc/pip.conf"; fi

# The guest script: the one install command, then the three verbs.
PROJECT=$REPO FRESH=1 bash "$EMU" "$(cat <<EOF
export PIP_DEFAULT_TIMEOUT=120 PIP_RETRIES=10
set -x
pip uninstall -q -y fer-edge
$guest_install
pip list --format=freeze | grep -iE '^(fer-edge|numpy|opencv|ai.edge.litert|face.detection|paho|prometheus|click)' 
python -c 'import platform, sys; print("guest:", platform.machine(), sys.version.split()[0])'
python -c 'import tensorflow' 2>/dev/null && { echo "TensorFlow got installed on the device" >&2; exit 1; }
cd /tmp
fer-edge demo --out /tmp/demo.jpg
# A 2-second video of the shipped sample photo, written by the installed OpenCV.
python - <<'PY'
import cv2
from fer_edge.edge_runtime.commands import SAMPLE_IMAGE
image = cv2.resize(cv2.imread(str(SAMPLE_IMAGE)), (320, 320))
writer = cv2.VideoWriter("/tmp/clip.mp4", cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (320, 320))
for _ in range(10):
    writer.write(image)
writer.release()
PY
fer-edge predict /tmp/clip.mp4 > /tmp/predict.jsonl
python -c 'import json; rows = [json.loads(l) for l in open("/tmp/predict.jsonl")]; faces = [len(r["faces"]) for r in rows]; print("predict:", len(rows), "frames, faces per frame:", faces); assert len(rows) == 10 and min(faces) >= 1'
fer-edge daemon --source /tmp/clip.mp4 --no-pace --camera-id pi-check --mqtt-host 127.0.0.1 --mqtt-port $port --no-http --jsonl /tmp/daemon.jsonl
python -c 'import json; rows = [json.loads(l) for l in open("/tmp/daemon.jsonl")]; print("daemon events:", [r["type"] for r in rows]); assert [r for r in rows if r["type"] == "face_appeared"] and rows[-1]["type"] == "source_ended"'
EOF
)"
sleep 1
echo "check-pi: MQTT messages from the guest daemon: $(wc -l < "$work/mqtt.txt")"
grep -q '^fer-edge/pi-check/events .*"face_appeared"' "$work/mqtt.txt" \
  || { echo "check-pi: no face_appeared event reached the host broker" >&2; cat "$work/mqtt.txt" >&2; exit 1; }
grep -q '^fer-edge/pi-check/availability offline$' "$work/mqtt.txt" \
  || { echo "check-pi: the daemon did not publish offline at its end" >&2; exit 1; }
echo "check-pi: OK"
