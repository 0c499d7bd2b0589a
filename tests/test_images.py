"""Images as the model sees them (mnist_cnn/images.py): MNIST's own normalisation undoes size, position and polarity."""
import io
import time
import warnings

import numpy as np
import pytest
from crafted_images import dds_of_unknown_pixel_format, encoded, jpeg_claiming, tiff_with_a_tag_past_its_end
from PIL import Image, ImageCms, PngImagePlugin

from conftest import REAL_MNIST, digit_images, needs_real_mnist
from mnist_cnn.images import BadImage, decode_image, fit_colour, mnist_style, read_image, to_model_image


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
    """Three different digits in R, G and B: any other channel or weighting (a plain mean, BGR's order) gives
    another image than the brightness Pillow's convert("L") computes (ITU-R 601-2, in integers: within 0.003)."""
    digits, _ = digit_images(6, seed=1)
    for first in (0, 3):
        rgb = np.stack(digits[first: first + 3], axis=2)
        brightness = mnist_style(np.asarray(Image.fromarray(rgb).convert("L")))
        np.testing.assert_allclose(to_model_image(rgb), brightness, atol=0.01)
    gray = to_model_image(digits[0], colour=True)  # and the other way round: the gray image in every channel
    assert gray.shape == (28, 28, 3) and np.array_equal(gray[..., 0], gray[..., 1])
    np.testing.assert_array_equal(gray[..., 0], gray[..., 2])
    np.testing.assert_array_equal(gray, fit_colour(np.repeat(digits[0][..., None], 3, axis=2), 28))


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


OUTSIDE_THE_LIST = {  # formats Pillow opens that the project does not read
    "unknown.dds": dds_of_unknown_pixel_format,
    "digit.dds": lambda: encoded(np.repeat(seven()[..., None], 3, axis=2), "DDS"),
    "digit.spider": lambda: encoded(seven().astype(np.float32), "SPIDER"),
    "digit.tga": lambda: encoded(seven(), "TGA"),
    "crafted.blp": lambda: b"BLP1" + b"\x07" * 200,
}


@pytest.mark.parametrize("name", OUTSIDE_THE_LIST)
def test_formats_outside_the_list_are_not_opened(tmp_path, name):
    (tmp_path / name).write_bytes(OUTSIDE_THE_LIST[name]())
    with pytest.raises(BadImage, match=r"not an image file in a format this project reads \(PNG, JPEG, BMP, GIF, "
                                       r"TIFF, WebP, PGM/PPM\)"):
        read_image(tmp_path / name)


