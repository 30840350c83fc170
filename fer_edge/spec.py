"""The model contract shared by training, conversion and the edge runtime.

Class names, input size and preprocessing live here and nowhere else, so a face produces the
same tensor on the training host and on the device. Only numpy and OpenCV are needed.
"""
from __future__ import annotations

import numpy as np

CLASS_NAMES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
NUM_CLASSES = len(CLASS_NAMES)
INPUT_SIZE = 48
INPUT_SHAPE = (INPUT_SIZE, INPUT_SIZE, 1)

# Written into every exported model so a device can check it feeds the model the way training did.
PREPROCESSING = {
    "color": "grayscale",
    "size": [INPUT_SIZE, INPUT_SIZE],
    "resize": "area",
    "scale": 1.0 / 255.0,
    "offset": 0.0,
}
# The contract's version, embedded as the metadata's "format". Adding a key that old runtimes may
# ignore keeps the major number; a change that makes them compute something else bumps it.
CONTRACT = "fer-edge/1"


def contract_problems(meta: dict) -> list[str]:
    """What in a model's embedded metadata this runtime cannot honour (an empty list: none).

    Only what changes the numbers is compared: the contract's major version, colour, input size,
    scale and offset, and the class count. Unknown extra keys are ignored, so a newer exporter
    that records more does not lock out older models or runtimes.
    """
    problems = []
    fmt = meta.get("format", CONTRACT)
    major = str(fmt).rpartition("/")[2].split(".")[0]
    if not str(fmt).startswith("fer-edge/") or not major.isdigit():
        problems.append(f"unknown metadata format {fmt!r}")
    elif int(major) > int(CONTRACT.rpartition("/")[2]):
        problems.append(f"metadata format {fmt} is newer than this runtime's {CONTRACT}: upgrade fer-edge")
    pre = meta.get("preprocessing")
    if pre is not None:
        if not isinstance(pre, dict):
            return problems + ["preprocessing is not a mapping"]
        for key in ("color", "size"):
            if key in pre and pre[key] != PREPROCESSING[key]:
                problems.append(f"preprocessing {key} {pre[key]!r}, this runtime feeds {PREPROCESSING[key]!r}")
        for key in ("scale", "offset"):
            value = pre.get(key, PREPROCESSING[key])
            # `not <=` also catches NaN, which compares false with everything
            if not isinstance(value, (int, float)) or not abs(value - PREPROCESSING[key]) <= 1e-9:
                problems.append(f"preprocessing {key} {value!r}, this runtime feeds {PREPROCESSING[key]!r}")
    names = meta.get("class_names")
    if names is not None:
        if not (isinstance(names, list) and all(isinstance(n, str) and n.strip() for n in names)):
            problems.append("class_names is not a list of names")
        elif len(set(names)) != len(names):  # results are keyed by name: a repeated one hides classes
            problems.append(f"class_names repeats a name: {names}")
        elif len(names) != NUM_CLASSES:
            problems.append(f"{len(names)} classes, expected {NUM_CLASSES}")
    return problems


def to_gray(image: np.ndarray) -> np.ndarray:
    """Return an 8-bit single-channel image from a gray, BGR or BGRA array."""
    import cv2

    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3:
        code = cv2.COLOR_BGRA2GRAY if image.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        image = cv2.cvtColor(image, code)
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    return image


def resize_face(gray: np.ndarray) -> np.ndarray:
    """Resize a grayscale face crop to the model's square input with area interpolation."""
    if gray.shape[:2] == (INPUT_SIZE, INPUT_SIZE):
        return gray
    import cv2

    return cv2.resize(gray, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_AREA)


def preprocess_faces(faces) -> np.ndarray:
    """Turn face crops (gray or colour, any size) into a float32 batch (N, 48, 48, 1) in [0, 1].

    A uint8 array of shape (N, 48, 48) is the fast path used for whole datasets.
    """
    if isinstance(faces, np.ndarray) and faces.ndim == 3 and faces.shape[1:] == (INPUT_SIZE, INPUT_SIZE):
        batch = faces
    else:
        batch = np.stack([resize_face(to_gray(np.asarray(face))) for face in faces]) if len(faces) else (
            np.zeros((0, INPUT_SIZE, INPUT_SIZE), np.uint8))
    return (batch.astype(np.float32) * np.float32(PREPROCESSING["scale"]))[..., None]


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype) -> np.ndarray:
    """Quantize a float tensor with a TFLite affine (scale, zero-point) into an integer dtype."""
    info = np.iinfo(dtype)
    q = np.round(x / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Map TFLite integer outputs back to floats: scale * (q - zero_point)."""
    return (scale * (q.astype(np.float32) - zero_point)).astype(np.float32)
