#!/usr/bin/env bash
# Raspberry Pi OS check: on an emulated Debian bookworm arm64 userland (the base of Raspberry Pi OS:
# Python 3.11, glibc 2.36), run the README's device install command verbatim in a fresh venv, then
# `fer-edge demo`, `fer-edge predict` on a short video and `fer-edge daemon` on a file source
# against a mosquitto broker on the host's loopback. Proves install and correctness only: emulated
# timings are far slower than a Pi and mean nothing.
#
#   sudo deploy/check-pi.sh      # as root (debootstrap, binfmt_misc, chroot); .ci/run runs it
#
# About 5 minutes on an idle 2-core x86-64 machine with no cached userland (294 s, debootstrap 163 s).
#
# The project's own equivalent of ../shared/tools/arm64-pi-emu.sh, with two differences:
# - The packages come from a wheelhouse that the host's pip fills for the guest's platform
#   (cp311, manylinux aarch64, binary wheels only) from the committed HEAD's wheel and the
#   registry; the guest's pip then resolves the README command against it with no index.
#   Emulated TLS to the registry is slow and its connections were reset mid-download; the
#   resolution and the wheels are the same ones a Pi's pip would pick.
# - binfmt-support learns qemu-aarch64 from backports' binfmt.d file (qemu >= 8.1 ships no
#   binfmt-support entry, so `update-binfmts --enable qemu-aarch64` alone fails).
#
# Environment: ROOT (the cached userland, default /var/cache/arm64-pi-emu/rootfs, shared with that
# script), MIRROR (a Debian mirror; default: the host's), QEMU_CPU (cortex-a76 = Pi 5).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
ROOT=${ROOT:-/var/cache/arm64-pi-emu/rootfs}
QEMU_CPU=${QEMU_CPU:-cortex-a76}   # qemu's default "max" adds SVE/SME that a Pi lacks
t0=$SECONDS
step() { echo "check-pi [+$((SECONDS - t0))s] $*"; }
[ "$(id -u)" -eq 0 ] || { echo "check-pi: must run as root (debootstrap, binfmt_misc, chroot)" >&2; exit 2; }

# The device command from the README's install table, run as written.
device_cmd=$(sed -n 's/^| a device (Pi, Coral host)[^|]*| `\(.*\)` |$/\1/p' README.md | head -n 1)
[ -n "$device_cmd" ] || { echo "check-pi: README.md: no device install command in the install table" >&2; exit 1; }
[[ $device_cmd == 'pip install "fer-edge[edge]"' ]] \
  || { echo "check-pi: README.md: device command is not pip install \"fer-edge[edge]\": $device_cmd" >&2; exit 1; }
step "README device command: $device_cmd"

