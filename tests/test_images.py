"""Images as the model sees them (mnist_cnn/images.py): MNIST's own normalisation undoes size, position and polarity."""
import numpy as np
import pytest
from PIL import Image

from conftest import REAL_MNIST, digit_images, needs_real_mnist
from mnist_cnn.images import BadImage, fit_colour, mnist_style, read_image, to_model_image


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


def seven(size=60):
    """A dark 7 on white, as a photo of one: its bar across the top, its stroke down to the bottom left."""
    image = np.full((size, size), 255, np.uint8)
    image[8:14, 10:50] = 0
    for row in range(14, 52):
        column = 50 - (row - 14) * 30 // 38
        image[row, column - 3: column + 3] = 0
    return image


def test_exif_orientation_is_honoured(tmp_path):
    """A phone stores the sensor's pixels sideways and says how to turn them in an EXIF tag."""
    upright = seven()
    stored = Image.fromarray(upright).transpose(Image.Transpose.ROTATE_90)  # as the camera wrote it
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: turn 90 degrees clockwise to view
    stored.save(tmp_path / "photo.png", exif=exif)
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "photo.png")), upright)
    np.testing.assert_array_equal(read_image(tmp_path / "photo.png"), upright.astype(np.float32))


def test_16_bit_and_float_images_keep_their_contrast_in_rgb(tmp_path):
    digit = 255 - seven()
    Image.fromarray(digit.astype(np.uint16) * 257).save(tmp_path / "deep.png")  # 16-bit grayscale PNG
    Image.fromarray(digit.astype(np.float32) / 255, mode="F").save(tmp_path / "float.tiff")
    for name in ("deep.png", "float.tiff"):
        pixels = read_image(tmp_path / name, colour=True)
        assert pixels.shape == (60, 60, 3) and pixels.max() == pytest.approx(255, abs=0.5) and pixels.min() == 0
        np.testing.assert_allclose(pixels[..., 0], digit, atol=0.5)  # not a blank white image


def test_nan_pixels_are_that_images_error(tmp_path):
    pixels = np.ones((20, 20), np.float32)
    pixels[3, 4] = np.nan
    Image.fromarray(pixels, mode="F").save(tmp_path / "nan.tiff")
    for colour in (False, True):
        with pytest.raises(BadImage, match="NaN or infinite pixel values"):
            read_image(tmp_path / "nan.tiff", colour)
    with pytest.raises(BadImage, match="NaN or infinite pixel values"):
        to_model_image(np.where(np.eye(28) > 0, np.inf, 0))


def test_a_colour_image_for_a_grayscale_model_becomes_its_brightness():
    digits, _ = digit_images(5, seed=1)
    for digit in digits:
        rgb = np.repeat(digit[..., None], 3, axis=2)
        np.testing.assert_allclose(to_model_image(rgb), mnist_style(digit), atol=1e-5)
        assert to_model_image(digit, colour=True).shape == (28, 28, 3)  # and the other way round


def test_an_unreadable_file_is_one_line(tmp_path):
    """A real EACCES: as root (the suite's and CI's user) the read happens in a child that has become nobody."""
    import os
    import shutil
    import tempfile
    folder = tempfile.mkdtemp(prefix="unreadable-", dir="/tmp")
    try:
        os.chmod(folder, 0o755)
        path = os.path.join(folder, "locked.png")
        Image.fromarray(seven()).save(path)
        os.chmod(path, 0)
        if os.geteuid() != 0:
            with pytest.raises(BadImage) as error:
                read_image(path)
            message = str(error.value)
        else:
            reader, writer = os.pipe()
            child = os.fork()
            if child == 0:  # the child: drop to nobody, read, report, and leave without cleaning up
                try:
                    os.setgid(65534)
                    os.setuid(65534)
                    read_image(path)
                    os.write(writer, b"read it")
                except BadImage as e:
                    os.write(writer, str(e).encode())
                finally:
                    os._exit(0)
            os.close(writer)
            message = os.read(reader, 1000).decode()
            os.waitpid(child, 0)
        assert message == "permission denied: make the file readable"
    finally:
        shutil.rmtree(folder)
