"""The notebook's data preparation, in one place: a channel axis, pixels scaled to [0, 1], one-hot labels.

The notebook did, for the training and the test images alike:

    x = x.reshape(-1, 28, 28, 1).astype("float32") / 255
    y = keras.utils.to_categorical(y, 10)

Here preprocess gives the images their channel axis and stores them as uint8 shards (a quarter of
float32's bytes to write, hash and cache); train and evaluate read a split that fits in memory with
read_split, which scales the pixels, and one-hot the labels with one_hot; mnist_cnn/streaming.py does
the same to a larger split, batch by batch. The arrays the network sees are equal to the notebook's.
"""
import numpy as np

from mnist_cnn.shards import open_split, read_all, read_shard


def with_channel_axis(images):
    """uint8 (N, H, W) or (N, H, W, 3) -> (N, H, W, C): the notebook's reshape(-1, 28, 28, 1) for MNIST."""
    channels = 1 if images.ndim == 3 else 3
    return images.reshape(-1, *images.shape[1:3], channels)


def scale(images):
    """uint8 pixels -> float32 in [0, 1], exactly as the notebook's astype("float32") / 255."""
    return images.astype(np.float32) / 255


def one_hot(labels, num_classes):
    """Integer labels -> float32 one-hot rows, the values of keras.utils.to_categorical."""
    return np.eye(num_classes, dtype=np.float32)[labels]


def read_split(folder):
    """A preprocess output folder, whole -> (x float32 (N, H, W, C) in [0, 1], y integer labels, class names)."""
    split = open_split(folder)
    x, y = read_all(split)
    return scale(x), y, list(split.class_names)


def scaled_shards(split):
    """A split's images shard by shard, each scaled as read_split does: memory bounded by one shard."""
    for path in split.files:
        yield scale(read_shard(split, path)[0])
