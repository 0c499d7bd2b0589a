"""MNIST-C's corruptions: each changes the images, keeps the digit, is seeded, fits other sizes and colours,
and a split is scored block by block, the same however it is sharded."""
import numpy as np
import pytest
from scipy import ndimage

from conftest import digit_images
from mnist_cnn import corruptions
from mnist_cnn.corruptions import CORRUPTIONS, accuracy_under_corruptions, blocks, corrupt, unfit
from mnist_cnn.params import CORRUPTION_NAMES
from mnist_cnn.shards import open_split, read_all, write_split

NAMES = list(CORRUPTIONS)


def test_the_params_schema_names_every_corruption_in_mnist_cs_order():
    assert CORRUPTION_NAMES == tuple(CORRUPTIONS) and len(CORRUPTIONS) == 15


def changed(clean, corrupted):
    """(fraction of the pixels that moved by more than 8 of 255, fraction of the images with such a pixel)."""
    moved = np.abs(corrupted.astype(int) - clean.astype(int)) > 8
    return moved.mean(), moved.reshape(len(moved), -1).any(axis=1).mean()


def hog(images, cells=7, bins=8):
    """A histogram of unsigned gradient orientations in each of cells x cells cells, weighted by the gradient,
    the whole scaled to length 1 (Dalal and Triggs' descriptor, simplified): nothing of mnist_cnn, and blind to
    brightness and to which side of a stroke is light."""
    x = ndimage.gaussian_filter(images.astype(np.float64) / 255, (0, 1, 1))
    gr, gc = np.gradient(x, axis=(1, 2))
    which = np.minimum((np.mod(np.arctan2(gr, gc), np.pi) / np.pi * bins).astype(int), bins - 1)
    n, height, width = x.shape
    cell = (np.arange(height)[:, None] * cells // height) * cells + np.arange(width)[None, :] * cells // width
    index = (np.arange(n)[:, None, None] * cells * cells + cell) * bins + which
    features = np.bincount(index.ravel(), np.hypot(gr, gc).ravel(), n * cells * cells * bins).reshape(n, -1)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def about_centre(images, matrix):
    """Each image mapped by a 2x2 matrix (rows, columns) about its centre: ndimage's, not the module's warp."""
    centre = (np.array(images.shape[1:]) - 1) / 2
    full = np.eye(3)
    full[1:, 1:] = matrix
    return ndimage.affine_transform(images.astype(float), full, offset=np.r_[0, centre - matrix @ centre], order=1)


@pytest.fixture(scope="module")
def reference():
    """A nearest-neighbour reader of digits, independent of the model and of the module: generated digits,
    also turned by 15 and 30 degrees, sheared, shrunk and moved by 3 pixels (what MNIST-C holds a digit's
    meaning survives), as HOG features. Returns recognised(images, labels) -> the fraction read right."""
    x, y = digit_images(300, seed=11)
    views = [x]
    for degrees in (-30, -15, 15, 30):
        t = np.radians(degrees)
        views.append(about_centre(x, np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])))
    views += [about_centre(x, np.array([[1, 0], [s, 1]])) for s in (-0.4, 0.4)] + [about_centre(x, np.eye(2) / 0.75)]
    views += [ndimage.shift(x, (0, dr, dc), order=0) for dr in (-3, 3) for dc in (-3, 3)]
    features, labels = hog(np.concatenate(views)), np.tile(y, len(views))

    def recognised(images, truth):
        return np.mean(labels[(hog(images) @ features.T).argmax(axis=1)] == truth)
    return recognised


@pytest.fixture(scope="module")
def digits():
    """200 generated digits (N, 28, 28, 1) and their labels, which the reference has not seen."""
    x, y = digit_images(200, seed=12)
    return x[..., None], y


@pytest.mark.parametrize("name", NAMES)
def test_every_corruption_changes_the_digits_and_keeps_them_readable(name, digits, reference):
    """At least 2% of the pixels change, in nearly every image; the reference still reads at least half the
    digits right (it reads 98% of the clean ones; chance is 10%)."""
    x, y = digits
    out = corrupt(name, x, seed=0)
    assert out.shape == x.shape and out.dtype == np.uint8
    pixels, images = changed(x, out)
    assert pixels >= 0.02 and images >= 0.95, (pixels, images)
    assert reference(out[..., 0], y) >= 0.5