# ---- host packages: qemu-user >= 8.1 (bookworm's 7.2 crashes inside LiteRT: it shows the guest
#      the host's x86 /proc/cpuinfo), debootstrap, binfmt-support, a broker, the host's pip.
MIRROR=${MIRROR:-$({ sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null || true; } | grep -v security | head -n 1 || true)}
MIRROR=${MIRROR:-$(awk '$1=="deb"{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
export DEBIAN_FRONTEND=noninteractive
missing=()
for package in debootstrap binfmt-support mosquitto mosquitto-clients python3-pip python3-venv; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  step "host packages: ${missing[*]}"
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  systemctl stop mosquitto 2>/dev/null || true
fi
if ! dpkg --compare-versions "$(dpkg-query -W -f='${Version}' qemu-user 2>/dev/null || echo 0)" ge 1:8.1; then
  step "host packages: qemu-user-static from bookworm-backports"
  echo "deb $MIRROR bookworm-backports main" > /etc/apt/sources.list.d/bookworm-backports.list
  apt-get update -qq && apt-get install -y -qq -t bookworm-backports qemu-user-static >/dev/null
fi
mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
conf=/usr/lib/binfmt.d/qemu-aarch64.conf
if ! update-binfmts --display qemu-aarch64 >/dev/null 2>&1 && [ -f "$conf" ]; then
  IFS=: read -r _ _ _ _ magic mask interpreter _ < "$conf"
  printf 'package check-pi\ninterpreter %s\nmagic %s\nmask %s\ncredentials yes\nfix_binary yes\npreserve yes\n' \
    "$interpreter" "$magic" "$mask" > /usr/share/binfmts/qemu-aarch64
  update-binfmts --import qemu-aarch64
fi
# With the F flag the kernel keeps the interpreter it opened at registration: re-register so a
# qemu upgrade takes effect.
update-binfmts --disable qemu-aarch64 >/dev/null 2>&1 || true
update-binfmts --enable qemu-aarch64
grep -q '^flags:.*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 \
  || { echo "check-pi: binfmt qemu-aarch64 lacks the F (fix-binary) flag" >&2; exit 1; }

# ---- the arm64 bookworm userland (one stage: binfmt runs the arm64 maintainer scripts directly)
# Built beside ROOT and renamed when complete: an interrupted build is never mistaken for a userland.
if [ ! -x "$ROOT/usr/bin/python3" ]; then
  step "debootstrap arm64 bookworm from $MIRROR -> $ROOT"
  rm -rf "$ROOT.partial" && mkdir -p "$(dirname "$ROOT")"
  debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$ROOT.partial" "$MIRROR" >/dev/null
  rm -rf "$ROOT" && mv "$ROOT.partial" "$ROOT"
fi

# ---- the wheelhouse: this checkout's committed HEAD as a wheel, and its [edge] dependencies as
#      the guest's pip would pick them (cp311, glibc <= 2.36, aarch64, no source builds).
work=$(mktemp -d)
guest=/opt/fer-edge-check
cleanup() {
  for m in dev sys proc; do mountpoint -q "$ROOT/$m" && umount -R "$ROOT/$m"; done
  kill "${sub:-}" "${broker:-}" 2>/dev/null || true
  rm -rf "$work" "${ROOT:?}$guest"
}
trap cleanup EXIT
step "wheelhouse"
rm -rf "${ROOT:?}$guest"; mkdir -p "$ROOT$guest/wheels" "$work/src"
git archive HEAD | tar -x -C "$work/src"
python3 -m pip wheel -q --disable-pip-version-check --no-deps -w "$ROOT$guest/wheels" "$work/src"
platforms=(--platform manylinux2014_aarch64 --platform linux_aarch64)
for glibc in $(seq 17 36); do platforms+=(--platform "manylinux_2_${glibc}_aarch64"); done
python3 -m pip download -q --disable-pip-version-check --only-binary=:all: --python-version 3.11 \
  --implementation cp --abi cp311 --abi abi3 --abi none "${platforms[@]}" \
  --find-links "$ROOT$guest/wheels" -d "$ROOT$guest/wheels" "fer-edge[edge]" 2> >(grep -v 'is ignored' >&2)

# ---- a broker on the host's loopback: the chroot shares the host's network, so the guest reaches it
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$port" > "$work/mosquitto.conf"
"$MOSQUITTO" -c "$work/mosquitto.conf" >/dev/null 2>&1 &
broker=$!
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
mosquitto_sub -h 127.0.0.1 -p "$port" -t 'fer-edge/pi-check/#' -v -q 1 > "$work/mqtt.txt" &
sub=$!

# ---- the guest: a fresh venv, the README command, then the three verbs
mount -t proc proc "$ROOT/proc"
mount --rbind /sys "$ROOT/sys" && mount --make-rslave "$ROOT/sys"
mount --rbind /dev "$ROOT/dev" && mount --make-rslave "$ROOT/dev"
step "guest: install and run"
chroot "$ROOT" /usr/bin/env -i HOME=/root LANG=C.UTF-8 QEMU_CPU="$QEMU_CPU" \
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  PIP_NO_INDEX=1 PIP_FIND_LINKS="$guest/wheels" PIP_DISABLE_PIP_VERSION_CHECK=1 \
  bash -euxc "$(cat <<EOF
python3 -c 'import platform, sys; print("guest:", platform.machine(), "Python", sys.version.split()[0], *platform.libc_ver())'
python3 -m venv $guest/venv
. $guest/venv/bin/activate
$device_cmd
pip list --format=freeze | grep -iE '^(fer.edge|numpy|opencv.*|ai.edge.litert|pillow|paho.mqtt|prometheus.client|click)=='
! python -c 'import tensorflow' 2>/dev/null || { echo "check-pi: TensorFlow got installed on the device" >&2; exit 1; }
cd /tmp
fer-edge demo --out /tmp/demo.jpg
# A 1-second video (5 frames) of the shipped sample photo, written by the installed OpenCV.
python - <<'PY'
import cv2
from fer_edge.edge_runtime.commands import SAMPLE_IMAGE
image = cv2.resize(cv2.imread(str(SAMPLE_IMAGE)), (320, 320))
writer = cv2.VideoWriter("/tmp/clip.mp4", cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (320, 320))
for _ in range(5):
    writer.write(image)
writer.release()
PY
fer-edge predict /tmp/clip.mp4 > /tmp/predict.jsonl
python -c 'import json; rows = [json.loads(l) for l in open("/tmp/predict.jsonl")]; faces = [len(r["faces"]) for r in rows]; print("predict:", len(rows), "frames, faces per frame:", faces); assert len(rows) == 5 and min(faces) >= 1'
fer-edge daemon --source /tmp/clip.mp4 --no-pace --camera-id pi-check --mqtt-host 127.0.0.1 --mqtt-port $port --no-http --jsonl /tmp/daemon.jsonl
python -c 'import json; rows = [json.loads(l) for l in open("/tmp/daemon.jsonl")]; print("daemon events:", [r["type"] for r in rows]); assert [r for r in rows if r["type"] == "face_appeared"] and rows[-1]["type"] == "source_ended"'
EOF
)"
sleep 1
step "MQTT messages from the guest daemon: $(wc -l < "$work/mqtt.txt")"
grep -q '^fer-edge/pi-check/events .*"face_appeared"' "$work/mqtt.txt" \
  || { echo "check-pi: no face_appeared event reached the host broker" >&2; cat "$work/mqtt.txt" >&2; exit 1; }
grep -q '^fer-edge/pi-check/availability offline$' "$work/mqtt.txt" \
  || { echo "check-pi: the daemon did not publish offline at its end" >&2; exit 1; }
step "OK"
