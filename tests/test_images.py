"""Images as the model sees them (mnist_cnn/images.py): MNIST's own normalisation undoes size, position and polarity."""
import numpy as np
from PIL import Image

from conftest import REAL_MNIST, digit_images, needs_real_mnist
from mnist_cnn.images import BadImage, fit_colour, mnist_style, read_image


def transformed(digit):
    """A digit as a user might photograph it: enlarged to 200 x 200, dark on light, off-centre on a big page."""
    big = np.asarray(Image.fromarray(digit).resize((200, 200), Image.Resampling.BILINEAR))
    page = np.full((320, 400), 255, np.uint8)
    page[90:290, 20:220] = 255 - big
    return page


def normalisation_error(digit):
    return np.abs(mnist_style(transformed(digit)) - digit / np.float32(255)).mean()


def test_normalisation_undoes_size_position_and_polarity():
    digits, _ = digit_images(20, seed=3)
    errors = []
    for digit in digits:
        mnist_like = mnist_style(digit)  # the generated digits are not yet in MNIST's 20x20 box
        again = mnist_style(transformed((mnist_like * 255).astype(np.uint8)))
        assert again.shape == (28, 28) and again.dtype == np.float32 and again.max() == 1
        errors.append(np.abs(again - mnist_like).mean())
    assert np.mean(errors) < 0.04 and np.max(errors) < 0.08


@needs_real_mnist
def test_normalisation_gives_back_the_mnist_original():
    with np.load(REAL_MNIST) as data:
        digits = data["x_test"][:200]
    assert np.mean([np.abs(mnist_style(d) - d / np.float32(255)).mean() for d in digits]) < 0.002
    errors = [normalisation_error(d) for d in digits]  # resampling 28 -> 200 -> 20 pixels blurs a little
    assert np.mean(errors) < 0.035 and np.max(errors) < 0.08


def test_blank_image_has_no_ink():
    try:
        mnist_style(np.full((28, 28), 200, np.uint8))
    except BadImage as e:
        assert str(e) == "no ink: the image is blank (one colour)"
    else:
        raise AssertionError("a blank image was accepted")


def test_colour_images_are_fitted_and_centred(tmp_path):
    pixels = np.zeros((10, 40, 3), np.uint8)
    pixels[..., 0] = 255  # a red bar, four times as wide as high
    Image.fromarray(pixels).save(tmp_path / "bar.png")
    fitted = fit_colour(read_image(tmp_path / "bar.png", colour=True), 28)
    assert fitted.shape == (28, 28, 3) and fitted.dtype == np.float32
    assert fitted[14, :, 0].min() == 1 and fitted[0, :, 0].max() == 0  # fitted to the width, centred in height
