"""The network (mnist_cnn/network.py): the notebook's CNN by default, what each model param changes,
the training-only layers."""
import keras
import numpy as np
import pytest

from conftest import REPO
from mnist_cnn import network
from mnist_cnn.model_files import load_model, save_model
from mnist_cnn.params import load_params
from mnist_cnn.runner import quiet_tensorflow

tf = quiet_tensorflow()
DEFAULTS = load_params(f"{REPO}/params.yaml")

def test_default_model_is_the_notebooks_network():
    model = network.build_model(DEFAULTS["model"], (28, 28, 1), 10)
    summary = [(type(layer).__name__, layer.output.shape[1:]) for layer in model.layers]
    assert summary == [
        ("Conv2D", (26, 26, 32)), ("MaxPooling2D", (13, 13, 32)),
        ("Conv2D", (11, 11, 64)), ("MaxPooling2D", (5, 5, 64)),
        ("Dropout", (5, 5, 64)), ("Flatten", (1600,)),
        ("Dense", (128,)), ("Dropout", (128,)), ("Dense", (10,)),
    ]
    assert [layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)] == [0.25, 0.5]
    assert model.layers[0].kernel_size == (3, 3) and model.layers[1].pool_size == (2, 2)
    assert model.layers[-1].activation.__name__ == "softmax"
    assert model.count_params() == 225_034


SETTINGS = ("filters", "units", "kernel_size", "strides", "padding", "pool_size", "rate", "activation", "use_bias",
            "momentum", "epsilon", "rotation", "zoom", "shift", "noise", "erase", "stroke", "solarize", "elastic",
            "elastic_sigma")


def architecture(model):
    """What a network is, without the names Keras makes up for each new layer (conv2d, conv2d_1, ...):
    per layer its type, output shape, settings and parameter count."""
    config = []
    for layer in model.layers:
        settings = {key: value for key, value in layer.get_config().items() if key in SETTINGS}
        config.append((type(layer).__name__, tuple(layer.output.shape[1:]), settings, layer.count_params()))
    return config


def test_the_same_params_build_the_same_network_twice():
    """The control for the test below: two builds compare equal, though Keras names their layers apart."""
    first = network.build_model(DEFAULTS["model"], (28, 28, 1), 10)
    second = network.build_model(DEFAULTS["model"], (28, 28, 1), 10)
    assert [layer.name for layer in first.layers] != [layer.name for layer in second.layers]
    assert architecture(first) == architecture(second)


NO_AUGMENTATION = dict.fromkeys(DEFAULTS["model"]["augment"], 0)  # every transform off: each case turns one on


@pytest.mark.parametrize("key, value", [
    ("conv_filters", [16, 32]), ("conv_filters", [32, 64, 64]), ("kernel_size", 5), ("pool_size", 3),
    ("conv_dropout", 0.1), ("dense_units", [256]), ("dense_units", [128, 64]), ("dense_dropout", 0.3),
    ("convs_per_block", 2), ("padding", "same"), ("global_pool", "average"), ("global_pool", "max"),
    ("downsample", "stride"), ("batch_norm", True), ("standardize", True),
    ("augment", {**NO_AUGMENTATION, "rotation": 10}), ("augment", {**NO_AUGMENTATION, "shift": 0.1}),
    ("augment", {**NO_AUGMENTATION, "zoom": 0.1}), ("augment", {**NO_AUGMENTATION, "noise": 0.1}),
    ("augment", {**NO_AUGMENTATION, "erase": 0.3}), ("augment", {**NO_AUGMENTATION, "stroke": 0.5}),
    ("augment", {**NO_AUGMENTATION, "solarize": 0.1}), ("augment", {**NO_AUGMENTATION, "elastic": 8}),
    ("augment", {**NO_AUGMENTATION, "elastic": 8, "elastic_sigma": 3}),
])
def test_every_model_param_changes_the_network(key, value):
    default = architecture(network.build_model(DEFAULTS["model"], (28, 28, 1), 10))
    if key == "augment" and value.get("elastic_sigma", 4) != 4:  # sigma changes the network beside elastic on
        default = architecture(network.build_model({**DEFAULTS["model"], key: {**value, "elastic_sigma": 4}},
                                                   (28, 28, 1), 10))
    changed = architecture(network.build_model({**DEFAULTS["model"], key: value}, (28, 28, 1), 10))
    assert default != changed