def test_the_checks_catch_a_corruption_that_changes_nothing_or_destroys_the_digit(digits, reference):
    """The two checks above, on corruptions that are broken: one returns its input; the others leave noise, a
    blank, a blur nobody could read, or the digits of other images."""
    x, y = digits
    assert reference(x[..., 0], y) >= 0.95
    assert changed(x, x.copy()) == (0, 0)
    rng = np.random.default_rng(0)
    destroyed = {"noise": rng.integers(0, 256, x.shape, dtype=np.uint8), "blank": np.zeros_like(x),
                 "blur": np.clip(ndimage.gaussian_filter(x * 3.0, (0, 4, 4, 0)), 0, 255).astype(np.uint8),
                 "other images": np.roll(x, 1, axis=0)}
    for name, images in destroyed.items():
        assert changed(x, images)[0] >= 0.02, name  # it changes the pixels: only the reading catches it
        assert reference(images[..., 0], y) < 0.25, name


@pytest.mark.parametrize("name", NAMES)
def test_a_corruption_is_a_function_of_seed_and_block(name, digits):
    """The same images, seed and block: the same bytes; another seed or block: other draws (a block's draws
    are made for the whole block, which is why blocks are cut the same however the split is sharded)."""
    x, _ = digits
    first = corrupt(name, x[:50], seed=0, block=0)
    assert np.array_equal(first, corrupt(name, x[:50], seed=0, block=0))
    others = [corrupt(name, x[:50], seed=1, block=0), corrupt(name, x[:50], seed=0, block=1)]
    if name in ("scale", "brightness", "stripe", "canny_edges"):  # no randomness in them
        assert all(np.array_equal(first, other) for other in others)
    else:
        assert not any(np.array_equal(first, other) for other in others)


def coloured(images):
    """Grayscale digits as coloured ones, twice the size: a light yellow digit on a dark navy ground."""
    big = np.kron(images.astype(float), np.ones((1, 2, 2)))[..., None] / 255
    ground, ink = np.array([0.05, 0.05, 0.1]), np.array([1.0, 1.0, 0.5])
    return np.rint((ground * (1 - big) + ink * big) * 255).astype(np.uint8)


@pytest.mark.parametrize("name", NAMES)
def test_colour_images_of_another_size(name, digits, reference):
    """On 56x56 RGB digits a corruption does what it does at 28x28 (its pixel sizes doubled), or says why it
    does not fit: the digit, read back at 28x28 as luminance, stays readable."""
    x, y = digits
    images = coloured(x[..., 0])
    reason = unfit(name, images.shape[1:])
    if name == "canny_edges":
        assert reason and "colour" in reason
        return
    assert reason is None and unfit(name, (56, 56, 1)) is None
    out = corrupt(name, images, seed=0)
    assert out.shape == images.shape and out.dtype == np.uint8
    assert changed(images, out)[0] >= 0.02
    luminance = out.astype(float) @ [0.299, 0.587, 0.114]
    assert reference(luminance.reshape(-1, 28, 2, 28, 2).mean(axis=(2, 4)), y) >= 0.5


@pytest.mark.parametrize("shape", [(6, 8, 12, 1), (6, 8, 12, 3), (2, 37, 23, 3)])
def test_the_smallest_and_odd_sizes_preprocess_allows(shape):
    """Images of 8 pixels a side (preprocess's least), wider than high, of odd sizes: each corruption that fits
    keeps their shape and changes them."""
    x = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    for name in NAMES:
        if not unfit(name, shape[1:]):
            out = corrupt(name, x, seed=0)
            assert out.shape == x.shape and out.dtype == np.uint8 and (out != x).mean() > 0.01, name


def blob(row, column, sigma=1.2, size=28):
    """An image of a Gaussian spot centred at (row, column), which may lie between pixels."""
    rows, columns = np.mgrid[:size, :size]
    spot = np.exp(-((rows - row) ** 2 + (columns - column) ** 2) / (2 * sigma**2))
    return np.rint(255 * spot)[None, ..., None].astype(np.uint8)


def centroid(image):
    """(row, column) of an image's centre of brightness."""
    rows, columns = np.mgrid[:image.shape[1], :image.shape[2]]
    weights = image[0, ..., 0].astype(float)
    return np.array([np.average(rows, weights=weights), np.average(columns, weights=weights)])


