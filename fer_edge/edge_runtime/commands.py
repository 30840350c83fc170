"""The device-side verbs: `fer-edge predict` and `fer-edge demo`.

Only numpy is imported at start-up; OpenCV and the TFLite runtime load when a verb runs, so
`fer-edge --help` works wherever the package is installed.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import re
import sys
from pathlib import Path

import click

from fer_edge.atomic import atomic_path, check_writable
from fer_edge.edge_runtime.classifier import SHIPPED_MODEL, TTA_MODES
from fer_edge.edge_runtime.detection import DEFAULT_DETECTOR, DEFAULT_MIN_FACE, DETECTORS, SMALLEST_MIN_FACE
from fer_edge.edge_runtime.interpreter import DEVICES, MAX_THREADS
from fer_edge.errors import FerEdgeError

SAMPLE_IMAGE = Path(__file__).resolve().parents[1] / "assets" / "astronaut.jpg"
# Beside the run folders `train` writes (runs/ is git-ignored), not loose in the working directory.
DEMO_OUT = Path("runs") / "fer_edge_demo.jpg"


def runtime_options(command):
    """Options shared by the verbs that load a model and a detector."""
    options = [
        click.option("--model", "model_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help=f"Emotion model (.tflite, int8 or float32). Default: the shipped {SHIPPED_MODEL.name}."),
        click.option("--sha256", "verify_sha256", default=None, metavar="HEX",
                     help="Refuse the model unless its sha256 is HEX (from its model card)."),
        click.option("--threads", type=click.IntRange(min=1, max=MAX_THREADS), default=None,
                     help="CPU threads. Default: all cores."),
        click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True,
                     help="Run the emotion model on the CPU or a Coral Edge TPU."),
        click.option("--fallback-cpu", is_flag=True, help="Use the CPU, with a warning, if the Edge TPU is unavailable."),
        click.option("--tta", type=click.Choice(TTA_MODES), default=None,
                     help="flip: average each face with its mirror image (a second pass; one invoke on a "
                          "`convert --batch 2` model). Default: none."),
        click.option("--calibration", default=None, metavar="NAME",
                     help="Apply a calibration stored beside the model by `fer-edge calibrate` (e.g. ferplus). "
                          "Default: none."),
        click.option("--detector", type=click.Choice(sorted(DETECTORS)), default=None,
                     help=f"Face detector. Default: {DEFAULT_DETECTOR}."),
        click.option("--detector-model", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
                     help="Detector model file (a YuNet .onnx runs in OpenCV). Default: the one shipped with fer-edge."),
        click.option("--min-face", type=click.IntRange(min=SMALLEST_MIN_FACE), default=None,
                     help=f"Smallest face to find, in frame pixels; larger is faster. Default: {DEFAULT_MIN_FACE}."),
        click.option("--turned-search/--no-turned-search", default=None,
                     help="Also search frames turned +-30 degrees for tilted heads (yunet), for ~1.6x the "
                          "detection CPU. Default: PipelineOptions.turned_search."),
        click.option("--align/--no-align", default=None,
                     help="Turn each face upright by its eye line before cropping (detectors with eye keypoints: "
                          "blazeface-*, yunet). Default: PipelineOptions.align."),
    ]
    return functools.reduce(lambda cmd, option: option(cmd), reversed(options), command)


def build_pipeline(model_path, verify_sha256, threads, device, fallback_cpu, tta, calibration, detector, detector_model,
                   min_face, turned_search, align, detect_every=None, search_every=None, max_frame_pixels=None):
    """An EmotionPipeline from the command-line options; problems become one-line click errors."""
    from fer_edge.edge_runtime.classifier import ClassifierOptions, resolve_model
    from fer_edge.edge_runtime.errors import FerEdgeError
    from fer_edge.edge_runtime.pipeline import EmotionPipeline, PipelineOptions

    # Unset options (None) take the options dataclasses' defaults: one home for every default; a
    # --max-frame-pixels of 0 means no cap.
    given = {key: value for key, value in dict(tta=tta, calibration=calibration).items() if value is not None}
    try:
        classifier = ClassifierOptions(resolve_model(model_path), threads, device, fallback_cpu, verify_sha256, **given)
        given = {key: value for key, value in dict(detector=detector, detector_model=detector_model,
                                                   min_face=min_face, turned_search=turned_search,
                                                   align=align, detect_every=detect_every,
                                                   search_every=search_every).items() if value is not None}
        if max_frame_pixels is not None:
            given["max_frame_pixels"] = max_frame_pixels or None
        return EmotionPipeline.create(classifier, PipelineOptions(**given))
    except FerEdgeError as error:  # the verbs are also invoked outside the `fer-edge` group (tests, scripts)
        raise click.ClickException(str(error)) from None


class AnnotationWriter:
    """Writes annotated frames of one source to its `annotation_paths` file (an image, or an .mp4).

    Frames go to a hidden temporary file that is renamed into place when the source ends, so an
    interrupted video never sits under the final name; nothing is created for a source without frames.
    """

    def __init__(self, path: Path, fps: float | None):
        self.path, self.fps, self._video, self._tmp = path, fps or 15.0, None, None
        self._files = contextlib.ExitStack()

    def __enter__(self):
        return self

    def write(self, image) -> None:
        import cv2

        if self._tmp is None:
            self._tmp = self._files.enter_context(atomic_path(self.path))
        if self.path.suffix != ".mp4":
            if not cv2.imwrite(str(self._tmp), image):
                raise click.ClickException(f"--annotate: cannot write {self.path}")
            return
        if self._video is None:
            size = (image.shape[1], image.shape[0])
            self._video = cv2.VideoWriter(str(self._tmp), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, size)
            if not self._video.isOpened():
                raise click.ClickException(f"--annotate: cannot write video {self.path}")
        self._video.write(image)

    def __exit__(self, *exc_info):
        if self._video is not None:
            self._video.release()  # finishes the .mp4 before it is renamed (or removed, on an exception)
        return self._files.__exit__(*exc_info)


def annotation_paths(folder: Path, sources: list[str]) -> dict[str, Path]:
    """Where each source's annotations go in `folder`: its name (an .mp4 for videos and cameras), with
    -1, -2, ... for inputs of the same name from different folders. An input is never overwritten:
    predicting a folder into itself is refused."""
    from fer_edge.edge_runtime.sources import is_camera, is_image

    inputs = {Path(source).resolve() for source in sources if not is_camera(source)}
    paths, taken = {}, set()
    for source in sources:
        stem = re.sub(r"[^\w.-]+", "_", source).strip("_") if is_camera(source) else Path(source).stem
        suffix = Path(source).suffix.lower() if is_image(source) else ".mp4"
        name, n = stem + suffix, 1
        while name in taken:
            name, n = f"{stem}-{n}{suffix}", n + 1
        taken.add(name)
        if (folder / name).resolve() in inputs:
            raise click.ClickException(f"--annotate {folder}: would overwrite the input {folder / name}; "
                                       "write the annotations into another folder")
        paths[source] = folder / name
    return paths


@contextlib.contextmanager
def _warnings_to(bar):
    """Print the runtime's warnings (damaged inputs, named) on stderr above the progress bar, like skips."""
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: bar.write(f"fer-edge predict: warning: {record.getMessage()}", file=sys.stderr)
    logger = logging.getLogger("fer_edge")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