def test_options_beyond_the_notebook_build_the_network_they_name():
    params = {**DEFAULTS["model"], "convs_per_block": 2, "padding": "same", "batch_norm": True,
              "augment": {**DEFAULTS["model"]["augment"], "rotation": 10, "shift": 0.1, "zoom": 0.1}}
    model = network.build_model(params, (28, 28, 1), 10)
    names = [type(layer).__name__ for layer in model.layers]
    assert names[0] == "RandomAffine"
    conv = ["Conv2D", "FusedBatchNormalization", "Activation"]
    assert names[1:] == conv * 2 + ["MaxPooling2D"] + conv * 2 + ["MaxPooling2D", "Dropout", "Flatten", "Dense",
                                                                    "FusedBatchNormalization", "Activation",
                                                                    "Dropout", "Dense"]
    assert model.layers[2].output.shape[1:] == (28, 28, 32)  # same padding keeps 28 x 28
    x = np.random.default_rng(0).random((4, 28, 28, 1), dtype=np.float32)
    augment = model.layers[0]  # random in training, the identity at inference
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(augment(x, training=False)), x)
    assert not np.array_equal(keras.ops.convert_to_numpy(augment(x, training=True)), x)


@pytest.mark.parametrize("convs_per_block, pool_size", [(1, 2), (2, 2), (1, 3)])
def test_a_strided_block_computes_its_first_convolution_at_every_pool_size_th_position(convs_per_block, pool_size):
    """model.downsample: stride: no MaxPooling2D; each block's first Conv2D steps pool_size pixels, the others
    one. Its maps are the unstrided convolution's (NumPy, from the layer's weights) at every pool_size-th
    row and column, from the top-left corner."""
    params = {**DEFAULTS["model"], "conv_filters": [4, 8], "convs_per_block": convs_per_block,
              "pool_size": pool_size, "downsample": "stride"}
    model = network.build_model(params, (28, 28, 1), 10)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert not [layer for layer in model.layers if isinstance(layer, keras.layers.MaxPooling2D)]
    assert [layer.strides for layer in convs] == ([(pool_size,) * 2] + [(1, 1)] * (convs_per_block - 1)) * 2
    x = np.random.default_rng(1).random((2, 28, 28, 1), dtype=np.float32)
    first = keras.ops.convert_to_numpy(keras.Model(model.inputs, convs[0].output)(x))
    kernel, bias = (keras.ops.convert_to_numpy(weight) for weight in convs[0].weights)
    windows = np.lib.stride_tricks.sliding_window_view(x[..., 0], (3, 3), axis=(1, 2))  # (2, 26, 26, 3, 3)
    full = np.maximum(np.einsum("bijkl,klf->bijf", windows, kernel[:, :, 0, :]) + bias, 0)
    side = (28 - 3) // pool_size + 1
    assert first.shape == (2, side, side, 4)
    np.testing.assert_allclose(first, full[:, ::pool_size, ::pool_size], atol=1e-5)


@pytest.mark.parametrize("global_pool, layer", [("average", "GlobalAveragePooling2D"), ("max", "GlobalMaxPooling2D")])
def test_global_pooling_gives_a_moved_digit_the_probabilities_of_the_centred_one(global_pool, layer):
    """model.global_pool: the last block's maps pooled over every position (not flattened), so a digit moved by a
    multiple of the pools' stride (2 x 2 = 4 pixels), away from the border, gets the same probabilities; with the
    notebook's Flatten, other ones. The same weights both ways (a fixed seed)."""
    rng = np.random.default_rng(0)
    x = np.zeros((3, 28, 28, 1), np.float32)
    x[:, 9:15, 8:14] = rng.random((3, 6, 6, 1))  # a blob away from every border, and the same blob 4 pixels on
    moved = np.roll(x, (4, 4), axis=(1, 2))
    probabilities = {}
    for pool in ("none", global_pool):
        keras.utils.set_random_seed(0)
        params = {**DEFAULTS["model"], "conv_filters": [8, 16], "padding": "same", "global_pool": pool}
        model = network.build_model(params, (28, 28, 1), 10)
        assert (type(model.layers[5]).__name__ == layer) == (pool != "none")
        probabilities[pool] = [keras.ops.convert_to_numpy(model(images)) for images in (x, moved)]
    np.testing.assert_allclose(*probabilities[global_pool], atol=1e-6)
    assert np.abs(probabilities["none"][0] - probabilities["none"][1]).max() > 1e-3