def test_the_geometry_against_hand_computed_positions():
    """A spot 7 pixels right of the centre (13.5, 13.5): scale brings it to 4.9; rotate turns it by 0.4 radians
    either way; shear (skimage's of 2018, as MNIST-C ran it: each output pixel (x, y) reads the input at
    (x - sin(0.4) y, cos(0.4) y) from the centre) leaves it where it was, and moves one above the centre aside;
    translate moves it 3 pixels along each axis; stripe inverts the left and right quarters."""
    spot, offset = blob(13.5, 20.5), np.array([0.0, 7.0])
    np.testing.assert_allclose(centroid(spot), 13.5 + offset, atol=0.01)
    np.testing.assert_allclose(centroid(corrupt("scale", spot, 0)), 13.5 + 0.7 * offset, atol=0.1)
    for seed in range(6):  # both signs come up
        turned = centroid(corrupt("rotate", spot, seed)) - 13.5
        assert abs(np.linalg.norm(turned) - 7) < 0.15
        assert abs(abs(np.arctan2(turned[0], turned[1])) - 0.4) < 0.03
        np.testing.assert_allclose(centroid(corrupt("shear", spot, seed)), 13.5 + offset, atol=0.1)
        moved = centroid(corrupt("translate", spot, seed)) - centroid(spot)
        np.testing.assert_allclose(np.abs(moved), [3, 3], atol=0.01)
    high, sides = blob(6.5, 13.5), set()  # 7 above the centre: sheared to 7 / cos(0.4) above, 7 tan(0.4) aside
    for seed in range(6):
        row, column = centroid(corrupt("shear", high, seed))
        assert abs(row - (13.5 - 7 / np.cos(0.4))) < 0.1 and abs(abs(column - 13.5) - 7 * np.tan(0.4)) < 0.1
        sides.add(np.sign(column - 13.5))
    assert sides == {-1, 1}
    out = corrupt("stripe", spot, 0)
    assert (out[0, :, :7] == 255 - spot[0, :, :7]).all() and (out[0, :, 21:] == 255 - spot[0, :, 21:]).all()
    assert (out[0, :, 7:21] == spot[0, :, 7:21]).all()


def test_light_noise_and_edges_against_hand_computed_values(digits):
    """Brightness adds half the range to the HSV value; shot noise's mean is Poisson's; impulse noise hits 17%
    of the values; Canny's edges of a square lie on its border, all round it."""
    x, _ = digits
    grey = np.full((1, 28, 28, 1), 100, np.uint8)
    assert (corrupt("brightness", grey, 0) == 228).all()  # 100 + 127.5, rounded
    colour = np.zeros((1, 4, 4, 3), np.uint8) + np.array([100, 50, 0], np.uint8)
    assert (corrupt("brightness", colour, 0) == [228, 114, 0]).all()  # value 100/255 + 0.5, hue and saturation kept
    # Poisson noise of 3 photons at full brightness: grey 100 becomes k photons of 85 each, k ~ Poisson(3 * 100 / 255),
    # at most 3 (255); the mean of 40,000 pixels within 1% of that expectation
    from scipy.stats import poisson  # here: 0.7 s of every xdist worker's collection otherwise

    k = np.arange(40)
    expected = 85 * np.sum(np.minimum(k, 3) * poisson.pmf(k, 3 * 100 / 255))
    noisy = corrupt("shot_noise", np.full((1, 200, 200, 1), 100, np.uint8), 0)
    assert set(np.unique(noisy)) <= {0, 85, 170, 255} and abs(noisy.mean() - expected) < 0.01 * expected
    flipped = corrupt("impulse_noise", x, 0) != x
    assert 0.15 < flipped.mean() < 0.17  # 17% drawn; a few land on the value they already had
    square = np.zeros((1, 28, 28, 1), np.uint8)
    square[0, 9:19, 9:19] = 255
    edges = corrupt("canny_edges", square, 0)[0, ..., 0] > 0
    ring = np.zeros((28, 28), bool)
    ring[8:20, 8:20], ring[10:18, 10:18] = True, False  # within a pixel of the square's border
    assert edges.any() and not (edges & ~ring).any()
    assert all(edges[row].any() for row in range(10, 18)) and all(edges[:, column].any() for column in range(10, 18))