def mutants(data, count, seed):
    """count copies of data with 1 to 6 random bytes changed, a third of them cut short too."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        copy = bytearray(data)
        for position in rng.integers(0, len(copy), rng.integers(1, 7)):
            copy[position] = rng.integers(0, 256)
        yield bytes(copy[:rng.integers(8, len(copy))] if rng.random() < 0.3 else copy)


def test_every_decoder_failure_of_a_listed_format_is_that_files_bad_image():
    """Corrupt PNG, JPEG, BMP, GIF, TIFF, WebP and PGM files, mutated at random: each is read or is a BadImage,
    never another exception, and no warning escapes (TIFF's skipped tags, corrupt EXIF...)."""
    colour = np.repeat(seven()[..., None], 3, axis=2) // [1, 2, 3]
    sources = [encoded(colour.astype(np.uint8), format) for format in ("PNG", "JPEG", "BMP", "GIF", "WEBP")]
    sources += [encoded(colour.astype(np.uint8), "TIFF", compression=compression)
                for compression in (None, "tiff_deflate", "packbits")]
    sources += [encoded(seven(), "PPM"), encoded(seven().astype(np.uint16) * 257, "TIFF"),
                tiff_with_a_tag_past_its_end()]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for seed, source in enumerate(sources):
            for i, data in enumerate(mutants(source, 60, seed)):
                try:
                    decode_image(io.BytesIO(data), colour=i % 2 == 1)
                except BadImage as e:
                    assert "\n" not in str(e)
    assert [str(w.message) for w in caught] == []


def test_an_exception_a_plugin_was_never_expected_to_raise_is_that_files_bad_image(tmp_path, monkeypatch):
    """No corrupt PNG, JPEG... found raises outside Pillow's usual OSError and SyntaxError, but DDS raised
    NotImplementedError and others struct.error: whatever a plugin raises is the file's error, not a traceback."""
    Image.fromarray(seven()).save(tmp_path / "seven.png")

    def fails(image):
        raise NotImplementedError("Unimplemented pixel format 1515870810")

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", fails)
    with pytest.raises(BadImage, match=r"^broken image data \(NotImplementedError: Unimplemented pixel format"):
        read_image(tmp_path / "seven.png")


def test_a_jpeg_claiming_7000x7000_pixels_is_decoded_downscaled(tmp_path):
    (tmp_path / "claims.jpg").write_bytes(jpeg_claiming(7000, 7000))
    assert (tmp_path / "claims.jpg").stat().st_size < 1000
    started = time.perf_counter()
    for colour in (False, True):
        pixels = read_image(tmp_path / "claims.jpg", colour)  # libjpeg's 1/8 scale: 0.8 megapixels, not 49
        assert pixels.shape[:2] == (875, 875)
    assert time.perf_counter() - started < 2  # decoded in full it took 0.3 to 2 s each, and 600 MB


def test_the_pixel_budget(tmp_path):
    Image.new("L", (4001, 4000)).save(tmp_path / "over.png")  # 16,004,000 pixels, a few kB
    with pytest.raises(BadImage, match="4001x4000 pixels is over the limit of 16,000,000; scale it down"):
        read_image(tmp_path / "over.png")
    (tmp_path / "huge.jpg").write_bytes(jpeg_claiming(60000, 60000))  # 1/8 scale is still 56 megapixels
    with pytest.raises(BadImage, match="over the limit of 16,000,000"):
        read_image(tmp_path / "huge.jpg")
    big = np.asarray(Image.fromarray(seven()).resize((2500, 2500), Image.Resampling.BILINEAR))
    Image.fromarray(big).save(tmp_path / "photo.jpg", quality=90)  # a photo-sized 7: decoded at quarter scale
    pixels = read_image(tmp_path / "photo.jpg")
    assert pixels.shape == (625, 625)
    assert np.abs(to_model_image(pixels) - to_model_image(big)).mean() < 0.01


def test_a_lab_tiff_is_read_as_its_lightness_or_converted_to_rgb(tmp_path):
    rgb = np.zeros((30, 30, 3), np.uint8)
    rgb[5:25, 12:18] = (200, 60, 30)
    to_lab = ImageCms.buildTransform(ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"), "RGB", "LAB")
    ImageCms.applyTransform(Image.fromarray(rgb), to_lab).save(tmp_path / "lab.tif")
    assert Image.open(tmp_path / "lab.tif").mode == "LAB"
    np.testing.assert_allclose(read_image(tmp_path / "lab.tif", colour=True), rgb, atol=2)
    lightness = read_image(tmp_path / "lab.tif")
    assert lightness[0, 0] == 0 and 110 < lightness[15, 15] < 130  # CIE L* of that red: 48 of 100


def test_a_colour_image_is_resized_with_lanczos_keeping_its_aspect_and_centred():
    """A 10x20 image becomes 14x28 (Pillow's LANCZOS, computed here apart) in rows 7 to 20 of a black frame."""
    pixels = np.random.default_rng(5).integers(0, 256, (10, 20, 3), dtype=np.uint8)
    expected = np.zeros((28, 28, 3), np.float32)
    expected[7:21] = np.asarray(Image.fromarray(pixels).resize((28, 14), Image.Resampling.LANCZOS), np.float32) / 255
    np.testing.assert_array_equal(fit_colour(pixels, 28), expected)
    thin = fit_colour(np.full((2, 200, 3), 255, np.uint8), 28)  # 0.28 pixels high: one row, not none
    assert [int(row.any()) for row in thin.any(axis=2)] == [0] * 13 + [1] + [0] * 14
    assert thin.any(axis=(0, 2)).all()
    tall = fit_colour(np.full((200, 2, 3), 255, np.uint8), 28)
    assert [int(column.any()) for column in tall.any(axis=(0, 2))] == [0] * 13 + [1] + [0] * 14


@pytest.mark.parametrize("shape", [(5, 5), (5, 5, 4), (1, 5, 3), (5, 1, 3), (5, 5, 1)])
def test_what_is_not_a_colour_image_of_2x2_or_more_is_refused(shape):
    with pytest.raises(BadImage) as error:
        fit_colour(np.full(shape, 128, np.uint8), 28)
    assert str(error.value) == f"an image of shape {shape} is not a colour image of 2x2 pixels or more"
    assert fit_colour(np.full((2, 2, 3), 128, np.uint8), 28).shape == (28, 28, 3)  # the smallest taken


def test_a_path_that_is_not_utf_8_prints_its_bytes_as_escapes():
    from mnist_cnn.images import printable
    assert printable("digits/\udcff\udcfeseven.png") == "digits/\\xff\\xfeseven.png"  # os.listdir's surrogates
    assert printable("chiffres/sept-été.png") == "chiffres/sept-été.png"


@pytest.mark.parametrize("array, rgb", [
    (np.array([[0, 65535], [32768, 1]], np.uint16), np.array([[0, 65535], [32768, 1]]) * 255 / 65535),  # I;16
    (np.array([[0, 1000], [500, 1]], np.uint16), np.array([[0, 1000], [500, 1]]) * 255 / 65535),  # of its range
    (np.array([[0, 1], [0.5, 0.25]], np.float32), np.array([[0, 255], [127.5, 63.75]])),  # F in [0, 1]
    (np.array([[0, 1.5], [0.5, 0.25]], np.float32), np.array([[0, 1.5], [0.5, 0.25]])),  # F past 1: 0-255
    (np.array([[0, 1000], [-5, 250]], np.float32), np.array([[0, 255], [0, 63.75]])),  # F past 255: its peak
    (np.array([[0, 1], [1, 0]], np.int32), np.array([[0, 1], [1, 0]])),  # I: 0-255 whatever its peak
    (np.array([[0, 200], [100, 0]], np.int32), np.array([[0, 200], [100, 0]])),
])
def test_high_depth_images_are_scaled_to_0_255_for_colour_and_kept_exact_for_grayscale(tmp_path, array, rgb):
    Image.fromarray(array).save(tmp_path / "deep.tif")
    grey, colour = read_image(tmp_path / "deep.tif"), read_image(tmp_path / "deep.tif", colour=True)
    assert grey.dtype == colour.dtype == np.float32
    np.testing.assert_array_equal(grey, array.astype(np.float32))
    np.testing.assert_allclose(colour, np.repeat(rgb[..., None], 3, axis=2), rtol=1e-6)


def test_a_float_image_with_nan_and_an_error_without_text_are_one_line(tmp_path):
    from mnist_cnn.images import _first_line
    Image.fromarray(np.array([[0, np.nan], [1, 1]], np.float32)).save(tmp_path / "nan.tif")
    for colour in (False, True):
        with pytest.raises(BadImage) as error:
            read_image(tmp_path / "nan.tif", colour)
        assert str(error.value) == "NaN or infinite pixel values"
    assert (_first_line(ValueError()), _first_line(ValueError(" \n")), _first_line(OSError("a\nb"))) == (
        "no detail", "no detail", "a")


def test_brightness_weighs_red_green_and_blue_as_itu_r_601_2():
    """Three strokes, red, green and blue, on black: each as bright as 0.299 R + 0.587 G + 0.114 B says, in float32."""
    rgb = np.zeros((28, 28, 3), np.uint8)
    rgb[4:24, 5:8, 0], rgb[4:24, 12:15, 1], rgb[4:24, 19:22, 2] = 250, 200, 230
    luma = rgb.astype(np.float32) @ np.array([299, 587, 114], np.float32) / 1000
    np.testing.assert_array_equal(to_model_image(rgb), mnist_style(luma))
    noise = np.random.default_rng(0).integers(0, 256, (28, 28, 3)).astype(np.uint8)  # sums rounded in float32
    np.testing.assert_array_equal(to_model_image(noise), mnist_style(noise.astype(np.float32) @ np.array(
        [0.299, 0.587, 0.114], np.float32)))
    assert to_model_image(noise, 20).shape == (20, 20) and to_model_image(noise, 20, colour=True).shape == (20, 20, 3)
    brightness = Image.fromarray(rgb).convert("L")  # Pillow's own, rounded to integers
    np.testing.assert_allclose(to_model_image(rgb), mnist_style(np.asarray(brightness)), atol=0.02)


@pytest.mark.parametrize("pixels, message", [
    (np.ones((5, 5), np.complex64), "pixels of type complex64; expected numbers"),
    (np.full((5, 5), "7"), "pixels of type <U1; expected numbers"),
    (np.array([[0, 1], [np.inf, 1]]), "NaN or infinite pixel values"),
])
def test_an_array_that_is_not_finite_real_numbers_is_refused(pixels, message):
    with pytest.raises(BadImage) as error:
        to_model_image(pixels)
    assert str(error.value) == message


def test_the_border_is_the_outer_ring_of_pixels_each_once():
    from mnist_cnn.images import _border
    pixels = np.arange(20).reshape(4, 5)
    assert _border(pixels).tolist() == [0, 1, 2, 3, 4, 15, 16, 17, 18, 19, 5, 10, 9, 14]


@pytest.mark.parametrize("shape, text", [((1, 5), "5x1 pixels is too small to hold a digit"),
                                         ((5, 1), "1x5 pixels is too small to hold a digit"),
                                         ((6,), "an array of shape (6,) is not an image (height x width, or x 3 for "
                                                "colour)"),
                                         ((2, 2, 2), "an array of shape (2, 2, 2) is not an image (height x width, or "
                                                     "x 3 for colour)")])
def test_an_array_too_small_or_not_2d_is_refused_in_its_size(shape, text):
    with pytest.raises(BadImage) as error:
        mnist_style(np.ones(shape))
    assert str(error.value) == text


def test_a_2x2_image_is_the_smallest_taken_and_a_tie_is_not_inverted():
    assert mnist_style(np.array([[0, 255], [0, 0]])).max() == 1
    # the border's median (5) equals the mean: light ink (the 10s, top and right) on a dark background, kept
    pixels = np.array([[10, 10, 10, 10], [0, 5, 5, 10], [0, 5, 5, 10], [0, 0, 0, 0]], np.float32)
    out = mnist_style(pixels)
    assert out[:14, 14:].sum() > 2 * out[14:, :14].sum()


def test_a_rectangle_of_ink_becomes_20_pixels_high_centred_by_its_mass():
    """A 40x20 bar on a 60x40 frame: cropped to the bar, scaled by 1/2 to 20x10, its centre of mass (9.5, 4.5) put at
    (14, 14): rows 4 to 23 (Python rounds 4.5 to 4), columns 10 to 19. A smudge at exactly the ink threshold (a fifth
    of the contrast) and one fainter are not ink, and neither moves the crop."""
    expected = np.zeros((28, 28), np.float32)
    expected[4:24, 10:20] = 1
    for background, ink in ((0, 255), (255, 0), (50, 250)):
        pixels = np.full((60, 40), background, np.float32)
        pixels[10:50, 10:30] = ink
        pixels[55, 35] = pixels[2, 2] = background + (ink - background) * 0.2  # at the threshold: not ink
        pixels[5, 5] = background + (ink - background) * 0.1
        np.testing.assert_allclose(mnist_style(pixels), expected, atol=1e-6)


@pytest.mark.parametrize("background, ink, taken", [(200, 209, False), (200, 210, True), (0, 0.07, True),
                                                    (0, 0, False)])
def test_ink_fainter_than_a_twentieth_of_the_background_is_no_ink(background, ink, taken):
    pixels = np.full((20, 20), background, np.float32)
    pixels[5:15, 8:12] = ink
    if taken:
        assert mnist_style(pixels).max() == 1
        return
    with pytest.raises(BadImage, match="^no ink: the image is blank"):
        mnist_style(pixels)


@pytest.mark.parametrize("shape, axis", [((40, 1), 0), ((1, 40), 1)])
def test_a_one_pixel_line_stays_one_pixel_wide(shape, axis):
    pixels = np.zeros((50, 50), np.float32)
    pixels[5:5 + shape[0], 5:5 + shape[1]] = 255
    assert mnist_style(pixels).any(axis=axis).sum() == 1


def test_a_digit_heavy_on_one_side_is_pushed_back_inside_the_frame():
    """Centred by its mass, a digit heavy at one end would leave the 28x28 frame at the other: it is moved back to
    touch that edge (a block at the top: the bar's foot on the bottom edge)."""
    cases = {"top": (np.s_[:, 19:21], np.s_[:10, 10:30], np.s_[-1]),
             "bottom": (np.s_[:, 19:21], np.s_[30:, 10:30], np.s_[0]),
             "left": (np.s_[19:21, :], np.s_[10:30, :10], np.s_[:, -1]),
             "right": (np.s_[19:21, :], np.s_[10:30, 30:], np.s_[:, 0])}
    for side, (bar, block, edge) in cases.items():
        pixels = np.zeros((40, 40), np.float32)
        pixels[bar] = 255  # a long bar with a block at one end: its centre of mass far from the middle
        pixels[block] = 255
        assert mnist_style(pixels)[edge].any(), side


def test_what_is_not_a_regular_file_is_named_exactly(tmp_path):
    import os
    import socket

    from mnist_cnn.images import SpecialFile, check_regular_file

    def refused(path, kind=BadImage):
        with pytest.raises(kind) as error:
            check_regular_file(str(path))
        return str(error.value)

    os.symlink(tmp_path / "b", tmp_path / "a")
    os.symlink(tmp_path / "a", tmp_path / "b")
    assert refused(tmp_path / "a") == "a symbolic link loop: remove the link"
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    assert refused(tmp_path / "dangling") == ("a dangling symbolic link (its target does not exist): remove it or "
                                              "restore the target")
    assert refused(tmp_path / "missing") == "no such file or folder"
    (tmp_path / "file").write_bytes(b"1234")
    assert refused(tmp_path / "file" / "below") == "cannot be read (Not a directory)"
    assert refused(tmp_path) == "not a regular file but a folder: remove it or move it elsewhere"
    os.mkfifo(tmp_path / "fifo")
    assert refused(tmp_path / "fifo", SpecialFile) == ("not a regular file but a FIFO (named pipe): remove it or move "
                                                       "it elsewhere")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(tmp_path / "socket"))
        assert refused(tmp_path / "socket", SpecialFile) == ("not a regular file but a socket: remove it or move it "
                                                             "elsewhere")
    assert refused("/dev/null", SpecialFile) == "not a regular file but a device: remove it or move it elsewhere"
    assert check_regular_file(str(tmp_path / "file")).st_size == 4
    os.symlink(tmp_path / "file", tmp_path / "link")
    assert check_regular_file(str(tmp_path / "link")).st_size == 4  # a link to a file is the file


def test_an_empty_file_and_a_one_byte_file_are_each_their_own_line(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "one.png").write_bytes(b"\x89")
    with pytest.raises(BadImage, match="^empty file$"):
        read_image(tmp_path / "empty.png")
    with pytest.raises(BadImage, match="^not an image file in a format this project reads"):
        read_image(tmp_path / "one.png")


def test_decoding_keeps_grayscale_by_default_and_refuses_images_under_2x2(tmp_path):
    rgb = np.zeros((6, 4, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(tmp_path / "red.png")
    assert decode_image(str(tmp_path / "red.png")).shape == (6, 4)
    assert decode_image(str(tmp_path / "red.png"), colour=True).shape == (6, 4, 3)
    for width, height in ((1, 5), (5, 1), (1, 1)):
        Image.new("L", (width, height)).save(tmp_path / "small.png")
        with pytest.raises(BadImage) as error:
            read_image(tmp_path / "small.png")
        assert str(error.value) == f"{width}x{height} pixels is too small to hold a digit"
    Image.new("L", (2, 2)).save(tmp_path / "two.png")
    assert read_image(tmp_path / "two.png").shape == (2, 2)


@pytest.mark.parametrize("side, decoded", [(1024, 512), (1023, 1023)])
def test_a_jpeg_twice_the_draft_side_or_more_is_decoded_at_half_size(tmp_path, side, decoded):
    Image.new("RGB", (side, side), (90, 160, 30)).save(tmp_path / "big.jpg")
    Image.new("RGB", (side, side), (90, 160, 30)).save(tmp_path / "big.mpo", "MPO")
    for name in ("big.jpg", "big.mpo"):
        assert read_image(tmp_path / name).shape == (decoded, decoded)
        assert read_image(tmp_path / name, colour=True).shape == (decoded, decoded, 3)


def test_transparent_pixels_are_laid_on_white_in_every_mode_with_alpha():
    from mnist_cnn.images import _decoded
    for mode in ("RGBA", "LA", "PA", "RGBa"):  # not La: Pillow converts it to nothing, and no file opens as La
        image = Image.new(mode, (2, 2))  # black, fully transparent
        assert np.asarray(_decoded(image, False)).tolist() == [[255, 255], [255, 255]], mode
        assert np.asarray(_decoded(Image.new(mode, (2, 2)), True)).tolist() == [[[255] * 3] * 2] * 2, mode
    half = Image.new("RGBA", (2, 2), (0, 0, 0, 128))
    assert np.asarray(_decoded(half, False)).tolist() == [[127, 127], [127, 127]]
    palette = Image.new("P", (2, 2))
    palette.info["transparency"] = 0
    assert np.asarray(_decoded(palette, False)).tolist() == [[255, 255], [255, 255]]
    assert np.asarray(_decoded(Image.new("P", (2, 2)), False)).tolist() == [[0, 0], [0, 0]]  # opaque: as it is


def test_high_depth_modes_are_kept_and_others_converted_or_refused(monkeypatch):
    from mnist_cnn.images import _decoded
    for mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        assert _decoded(Image.new(mode, (2, 2)), False).mode == mode
    assert _decoded(Image.new("CMYK", (2, 2), (0, 0, 0, 255)), False).mode == "L"
    assert _decoded(Image.new("CMYK", (2, 2), (0, 0, 0, 255)), True).mode == "RGB"
    def unsupported(image, mode):
        raise ValueError(f"conversion from {image.mode} to {mode} not supported")
    monkeypatch.setattr(Image.Image, "convert", unsupported)  # what Pillow says of a mode it cannot convert
    with pytest.raises(BadImage) as error:
        _decoded(Image.new("HSV", (2, 2)), False)
    assert str(error.value) == "pixels in mode HSV, which this project does not convert: save it as RGB or grayscale"


def test_pixels_outside_0_255_are_clipped_before_a_colour_image_is_resized():
    wild = np.array([[[-50, 300, 256]] * 4] * 4, np.float32)
    np.testing.assert_array_equal(fit_colour(wild, 8), fit_colour(np.clip(wild, 0, 255), 8))
    assert fit_colour(wild, 8)[0, 0].tolist() == [0, 1, 1]


def test_a_file_read_as_grayscale_is_its_own_luma_and_float32(tmp_path):
    """A colour JPEG read as grayscale: from 1024 pixels on, decoded as its luma channel at half size, as libjpeg gives
    it; below, decoded whole. Read as colour, its channels stay apart. Every image comes back as float32."""
    rng = np.random.default_rng(2)
    for side in (300, 1024):
        rgb = np.repeat(np.repeat(rng.integers(0, 256, (side // 4, side // 4, 3), dtype=np.uint8), 4, 0), 4, 1)
        Image.fromarray(rgb).save(tmp_path / "c.jpg", quality=90)
        with Image.open(tmp_path / "c.jpg") as image:
            if side >= 1024:  # libjpeg's own luma at half size; below, the decoded colours' brightness
                image.draft("L", (512, 512))
            luma = np.asarray(image.convert("L"), np.float32)
        grey, colour = read_image(tmp_path / "c.jpg"), read_image(tmp_path / "c.jpg", colour=True)
        np.testing.assert_array_equal(grey, luma)
        assert grey.dtype == colour.dtype == np.float32
        assert not np.array_equal(colour[..., 0], colour[..., 1])
    Image.fromarray(rgb[:8, :8, 0]).save(tmp_path / "g.png")
    assert read_image(tmp_path / "g.png").dtype == np.float32


def test_a_multi_frame_mpo_is_drafted_like_a_jpeg(tmp_path):
    frames = [Image.new("RGB", (1024, 1024), (90, 160, 30)), Image.new("RGB", (1024, 1024), (30, 60, 90))]
    frames[0].save(tmp_path / "stereo.mpo", "MPO", save_all=True, append_images=frames[1:])
    with Image.open(tmp_path / "stereo.mpo") as image:
        assert image.format == "MPO"
    assert read_image(tmp_path / "stereo.mpo").shape == (512, 512)


def test_an_image_of_exactly_the_pixel_budget_is_read(tmp_path):
    from mnist_cnn.images import MAX_PIXELS
    Image.new("L", (4000, MAX_PIXELS // 4000)).save(tmp_path / "budget.png")
    assert read_image(tmp_path / "budget.png").shape == (4000, 4000)


def test_a_transparent_colour_of_an_rgb_image_is_not_alpha():
    from mnist_cnn.images import _decoded
    image = Image.new("RGB", (2, 2))
    image.info["transparency"] = (0, 0, 0)  # a PNG's tRNS for RGB: kept black, as before
    assert np.asarray(_decoded(image, False)).tolist() == [[0, 0], [0, 0]]


class Unreadable(io.BytesIO):
    """A file object whose reads fail as `error` says."""
    def __init__(self, error):
        super().__init__(b"")
        self.error = error

    def read(self, *args):
        raise self.error


def test_a_file_that_cannot_be_read_or_is_too_large_is_one_line(tmp_path):
    import struct
    import zlib
    for error, message in ((PermissionError(13, "Permission denied"), "permission denied: make the file readable"),
                           (MemoryError(), "too large to decode in the memory available; scale it down")):
        with pytest.raises(BadImage) as raised:
            decode_image(Unreadable(error))
        assert str(raised.value) == message
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)  # 400 megapixels claimed, nothing more
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    (tmp_path / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b""))
    with pytest.raises(BadImage) as raised:
        read_image(tmp_path / "bomb.png")
    assert str(raised.value) == (f"over the limit of 16,000,000 pixels (its header claims over "
                                 f"{2 * Image.MAX_IMAGE_PIXELS:,}); scale it down")
    assert f"{2 * Image.MAX_IMAGE_PIXELS:,}" == "178,956,970"


def test_the_mnist_recipe_step_by_step_on_a_noisy_block():
    """Black and white noise (corners white) on a grey frame, through the recipe written out here: background off and
    clipped at 0, scaled to [0, 1], LANCZOS to 20 pixels high with its ringing clipped, centred by mass, peak 1."""
    rng = np.random.default_rng(20)  # a block whose ringing, left unclipped, would move its centre a row down
    block = rng.choice([0.0, 255.0], (40, 20)).astype(np.float32)
    block[[0, 0, -1, -1], [0, -1, 0, -1]] = 255  # the crop is the whole block
    pixels = np.full((60, 40), 50, np.float32)
    pixels[10:50, 10:30] = block
    scaled = np.clip(block - 50, 0, None) / 205
    digit = np.clip(np.asarray(Image.fromarray(scaled, mode="F").resize((10, 20), Image.Resampling.LANCZOS)), 0, None)
    rows, cols = np.indices(digit.shape)
    top = int(round(14 - (digit * rows).sum() / digit.sum()))
    left = int(round(14 - (digit * cols).sum() / digit.sum()))
    expected = np.zeros((28, 28), np.float32)
    expected[top:top + 20, left:left + 10] = digit
    assert digit.max() > 1  # LANCZOS overshoots: the peak is brought back to 1 by division
    np.testing.assert_allclose(mnist_style(pixels), expected / expected.max(), rtol=1e-5, atol=1e-6)