@pytest.mark.parametrize("precision, tolerance", [("float32", 1e-5), ("mixed_bfloat16", 1e-3)])
def test_standardize_makes_the_network_blind_to_brightness_and_contrast(tmp_path, precision, tolerance):
    """model.standardize: each image scaled to zero mean and unit variance over its pixels, so an image and
    the same image brighter and with more contrast (without clipping) get the same probabilities; without it,
    other ones. Saved, it loads in safe mode with Keras alone and keeps that."""
    x = np.random.default_rng(0).random((4, 28, 28, 1), dtype=np.float32) * 0.5
    brighter = 1.8 * x + 0.1
    for standardize in (False, True):
        # the same weights whatever ran before in this process: with some, the untrained network's probabilities
        # moved by less than 0.005 without standardisation (a failure in a randomly ordered run)
        keras.utils.set_random_seed(0)
        model = network.build_model({**DEFAULTS["model"], "standardize": standardize}, (28, 28, 1), 10, precision)
        first, second = (keras.ops.convert_to_numpy(model(images)) for images in (x, brighter))
        assert np.abs(first - second).max() < tolerance if standardize else np.abs(first - second).max() > 0.005
    assert type(model.layers[0]).__name__ == "LayerNormalization"
    standardized = keras.ops.convert_to_numpy(model.layers[0](x))
    expected = (x - x.mean(axis=(1, 2, 3), keepdims=True)) / x.std(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(standardized, expected, atol=max(1e-3, 20 * tolerance))  # bfloat16: 8 bits
    save_model(model, tmp_path / "m.keras")
    np.testing.assert_array_equal(load_model(tmp_path / "m.keras")(brighter), model(brighter))


def test_noise_adds_gaussian_noise_of_its_deviation_in_training_only():
    params = {**DEFAULTS["model"], "augment": {**DEFAULTS["model"]["augment"], "noise": 0.2}}
    layer = network.build_model(params, (28, 28, 1), 10).layers[0]
    x = np.full((64, 28, 28, 1), 0.5, np.float32)
    added = keras.ops.convert_to_numpy(layer(x, training=True)) - x
    assert abs(added.mean()) < 0.01 and added.std() == pytest.approx(0.2, rel=0.02)
    assert abs(np.corrcoef(added[:, :, :-1].ravel(), added[:, :, 1:].ravel())[0, 1]) < 0.03  # each pixel its own
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x, training=False)), x)


def test_erase_covers_half_the_images_with_one_grey_rectangle_each_in_training_only():
    """model.augment.erase: each changed image differs from its original exactly on one axis-aligned
    rectangle (clipped by the border), filled with one grey, of at most that fraction of the image; about
    half the images are changed, with rectangles of many sizes and greys, in every part of the image."""
    params = {**DEFAULTS["model"], "augment": {**DEFAULTS["model"]["augment"], "erase": 0.3}}
    layer = network.build_model(params, (28, 28, 1), 10).layers[0]
    x = np.random.default_rng(0).random((512, 28, 28, 1), dtype=np.float32)  # no grey a rectangle could keep
    keras.utils.set_random_seed(0)
    y = keras.ops.convert_to_numpy(layer(x, training=True))
    changed = (y != x).any(axis=(1, 2, 3))
    assert 0.4 < changed.mean() < 0.6
    areas, greys, centres = [], [], []
    for before, after in zip(x[changed, ..., 0], y[changed, ..., 0]):
        rows, columns = np.nonzero(after != before)
        box = (slice(rows.min(), rows.max() + 1), slice(columns.min(), columns.max() + 1))
        assert (after[box] != before[box]).all()  # a full rectangle: every pixel in the box replaced
        assert np.ptp(after[box]) == 0 and 0 <= after[box][0, 0] <= 1  # by one grey
        areas.append(after[box].size / 784)
        greys.append(after[box][0, 0])
        centres.append((rows.mean(), columns.mean()))
    assert max(areas) <= 0.3 + 2 * 28 / 784 and max(areas) > 0.2 and min(areas) < 0.02  # whole pixels: a row more
    assert min(greys) < 0.1 and max(greys) > 0.9
    centres = np.array(centres)
    assert centres.min() < 3 and centres.max() > 24  # on every side, up to the border
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x, training=False)), x)


