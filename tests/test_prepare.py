"""The notebook's data preparation (mnist_cnn/prepare.py): channel axis, scaling and one-hot, as the notebook
did them."""
import keras
import numpy as np

from mnist_cnn.prepare import one_hot, read_split, scale, scaled_shards, with_channel_axis
from mnist_cnn.shards import open_split, write_split


def test_channel_axis_and_scaling_are_the_notebooks():
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    notebook = images.reshape(-1, 28, 28, 1).astype("float32") / 255
    ours = scale(with_channel_axis(images))
    assert ours.dtype == np.float32 and ours.shape == (5, 28, 28, 1)
    np.testing.assert_array_equal(ours, notebook)
    assert with_channel_axis(np.zeros((2, 32, 32, 3), np.uint8)).shape == (2, 32, 32, 3)  # RGB keeps its channels


def test_one_hot_has_the_values_of_keras_to_categorical():
    labels = np.array([3, 0, 9, 9, 1])
    np.testing.assert_array_equal(one_hot(labels, 10), keras.utils.to_categorical(labels, 10))
    assert one_hot(labels, 10).dtype == np.float32


def test_a_split_on_disk_reads_back_scaled_whole_or_shard_by_shard(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (7, 5, 4, 1), dtype=np.uint8)  # 20 bytes an image: shards of 3, 3 and 1
    y = np.array([2, 0, 1, 2, 2, 1, 0], np.uint8)
    assert write_split(tmp_path / "split", x, y, np.array(["a", "b", "c"]), shard_mb=60 / 2**20) == 3
    images, labels, class_names = read_split(tmp_path / "split")
    np.testing.assert_array_equal(images, x.astype("float32") / 255)
    assert images.dtype == np.float32 and labels.tolist() == y.tolist() and class_names == ["a", "b", "c"]
    shards = list(scaled_shards(open_split(tmp_path / "split")))
    assert [len(s) for s in shards] == [3, 3, 1]
    np.testing.assert_array_equal(np.concatenate(shards), x.astype("float32") / 255)
