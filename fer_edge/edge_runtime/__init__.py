"""The lean edge runtime: numpy, OpenCV and a TFLite interpreter (LiteRT), no TensorFlow.

    from fer_edge.edge_runtime import ClassifierOptions, EmotionClassifier, EmotionPipeline
    pipeline = EmotionPipeline(EmotionClassifier(ClassifierOptions("model.tflite")))
    result = pipeline.process(frame)  # FrameResult: faces (box, score, label, probabilities), timings_ms
"""
from fer_edge.edge_runtime.classifier import SHIPPED_MODEL, ClassifierOptions, EmotionClassifier
from fer_edge.edge_runtime.detection import Detection, FaceDetector, create_detector
from fer_edge.edge_runtime.errors import (EdgeTpuUnavailableError, FerEdgeError, ModelError, RuntimeMissingError,
                                          SourceError)
from fer_edge.edge_runtime.interpreter import make_interpreter
from fer_edge.edge_runtime.pipeline import EmotionPipeline, FaceResult, FrameResult, PipelineOptions

__all__ = [
    "SHIPPED_MODEL", "ClassifierOptions", "EmotionClassifier", "Detection", "FaceDetector", "create_detector",
    "EdgeTpuUnavailableError", "FerEdgeError", "ModelError", "RuntimeMissingError", "SourceError",
    "make_interpreter", "EmotionPipeline", "FaceResult", "FrameResult", "PipelineOptions",
]