def test_stroke_thins_or_thickens_each_image_by_its_own_fraction_in_training_only():
    """model.augment.stroke: each image moves towards its 3x3 dilation (thicker) or erosion (thinner), by one
    fraction per image of at most `stroke`, computed here with SciPy's grey morphology; both ways occur."""
    from scipy import ndimage
    params = {**DEFAULTS["model"], "augment": {**DEFAULTS["model"]["augment"], "stroke": 0.5}}
    layer = network.build_model(params, (28, 28, 1), 10).layers[0]
    x = np.zeros((64, 28, 28, 1), np.float32)
    x[:, 6:22, 12:16] = 1.0  # a bar 4 pixels wide, with a grey edge
    x[:, 6:22, 16] = 0.5
    keras.utils.set_random_seed(0)
    y = keras.ops.convert_to_numpy(layer(x, training=True))
    dilated = ndimage.grey_dilation(x, size=(1, 3, 3, 1), mode="constant", cval=-np.inf)
    eroded = ndimage.grey_erosion(x, size=(1, 3, 3, 1), mode="constant", cval=np.inf)
    fractions = []
    for image, out, thick, thin in zip(x, y, dilated, eroded):
        towards = thick if out.sum() >= image.sum() else thin
        fraction = (out - image)[towards != image].mean() / (towards - image)[towards != image].mean()
        np.testing.assert_allclose(out, image + fraction * (towards - image), atol=1e-6)
        fractions.append(fraction if towards is thick else -fraction)
    assert -0.5 <= min(fractions) < -0.3 and 0.3 < max(fractions) <= 0.5
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x, training=False)), x)


def test_solarize_inverts_the_pixels_above_one_threshold_per_image_on_its_fraction_in_training_only():
    """model.augment.solarize: about that fraction of the images changed, each exactly as AugMix's solarize
    at one threshold of its own (every pixel above it inverted, every other kept), thresholds across 0-1;
    a digit's saturated core goes dark while its grey rim and the black background stay: its outline."""
    params = {**DEFAULTS["model"], "augment": {**DEFAULTS["model"]["augment"], "solarize": 0.3}}
    layer = network.build_model(params, (28, 28, 1), 10).layers[0]
    x = np.zeros((1000, 28, 28, 1), np.float32)
    x[:, 6:22, 12:16] = 1.0  # a bar 4 pixels wide
    x[:, 6:22, 11] = x[:, 6:22, 16] = 0.4  # with a grey rim
    x[:, 4, :, 0] = np.linspace(0, 1, 28, dtype=np.float32)  # and every grey, to read each threshold off
    keras.utils.set_random_seed(0)
    y = keras.ops.convert_to_numpy(layer(x, training=True))
    changed = (y != x).any(axis=(1, 2, 3))
    assert 0.25 < changed.mean() < 0.35
    thresholds = []
    for before, after in zip(x[changed], y[changed]):
        flipped = after != before
        threshold = before[flipped].min()  # the darkest pixel inverted: every brighter one is too
        np.testing.assert_array_equal(after, np.where(before >= threshold, 1 - before, before))
        assert (before[~flipped] < threshold).all()
        thresholds.append(threshold)
        if threshold > 0.4:  # the core dark, the rim and the background as they were: an outline
            assert after[14, 14, 0] == 0 and after[14, 11, 0] == np.float32(0.4) and after[0, 0, 0] == 0
    assert min(thresholds) < 0.1 and max(thresholds) > 0.9
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x, training=False)), x)