@click.command()
@click.argument("sources", nargs=-1, required=True)
@runtime_options
@click.option("--detect-every", type=click.IntRange(min=1), default=None,
              help="Detect faces on every Nth video frame and reuse the boxes in between. Default: 1 "
                   "(PipelineOptions.detect_every).")
@click.option("--search-every", type=click.IntRange(min=1), default=None,
              help="Search the whole video frame on every Nth detection; in between, only find the faces already "
                   "found again, around their last place (cheaper; new faces wait for the next search). "
                   "Default: 1 (PipelineOptions.search_every).")
@click.option("--annotate", "annotate_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write annotated images (boxes and emotions drawn on each input; videos and cameras as .mp4) "
                   "into DIR. This saves pictures of faces to disk.")
@click.option("--max-frame-pixels", type=click.IntRange(min=0), default=None,
              help="Skip images and videos whose frames have more pixels (width x height) than this, before "
                   "decoding them; 0: no cap. Default: 50000000 (PipelineOptions.max_frame_pixels).")
def predict(sources, annotate_dir, **options):
    """Classify the emotions of faces in images, folders, videos, cameras (0, /dev/video0), rtsp:// streams or
    `picamera`.

    Prints one JSON line per frame on stdout: source, frame, faces (label, box, score, probabilities) and
    timings_ms. Inputs that cannot be read are reported on stderr and skipped; the exit status is 1 only
    when no frame at all could be processed.
    """
    from tqdm import tqdm

    from fer_edge.edge_runtime.drawing import annotate
    from fer_edge.edge_runtime.errors import SourceError
    from fer_edge.edge_runtime.sources import IMAGE_SUFFIXES, VIDEO_SUFFIXES, expand, is_image, probe, read_frames

    paths = expand(list(sources))
    empty = [source for source in sources if Path(source).is_dir() and not expand([source])]
    no_media = f"no images or videos in it (files ending in {' '.join(sorted(IMAGE_SUFFIXES | VIDEO_SUFFIXES))})"
    if not paths:  # only folders without images or videos expand to nothing
        raise FerEdgeError(f"{', '.join(sources)}: {no_media}")
    for folder in empty:
        click.echo(f"fer-edge predict: skipped {folder}: {no_media}", err=True)
    if annotate_dir:  # before the model loads and frames are read
        check_writable(annotate_dir, "--annotate", folder=True)
    targets = annotation_paths(annotate_dir, paths) if annotate_dir else {}
    pipeline = build_pipeline(**options)
    probes = {source: probe(source) for source in paths}
    counts = [frames for frames, _ in probes.values()]
    total = None if None in counts else sum(counts)
    processed, skipped = 0, []
    # A bar for a single image would be noise; folders, videos and cameras get one on stderr.
    with tqdm(total=total, unit="frame", file=sys.stderr, disable=len(paths) == 1 and is_image(paths[0])) as bar, \
            _warnings_to(bar):
        for source in paths:
            pipeline.reset()
            writer = AnnotationWriter(targets[source], probes[source][1]) if annotate_dir else None
            with writer or contextlib.nullcontext():
                try:
                    for index, frame in enumerate(read_frames(source, pipeline.options.max_frame_pixels)):
                        result = pipeline.process(frame)
                        click.echo(json.dumps({"source": source, "frame": index, **result.to_dict()}))
                        if writer:
                            writer.write(annotate(frame, result))
                        processed += 1
                        bar.update()
                except SourceError as error:  # the frames before the error keep their annotations
                    message = str(error) if source in str(error) else f"{source}: {error}"
                    bar.write(f"fer-edge predict: skipped {message}", file=sys.stderr)
                    skipped.append(source)
    if processed == 0:
        raise click.ClickException(f"no frame could be processed (skipped: {', '.join(skipped) or 'no input found'})")


