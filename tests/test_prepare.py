"""The notebook's data preparation (mnist_cnn/prepare.py): channel axis, scaling and one-hot, as the notebook
did them."""
import keras
import numpy as np

from mnist_cnn.prepare import one_hot, scale, with_channel_axis


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
