"""Training-time augmentation, run on batches inside tf.data; never applied at evaluation."""
from __future__ import annotations

from fer_edge.train.config import AugmentConfig
from fer_edge.train.tf_setup import tf


def augmentation_layers(cfg: AugmentConfig, seed: int):
    layers = tf.keras.layers
    stack = []
    if cfg.flip:
        stack.append(layers.RandomFlip("horizontal", seed=seed, name="aug_flip"))
    if cfg.rotation:
        stack.append(layers.RandomRotation(cfg.rotation / 360.0, fill_mode="reflect", seed=seed + 1, name="aug_rotate"))
    if cfg.zoom:
        stack.append(layers.RandomZoom(cfg.zoom, fill_mode="reflect", seed=seed + 2, name="aug_zoom"))
    if cfg.shift:
        stack.append(layers.RandomTranslation(cfg.shift, cfg.shift, fill_mode="reflect", seed=seed + 3, name="aug_shift"))
    return tf.keras.Sequential(stack, name="augmentation")


def random_erasing(images, probability: float, max_fraction: float = 0.25):
    """Replace one random rectangle (up to `max_fraction` of the area) per image with noise."""
    shape = tf.shape(images)
    n, h, w = shape[0], shape[1], shape[2]
    area = tf.random.uniform([n], 0.02, max_fraction)
    aspect = tf.exp(tf.random.uniform([n], tf.math.log(0.3), tf.math.log(3.3)))
    eh = tf.cast(tf.clip_by_value(tf.sqrt(area * aspect) * tf.cast(h, tf.float32), 1, tf.cast(h, tf.float32)), tf.int32)
    ew = tf.cast(tf.clip_by_value(tf.sqrt(area / aspect) * tf.cast(w, tf.float32), 1, tf.cast(w, tf.float32)), tf.int32)
    y0 = tf.cast(tf.random.uniform([n]) * tf.cast(h - eh + 1, tf.float32), tf.int32)
    x0 = tf.cast(tf.random.uniform([n]) * tf.cast(w - ew + 1, tf.float32), tf.int32)
    rows = tf.range(h)[None, :, None]
    cols = tf.range(w)[None, None, :]
    box = ((rows >= y0[:, None, None]) & (rows < (y0 + eh)[:, None, None])
           & (cols >= x0[:, None, None]) & (cols < (x0 + ew)[:, None, None]))
    apply = tf.random.uniform([n, 1, 1]) < probability
    mask = tf.cast(box & apply, images.dtype)[..., None]
    return images * (1 - mask) + tf.random.uniform(tf.shape(images)) * mask


def mixup(images, labels, alpha: float):
    """Blend each image and its one-hot label with a shuffled partner from the same batch."""
    n = tf.shape(images)[0]
    g1 = tf.random.gamma([n], alpha)
    g2 = tf.random.gamma([n], alpha)
    lam = g1 / (g1 + g2)
    perm = tf.random.shuffle(tf.range(n))
    li = tf.reshape(lam, [-1, 1, 1, 1])
    ll = tf.reshape(lam, [-1, 1])
    return (li * images + (1 - li) * tf.gather(images, perm),
            ll * labels + (1 - ll) * tf.gather(labels, perm))


def augment_batch_fn(cfg: AugmentConfig, seed: int):
    """A tf.data map function (images, one-hot labels) -> augmented (images, labels)."""
    layers = augmentation_layers(cfg, seed)

    def apply(images, labels):
        # Under a mixed-precision policy the layers return bfloat16 or float16, which erasing's float32
        # noise and mixup's float32 weights cannot be mixed with; the model casts its input back anyway.
        images = tf.cast(layers(images, training=True), tf.float32)
        if cfg.erasing:
            images = random_erasing(images, cfg.erasing)
        if cfg.mixup:
            images, labels = mixup(images, labels, cfg.mixup)
        return images, labels

    return apply