@click.command()
@runtime_options
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=DEMO_OUT, show_default=True,
              help="Where to write the annotated sample image (saves an image; .jpg, .png, ...).")
def demo(out, **options):
    """Run the model on the shipped sample photo: print each face's emotions and timings, save an annotated copy."""
    import cv2

    from fer_edge.edge_runtime.drawing import annotate

    if not cv2.haveImageWriter(str(out)):
        raise FerEdgeError(f"--out {out}: OpenCV cannot write {out.suffix or 'files without an extension'}; "
                           "use .jpg or .png")
    check_writable(out, "--out")
    pipeline = build_pipeline(**options)
    image = cv2.imread(str(SAMPLE_IMAGE))
    pipeline.process(image)  # warm-up: the first invoke also prepares the kernels
    pipeline.reset()
    result = pipeline.process(image)
    click.echo(f"{SAMPLE_IMAGE.name}: {len(result.faces)} face(s)")
    for face in result.faces:
        ranked = sorted(zip(face.class_names, face.probabilities), key=lambda item: -item[1])
        click.echo(f"  box {face.box}: {face.label}  (" + ", ".join(f"{n} {p:.0%}" for n, p in ranked[:3]) + ")")
    click.echo("  time: " + ", ".join(f"{stage} {ms:.2f} ms" for stage, ms in result.timings_ms.items()))
    with atomic_path(out) as tmp:
        if not cv2.imwrite(str(tmp), annotate(image, result)):
            raise click.ClickException(f"--out: cannot write {out}")
    click.echo(f"wrote {out}")