def test_augmentation_off_passes_the_images_through_unchanged_from_its_epoch_on():
    params = {**DEFAULTS["model"], "augment": {"rotation": 10, "shift": 0.1, "zoom": 0.1, "noise": 0.1, "erase": 0.3,
                                               "stroke": 0.5, "solarize": 0.3, "elastic": 8, "elastic_sigma": 4,
                                               "off_last_epochs": 1}}
    model = network.build_model(params, (28, 28, 1), 10)
    callback = network.AugmentationOff(first=2)
    callback.set_model(model)
    x = np.random.default_rng(0).random((8, 28, 28, 1), dtype=np.float32)
    for epoch, unchanged in ((0, False), (1, False), (2, True), (3, True)):
        callback.on_epoch_begin(epoch)
        y = keras.ops.convert_to_numpy(model.layers[0](x, training=True))
        assert np.array_equal(y, x) is unchanged, epoch  # exactly the pixels: no resampling blur


@pytest.mark.parametrize("channels", [1, 3])
def test_the_elastic_resampling_without_displacement_is_tensorflows_affine_transform(monkeypatch, channels):
    """With elastic on, the affine map is resampled by the layer's own bilinear code (warped), not by
    ImageProjectiveTransformV3: the two agree on every pixel when the displacements are zero, for rotations,
    zooms and shifts large enough to reach past the border (grayscale and RGB)."""
    layer = network.RandomAffine(elastic=8)
    monkeypatch.setattr(layer, "displacements", lambda batch, height, width: tf.zeros((batch, height, width, 2)))
    rng = np.random.default_rng(0)
    x = rng.random((64, 28, 28, channels), dtype=np.float32)
    angle, scale = rng.uniform(-0.6, 0.6, 64), rng.uniform(0.7, 1.3, 64)
    a0, a1 = scale * np.cos(angle), -scale * np.sin(angle)
    transforms = np.stack([a0, a1, rng.uniform(-8, 8, 64), -a1, a0, rng.uniform(-8, 8, 64), 0 * a0, 0 * a0],
                          axis=1).astype(np.float32)
    ours = keras.ops.convert_to_numpy(layer.warped(tf.constant(x), tf.constant(transforms), 64, 28, 28))
    theirs = keras.ops.convert_to_numpy(tf.raw_ops.ImageProjectiveTransformV3(
        images=x, transforms=transforms, output_shape=[28, 28], fill_value=0.0, interpolation="BILINEAR",
        fill_mode="CONSTANT"))
    assert 0.05 < (theirs == 0).mean() < 0.5  # the maps reach past the border
    np.testing.assert_allclose(ours, theirs, atol=2e-6)


def test_elastic_displacements_are_smooth_noise_of_the_size_the_params_give():
    """Simard et al.'s field: uniform noise smoothed by a Gaussian of sigma pixels, times alpha. Away from the
    border its deviation is alpha * sqrt(1/3 * sum of the 2-D kernel's squared taps), computed here with NumPy
    for sigma 4 and 2, and neighbouring pixels move together (correlation exp(-1 / (4 sigma^2)))."""
    for sigma, alpha in ((4, 34), (2, 8)):
        layer = network.RandomAffine(elastic=alpha, elastic_sigma=sigma)
        layer.build((None, 28, 28, 1))
        keras.utils.set_random_seed(0)
        field = keras.ops.convert_to_numpy(layer.displacements(2000, 28, 28))
        assert field.shape == (2000, 28, 28, 2)
        radius = int(np.ceil(3 * sigma))
        taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
        taps /= taps.sum()
        expected = alpha * np.sqrt(1 / 3 * (taps ** 2).sum() ** 2)
        inner = field[:, radius:28 - radius, radius:28 - radius]
        assert abs(inner.mean()) < 0.1 * expected  # about 6 standard errors: few independent pixels an image
        np.testing.assert_allclose(inner.std(), expected, rtol=0.03)
        neighbours = np.corrcoef(inner[:, :, :-1].ravel(), inner[:, :, 1:].ravel())[0, 1]
        assert neighbours == pytest.approx(np.exp(-1 / (4 * sigma ** 2)), abs=0.01)
        across = np.corrcoef(inner[..., 0].ravel(), inner[..., 1].ravel())[0, 1]
        assert abs(across) < 0.1  # x and y drawn apart (the same draw for both would give 1)


