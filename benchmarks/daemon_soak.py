"""Daemon soak test: the real `fer-edge daemon` process over many thousands of frames.

A video of FER2013 PrivateTest faces drifting over a synthetic background (faces the detector
finds, so every frame carries a face) is looped without pacing or frame-rate cap, so the daemon
runs flat out. Its own /metrics give the frame count; /proc gives its CPU time and resident memory.

    python benchmarks/daemon_soak.py --model model_int8.tflite --frames 20000

Reports processed frames/s, CPU use (100% = one core) and RSS after start-up, after warm-up and at
the end. Exit status 1 when RSS grows by more than --max-growth-mb after warm-up (a leak: the
daemon holds one frame and a bounded set of tracks, so its memory must stay flat) or when the
daemon does not exit 0 on SIGTERM.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import click
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from fer_edge.edge_runtime.daemon.config import PipelineConfig
from fer_edge.edge_runtime.daemon.tracking import iou
from fer_edge.edge_runtime.detection import DEFAULT_DETECTOR, create_detector
from fer_edge.edge_runtime.scenes import compose_scene, write_video
from fer_edge.train.data import default_data_path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = default_data_path()
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


def detectable_faces(data: Path, detector: str, count: int, seed: int = 0) -> np.ndarray:
    """The first `count` PrivateTest faces that the detector finds where they are pasted."""
    archive = np.load(data)
    faces = archive["images"][archive["usage"] == "PrivateTest"]
    finder = create_detector(detector)
    rng = np.random.default_rng(seed)
    kept = []
    for face in faces:
        scene = compose_scene(face[None], rng, sizes=(150, 170))
        if any(iou(d.box, scene.boxes[0]) > 0.5 for d in finder.detect(scene.image)):
            kept.append(face)
            if len(kept) == count:
                break
    return np.stack(kept)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def counters(port: int) -> dict[str, float]:
    """The daemon's counters from its /metrics, by sample name."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}


def processed_frames(port: int) -> float:
    return counters(port)["fer_edge_frames_processed_total"]


def usage(pid: int) -> tuple[float, float]:
    """(CPU seconds, resident MB) of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime
    rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 2**20
    return cpu, rss


def wait_for(port: int, frames: float, process: subprocess.Popen, timeout: float) -> None:
    """Wait until the daemon has processed `frames` frames (it may not be listening yet)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise click.ClickException(f"the daemon exited early with status {process.returncode}")
        try:
            if processed_frames(port) >= frames:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise click.ClickException(f"timed out waiting for {frames:.0f} processed frames")


@click.command()
@click.option("--model", type=click.Path(exists=True, dir_okay=False), required=True, help="Int8 emotion model.")
@click.option("--data", type=click.Path(exists=True, dir_okay=False), default=str(DEFAULT_DATA), show_default=True,
              help="FER2013 .npz (faces for the video).")
@click.option("--frames", type=int, default=20000, show_default=True, help="Frames to process after warm-up.")
@click.option("--warmup", type=int, default=1000, show_default=True, help="Frames processed before RSS is taken.")
@click.option("--detector", default=DEFAULT_DETECTOR, show_default=True)
@click.option("--detect-every", type=int, default=None, help="Detect on every Nth frame. Default: the daemon's.")
@click.option("--search-every", type=int, default=None,
              help="Search the whole frame on every Nth detection, following known faces in between. Default: the daemon's.")
@click.option("--threads", type=int, default=1, show_default=True, help="Interpreter threads.")
@click.option("--max-growth-mb", type=float, default=20.0, show_default=True,
              help="Fail when RSS grows more than this after warm-up.")
@click.option("--mqtt-port", type=int, help="Also publish to an MQTT broker on 127.0.0.1 at this port.")
@click.option("--out", "json_path", type=click.Path(dir_okay=False), help="Also write the results as JSON.")
def soak(model, data, frames, warmup, detector, detect_every, search_every, threads, max_growth_mb, mqtt_port,
         json_path) -> None:
    """Run the daemon flat out over a looped video and check its memory stays flat."""
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "soak.mp4"
        faces = detectable_faces(Path(data), detector, count=8)
        write_video(video, faces, np.random.default_rng(1), frames=400, width=640, height=360, side=160, fps=15.0)
        port = free_port()
        command = [sys.executable, "-m", "fer_edge", "daemon", "--source", str(video), "--model", model,
                   "--loop", "--no-pace", "--max-fps", "0", "--detector", detector, "--threads", str(threads),
                   "--http-port", str(port), "--log-level", "warning"]
        for flag, value in (("--detect-every", detect_every), ("--search-every", search_every)):
            command += [flag, str(value)] if value is not None else []
        if mqtt_port:
            command += ["--mqtt-host", "127.0.0.1", "--mqtt-port", str(mqtt_port)]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        try:
            wait_for(port, 1, process, timeout=60)
            _, rss_started = usage(process.pid)
            wait_for(port, warmup, process, timeout=600)
            cpu0, rss0, t0 = *usage(process.pid), time.monotonic()
            start = counters(port)
            rss_peak = rss0
            target = start["fer_edge_frames_processed_total"] + frames
            while processed_frames(port) < target:
                if process.poll() is not None:
                    raise click.ClickException(f"the daemon exited early with status {process.returncode}")
                rss_peak = max(rss_peak, usage(process.pid)[1])
                time.sleep(1.0)
            cpu1, rss1, t1 = *usage(process.pid), time.monotonic()
            end = counters(port)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                status = process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                status = "killed after 10 s"
    elapsed = t1 - t0
    delta = {name: end[name] - start[name] for name in ("fer_edge_frames_processed_total",
                                                        "fer_edge_frames_dropped_total", "fer_edge_faces_detected_total")}
    frames_done = delta["fer_edge_frames_processed_total"]
    results = {
        "frames": int(frames_done), "seconds": round(elapsed, 2), "fps": round(frames_done / elapsed, 1),
        "cpu_percent": round(100 * (cpu1 - cpu0) / elapsed, 1),
        "faces_per_frame": round(delta["fer_edge_faces_detected_total"] / frames_done, 3),
        "frames_dropped": int(delta["fer_edge_frames_dropped_total"]),
        "rss_mb": {"started": round(rss_started, 1), "after_warmup": round(rss0, 1), "end": round(rss1, 1),
                   "peak": round(rss_peak, 1)},
        "rss_growth_mb": round(rss1 - rss0, 1), "max_growth_mb": max_growth_mb, "exit_status": status,
        "settings": {"detector": detector, "detect_every": detect_every or PipelineConfig.detect_every,
                     "search_every": search_every or PipelineConfig.search_every, "threads": threads, "warmup": warmup,
                     "mqtt": bool(mqtt_port)},
    }
    click.echo(json.dumps(results, indent=2))
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2) + "\n")
    failures = []
    if results["rss_growth_mb"] > max_growth_mb:
        failures.append(f"RSS grew {results['rss_growth_mb']} MB after warm-up (bound {max_growth_mb} MB)")
    if status != 0:
        failures.append(f"the daemon's exit status on SIGTERM was {status}, not 0")
    if failures:
        raise click.ClickException("; ".join(failures))


if __name__ == "__main__":
    soak()
