"""fer-edge: facial emotion recognition from FER2013 training to an int8 model on a small device."""
import os

# tfmot only accepts Keras 2 models, and the variable is read when TensorFlow is first imported,
# so it is set here, before any submodule can import TensorFlow.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