def test_elastic_distortion_bends_strokes_locally_and_only_in_training():
    """A straight bar comes out bent: the centre of its brightness moves by different amounts from row to row,
    where a shift alone moves every row alike; brightness is kept."""
    x = np.zeros((256, 28, 28, 1), np.float32)
    x[:, 4:24, 13:15] = 1  # a vertical bar 2 pixels wide, inside the border

    def bends(layer):  # per image, how far apart its rows' centres of brightness lie
        keras.utils.set_random_seed(0)  # traced, as fit runs the layer (a graph's shapes are not eager's)
        y = keras.ops.convert_to_numpy(tf.function(lambda images: layer(images, training=True))(x))[..., 0]
        rows = y[:, 8:20]
        centre = (rows * np.arange(28)).sum(axis=2) / rows.sum(axis=2)
        return centre.max(axis=1) - centre.min(axis=1), y

    shifted, _ = bends(network.RandomAffine(shift=0.1))
    bent, y = bends(network.RandomAffine(elastic=34, elastic_sigma=4))
    assert shifted.max() < 0.01 and np.nanmedian(bent) > 0.5  # nan: a row pushed off the bar's ends
    np.testing.assert_allclose(y.sum(axis=(1, 2)).mean(), x[..., 0].sum(axis=(1, 2)).mean(), rtol=0.05)
    layer = network.RandomAffine(elastic=34, elastic_sigma=4)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x, training=False)), x)


def centroids(images):
    """(row, column) of each image's centre of brightness, from the image's centre."""
    rows, cols = np.mgrid[:28, :28] - 13.5
    mass = images[..., 0].sum(axis=(1, 2))
    return np.stack([(images[..., 0] * rows).sum(axis=(1, 2)) / mass,
                     (images[..., 0] * cols).sum(axis=(1, 2)) / mass], axis=1)


@pytest.mark.parametrize("rotation, zoom, shift", [(10, 0, 0), (0, 0.1, 0), (0, 0, 0.1)])
def test_random_affine_rotates_zooms_and_shifts_within_its_limits(rotation, zoom, shift):
    x = np.zeros((256, 28, 28, 1), np.float32)
    x[:, 13:15, 19:21] = 1  # a 2x2 dot 6 pixels right of the centre
    keras.utils.set_random_seed(0)
    y = keras.ops.convert_to_numpy(network.RandomAffine(rotation, zoom, shift)(x, training=True))
    row, col = centroids(y).T
    radius, angle = np.hypot(row, col), np.degrees(np.arctan2(row, col))
    if rotation:  # on a circle around the centre, turned both ways up to 10 degrees
        np.testing.assert_allclose(radius, 6, atol=0.05)
        assert angle.min() < -8 and angle.max() > 8 and np.abs(angle).max() <= 10
    if zoom:  # along its ray, closer and further, by up to 10%
        np.testing.assert_allclose(angle, 0, atol=0.01)
        assert radius.min() < 6 / 1.08 and radius.max() > 6 / 0.92
        assert radius.min() >= 6 / 1.1 - 0.01 and radius.max() <= 6 / 0.9 + 0.01
    if shift:  # moved by up to 10% of 28 pixels on each axis
        assert np.abs(row).max() <= 2.8 + 0.01 and np.abs(col - 6).max() <= 2.8 + 0.01
        assert row.min() < -2.4 and row.max() > 2.4 and (col - 6).min() < -2.4 and (col - 6).max() > 2.4
    keras.utils.set_random_seed(0)
    again = keras.ops.convert_to_numpy(network.RandomAffine(rotation, zoom, shift)(x, training=True))
    np.testing.assert_array_equal(again, y)  # seeded: the same draws


