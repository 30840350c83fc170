"""Draw detected faces and their emotions onto a frame."""
from __future__ import annotations

import numpy as np

from fer_edge.edge_runtime.pipeline import FrameResult


def annotate(frame: np.ndarray, result: FrameResult) -> np.ndarray:
    """Return a BGR copy of `frame` with a box and `label probability` above each face."""
    import cv2

    image = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR) if frame.ndim == 2 else frame.copy()
    thickness = max(1, round(max(image.shape[:2]) / 400))
    for face in result.faces:
        x, y, w, h = face.box
        cv2.rectangle(image, (x, y), (x + w, y + h), (0, 200, 0), thickness)
        text = f"{face.label} {float(np.max(face.probabilities)):.0%}"
        scale = 0.4 * thickness + 0.1
        (tw, th), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        top = max(th + baseline, y)  # keep the label inside the image for faces at the top edge
        cv2.rectangle(image, (x, top - th - baseline), (x + tw, top), (0, 200, 0), cv2.FILLED)
        cv2.putText(image, text, (x, top - baseline), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness)
    return image
