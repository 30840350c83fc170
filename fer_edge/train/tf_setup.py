"""Import TensorFlow once, the way the training side needs it (Keras 2 via tf-keras)."""
import fer_edge  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf

tf.get_logger().setLevel("ERROR")

__all__ = ["tf"]