def test_random_affine_resamples_once_so_images_stay_sharper_than_keras_three_layers():
    rng = np.random.default_rng(0)
    x = np.zeros((256, 28, 28, 1), np.float32)
    for image, (row, col) in zip(x, rng.integers(8, 20, (256, 2))):
        image[row - 1:row + 1, 4:24] = 1  # a 2-pixel stroke
        image[4:24, col - 1:col + 1] = 1
    keras.utils.set_random_seed(0)
    once = keras.ops.convert_to_numpy(network.RandomAffine(10, 0.1, 0.1)(x, training=True))
    three = x
    for layer in (keras.layers.RandomRotation(10 / 360, fill_mode="constant"),
                  keras.layers.RandomZoom(0.1, fill_mode="constant"),
                  keras.layers.RandomTranslation(0.1, 0.1, fill_mode="constant")):
        three = keras.ops.convert_to_numpy(layer(three, training=True))

    def peak(images):  # the mean of each image's 20 brightest pixels: 1 before any blur
        return np.sort(images.reshape(len(images), -1), axis=1)[:, -20:].mean()

    assert peak(once) > peak(three) + 0.03


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_fused_batch_norm_computes_what_keras_batch_norm_does(precision):
    fused = network.FusedBatchNormalization(momentum=0.9, dtype=precision)
    plain = keras.layers.BatchNormalization(momentum=0.9, dtype=precision)
    rng = np.random.default_rng(0)
    x, weights = rng.normal(2, 3, (2, 16, 7, 7, 8)).astype(np.float32)
    for layer in (fused, plain):
        layer.build(x.shape)
        layer.set_weights([np.linspace(0.5, 2, 8), np.linspace(-1, 1, 8), np.zeros(8), np.ones(8)])
    outputs = []
    for layer in (fused, plain):
        with tf.GradientTape() as tape:
            inputs = tf.constant(x)
            tape.watch(inputs)
            y = layer(inputs, training=True)
            loss = tf.reduce_sum(tf.cast(y, "float32") * weights)
        outputs.append([keras.ops.convert_to_numpy(v).astype(np.float32)
                        for v in [y, *tape.gradient(loss, [inputs, layer.gamma, layer.beta])]])
    tolerance = 1e-4 if precision == "float32" else 0.05  # bfloat16 keeps 8 bits of mantissa
    for a, b in zip(*outputs):  # outputs, then the gradients of the input, gamma and beta
        np.testing.assert_allclose(a, b, rtol=tolerance, atol=tolerance * np.abs(b).max())
    for a, b in zip(fused.get_weights()[2:], plain.get_weights()[2:]):  # moving mean and variance
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # a SavedModel saved and loaded: about 4 CPU-s in process
def test_saved_model_has_keras_own_layers_only_and_predicts_the_same(tmp_path):
    params = {**DEFAULTS["model"], "batch_norm": True,
              "augment": {**DEFAULTS["model"]["augment"], "rotation": 10, "shift": 0.1, "zoom": 0.1}}
    model = network.build_model(params, (28, 28, 1), 10)
    x = np.random.default_rng(0).random((64, 28, 28, 1), dtype=np.float32)
    model.compile("adam", "categorical_crossentropy")
    model.fit(x, keras.utils.to_categorical(np.arange(64) % 10, 10), epochs=1, verbose=0)
    save_model(network.inference_model(model), tmp_path / "m.keras")
    loaded = load_model(tmp_path / "m.keras")  # safe mode, nothing from train.py registered
    names = [type(layer).__name__ for layer in loaded.layers]
    assert "BatchNormalization" in names and "FusedBatchNormalization" not in names
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in model.layers[1:]]  # no augmentation
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    without_batch_norm = network.build_model(DEFAULTS["model"], (28, 28, 1), 10)
    assert network.inference_model(without_batch_norm) is without_batch_norm  # saved as before


def test_precision_sets_the_hidden_layers_dtype_and_keeps_softmax_float32():
    model = network.build_model(DEFAULTS["model"], (28, 28, 1), 10, "mixed_bfloat16")
    assert {layer.compute_dtype for layer in model.layers[:-1]} == {"bfloat16"}
    assert {layer.variable_dtype for layer in model.layers} == {"float32"}  # weights stay float32
    assert model.layers[-1].compute_dtype == "float32"
    assert model(np.zeros((2, 28, 28, 1), np.float32)).dtype == "float32"


def test_network_takes_input_shape_and_class_count_from_the_data():
    model = network.build_model(DEFAULTS["model"], (32, 32, 3), 5)
    assert model.input_shape == (None, 32, 32, 3) and model.output_shape == (None, 5)