# skimage.feature.canny (scikit-image 0.26, the defaults MNIST-C used) of the three images below, as packed bits
SKIMAGE_EDGES = (
    "00000000000000000000000000000003800001cf00007018000400c000800600080020010002001000100100010010001001000300100020"
    "008002000c004000600c00030380000fe000000000000000000000000000000000000000000000000000",
    "000000000000000000000000000001f81e00107e100300008010001800800100080010004003000600200020020001002000100400008040"
    "000c04000040c000020800002080000118000019000000f0000000000000000000000000000000000000",
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000001ffc000100400010"
    "040001004000100400010040001004000100400010040001ffc0000000000000000000000000000000",
)


def test_canny_edges_are_scikit_images():
    """A disc with a soft rim, off the pixel grid; a slanted triangle; a faint block (edges between the two
    thresholds, and nothing strong joins them: hysteresis drops them) above a bright one: every edge pixel where
    skimage puts one (its smoothing, Sobel gradients, thinning along the gradient, hysteresis)."""
    rows, columns = np.mgrid[:28, :28]
    disc = np.clip(8.5 - np.hypot(rows - 12.3, columns - 14.8), 0, 1)
    triangle = ((rows >= 5) & (rows <= 22) & (columns >= 6 + (rows - 5) * 0.6)
                & (columns <= 24 - (rows - 5) * 0.3)).astype(float)
    blocks = np.zeros((28, 28))
    blocks[3:10, 3:25], blocks[14:24, 3:14], blocks[14:24, 14:25] = 0.05, 1.0, 0.06
    shapes = np.stack([disc, triangle, blocks]).astype(np.float32)[..., None]
    edges = corruptions.canny_edges(shapes, None)[..., 0] > 0
    for found, packed in zip(edges, SKIMAGE_EDGES):
        assert np.array_equal(found, np.unpackbits(np.frombuffer(bytes.fromhex(packed), np.uint8))[:784]
                              .reshape(28, 28).astype(bool))


def test_blocks_and_scores_do_not_depend_on_the_sharding(processed_dir, sharded_dir, monkeypatch):
    """The tiny test split as one shard and as shards of 66 and 34 images: the same blocks of 40 images, and
    the same accuracies; a block is cut as soon as its shards are read, not after the whole split."""
    monkeypatch.setattr(corruptions, "BLOCK_BYTES", 40 * 28 * 28)
    whole, sharded = open_split(processed_dir / "test"), open_split(sharded_dir / "test")
    assert (len(whole.files), len(sharded.files)) == (1, 2)
    for a, b in zip(blocks(whole), blocks(sharded), strict=True):
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert [len(y) for _, y in blocks(sharded)] == [40, 40, 20]
    x, y = read_all(whole)  # each image with its own label, in the split's order
    assert np.array_equal(np.concatenate([b[0] for b in blocks(sharded)]), x)
    assert np.array_equal(np.concatenate([b[1] for b in blocks(sharded)]), y)
    reads = []
    monkeypatch.setattr(corruptions, "read_shard", lambda split, path: reads.append(path) or read_all(whole))
    next(blocks(sharded))
    assert len(reads) == 1

    def predict(images):  # a stand-in model: "the class is the image's brightness decile"
        return np.eye(10)[np.minimum((images.mean(axis=(1, 2, 3)) * 40).astype(int), 9)]

    monkeypatch.undo()
    monkeypatch.setattr(corruptions, "BLOCK_BYTES", 40 * 28 * 28)
    scores = [accuracy_under_corruptions(predict, folder / "test", NAMES, seed=3, examples=2)
              for folder in (processed_dir, sharded_dir)]
    assert scores[0][0] == scores[1][0] and list(scores[0][0]) == ["clean", *NAMES] and scores[0][1] == {}
    shown = scores[0][2]
    assert list(shown) == ["clean", *NAMES] and all(len(images) == 2 for images in shown.values())


def test_colour_splits_skip_what_does_not_fit(tmp_path):
    x, y = digit_images(30, seed=4)
    write_split(tmp_path / "test", coloured(x), y, np.array([str(d) for d in range(10)]), 64)
    accuracies, skipped, _ = accuracy_under_corruptions(lambda images: np.ones((len(images), 10)) / 10,
                                                        tmp_path / "test", ["fog", "canny_edges"], seed=0)
    assert list(accuracies) == ["clean", "fog"] and list(skipped) == ["canny_edges"]
