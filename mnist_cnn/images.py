"""Images as the model sees them: reading image files, and the one normalisation of every image.

A user's image, in a folder dataset (download) or given to predict, goes through read_image and
to_model_image: MNIST's own recipe for grayscale (light ink on black, cropped to the ink, fitted
into 20x20, centred by centre of mass in 28x28), or fitted and centred for colour.
"""
import ctypes
import ctypes.util
import errno
import functools
import glob
import os
import stat
import warnings

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

IMAGE_SIZE = 28  # MNIST: 28 x 28 pixels, the digit fitted into 20 x 20 and centred by centre of mass
INK_THRESHOLD = 0.2  # a pixel is ink when brighter than this fraction of the image's contrast
# The formats read, as Pillow names them: those README lists (JPEG includes MPO, the JPEG many cameras write;
# PPM: .pgm, .ppm, .pbm). Pillow opens dozens more (DDS, SPIDER, BLP, ICNS...), none used for digits, each one
# more parser a crafted file could reach
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")
FORMAT_NAMES = "PNG, JPEG, BMP, GIF, TIFF, WebP, PGM/PPM"
# Decoded pixels per image: a 12-megapixel photo fits, a digit needs a tiny fraction; under Pillow's own
# decompression-bomb limit (89 M), so its warnings never fire for a file we decode
MAX_PIXELS = 16_000_000
DRAFT_SIDE = 512  # a JPEG twice this size or more is decoded downscaled, its smaller side kept at this or more
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm")


class BadImage(ValueError):
    """An image file or array that can't be used; the message says why."""


class SpecialFile(BadImage):
    """A FIFO, socket or device: opening it can block for ever (and DVC, hashing it, does)."""


def _border(pixels):
    return np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])


def mnist_style(pixels, size=IMAGE_SIZE):
    """Bring a grayscale image (2-D array, any size and range) to MNIST's form: float32 size x size in [0, 1].

    As MNIST was made: light ink on a dark background (inverted when the border is lighter than
    the image on average), cropped to the ink, scaled to fit 20/28 of the frame keeping the aspect
    ratio, placed with its centre of mass at the centre. Raises BadImage for an image with no ink.
    """
    pixels = np.asarray(pixels, dtype=np.float32)
    if pixels.ndim != 2:  # a 0-d, 1-d or 4-d array from an .npy file
        raise BadImage(f"an array of shape {pixels.shape} is not an image (height x width, or x 3 for colour)")
    if min(pixels.shape) < 2:
        raise BadImage(f"{pixels.shape[1]}x{pixels.shape[0]} pixels is too small to hold a digit")
    if np.median(_border(pixels)) > pixels.mean():  # dark ink on a light background
        pixels = pixels.max() - pixels
    background = np.median(_border(pixels))
    pixels = np.clip(pixels - background, 0, None)
    contrast = pixels.max()
    if contrast <= 0 or contrast < 0.05 * max(1.0, float(np.abs(background))):
        raise BadImage("no ink: the image is blank (one colour)")
    pixels /= contrast
    rows, cols = np.nonzero(pixels > INK_THRESHOLD)
    pixels = pixels[rows.min(): rows.max() + 1, cols.min(): cols.max() + 1]
    height, width = pixels.shape
    scale = round(size * 20 / 28) / max(height, width)
    shape = (max(1, round(width * scale)), max(1, round(height * scale)))
    digit = np.clip(np.asarray(Image.fromarray(pixels, mode="F").resize(shape, Image.Resampling.LANCZOS)), 0, None)
    total = digit.sum()
    centre_row = (digit.sum(axis=1) * np.arange(digit.shape[0])).sum() / total
    centre_col = (digit.sum(axis=0) * np.arange(digit.shape[1])).sum() / total
    top = int(round(size / 2 - centre_row))  # MNIST put the centre of mass at pixel (14, 14)
    left = int(round(size / 2 - centre_col))
    top = min(max(top, 0), size - digit.shape[0])
    left = min(max(left, 0), size - digit.shape[1])
    out = np.zeros((size, size), np.float32)
    out[top: top + digit.shape[0], left: left + digit.shape[1]] = digit
    return np.clip(out / out.max(), 0, 1)


def fit_colour(pixels, size):
    """An RGB image (H x W x 3, 0-255) scaled to fit size x size keeping its aspect, centred on black, in [0, 1]."""
    pixels = np.asarray(pixels)
    if pixels.ndim != 3 or pixels.shape[2] != 3 or min(pixels.shape[:2]) < 2:
        raise BadImage(f"an image of shape {pixels.shape} is not a colour image of 2x2 pixels or more")
    height, width = pixels.shape[:2]
    scale = size / max(height, width)
    shape = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).resize(shape, Image.Resampling.LANCZOS)
    out = np.zeros((size, size, 3), np.float32)
    top, left = (size - shape[1]) // 2, (size - shape[0]) // 2
    out[top: top + shape[1], left: left + shape[0]] = np.asarray(image, np.float32) / 255
    return out


def to_model_image(pixels, size=IMAGE_SIZE, colour=False):
    """The one normalisation of every image the model sees: MNIST-style grayscale, or fitted colour.

    A colour image (H x W x 3) for a grayscale model becomes its brightness, as Pillow's convert("L")
    computes it; a grayscale one for a colour model is repeated over the three channels.
    """
    pixels = np.asarray(pixels)
    if not np.issubdtype(pixels.dtype, np.number) or np.issubdtype(pixels.dtype, np.complexfloating):
        raise BadImage(f"pixels of type {pixels.dtype}; expected numbers")
    if not np.isfinite(pixels).all():
        raise BadImage("NaN or infinite pixel values")
    peak = float(np.abs(pixels).max(initial=0)) if np.issubdtype(pixels.dtype, np.floating) else 0
    if peak > 1e30 and not colour:  # the float32 arithmetic below would overflow to inf; MNIST's recipe is the same
        pixels = pixels / peak  # at any scale (a colour image is clipped to 0-255 anyway)
    if pixels.ndim == 3 and pixels.shape[2] == 3 and not colour:
        pixels = pixels.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601-2 luma
    elif pixels.ndim == 2 and colour:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    return fit_colour(pixels, size) if colour else mnist_style(pixels, size)


def check_regular_file(path):
    """BadImage unless path is, or links to, a regular file. Opening a FIFO or a device can block for
    ever; a symbolic-link loop or a dangling link has nothing to read."""
    try:
        info = os.stat(path)  # follows links
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise BadImage("a symbolic link loop: remove the link")
        if os.path.islink(path):
            raise BadImage("a dangling symbolic link (its target does not exist): remove it or restore the target")
        if e.errno == errno.ENOENT:
            raise BadImage("no such file or folder")
        raise BadImage(f"cannot be read ({e.strerror})")
    if stat.S_ISDIR(info.st_mode):
        raise BadImage("not a regular file but a folder: remove it or move it elsewhere")
    if not stat.S_ISREG(info.st_mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(info.st_mode) else "a socket" if stat.S_ISSOCK(info.st_mode)
                else "a device")
        raise SpecialFile(f"not a regular file but {kind}: remove it or move it elsewhere")
    return info


def printable(path):
    """A path as it can be printed: bytes that are not UTF-8 (os.listdir keeps them as surrogates) as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _high_depth(image, colour):
    """Pixels of a 16-bit, 32-bit or float image: brightness kept exact, or for colour scaled to 0-255."""
    pixels = np.asarray(image, dtype=np.float32)
    if not np.isfinite(pixels).all():
        raise BadImage("NaN or infinite pixel values")
    if not colour:
        return pixels
    if image.mode.startswith("I;16"):
        peak = 65535.0
    elif image.mode == "F" and pixels.max(initial=0) <= 1:
        peak = 1.0
    else:
        peak = max(255.0, float(pixels.max(initial=0)))
    return np.repeat((np.clip(pixels, 0, None) * (255 / peak))[..., None], 3, axis=2)


def read_image(path, colour=False):
    """The pixels of an image file, upright as its EXIF orientation says: 2-D brightness (alpha laid on
    white, 16-bit kept exact), or H x W x 3 RGB in 0-255 (16-bit and float images scaled to it)."""
    if check_regular_file(path).st_size == 0:
        raise BadImage("empty file")
    return decode_image(path, colour)


def decode_image(source, colour=False):
    """read_image's decoding, from a path or a binary file object (an upload held in memory). Every failure of
    a file, whatever Pillow's plugin raises for it, is BadImage with the reason; Pillow's warnings are dropped."""
    _quiet_libtiff()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # corrupt EXIF, skipped TIFF tags, bomb warnings: checked in our words
            with Image.open(source, formats=FORMATS) as image:
                image = _decoded(image, colour)
                if image.mode not in ("L", "RGB"):
                    return _high_depth(image, colour)
                return np.asarray(image, dtype=np.float32)
    except BadImage:
        raise
    except PermissionError:
        raise BadImage("permission denied: make the file readable")
    except UnidentifiedImageError:
        raise BadImage(f"not an image file in a format this project reads ({FORMAT_NAMES})")
    except Image.DecompressionBombError:  # a header claiming over twice Pillow's own limit: refused unread
        raise BadImage(f"over the limit of {MAX_PIXELS:,} pixels (its header claims over "
                       f"{2 * Image.MAX_IMAGE_PIXELS:,}); scale it down")
    except MemoryError:
        raise BadImage("too large to decode in the memory available; scale it down")
    except Exception as e:  # noqa: BLE001  a crafted or corrupt file: each plugin fails in its own way
        raise BadImage(f"broken image data ({type(e).__name__}: {_first_line(e)})")


@functools.cache
def _quiet_libtiff():
    """Turn off libtiff's own printing: it wrote its decoding errors to stderr (`ZIPDecode: Decoding error at
    scanline 0, ...`) beside the exception Pillow raises, which becomes the file's one line. Pillow's wheels
    bundle libtiff in pillow.libs/; a Pillow built on the system's libtiff uses that one."""
    bundled = glob.glob(os.path.join(os.path.dirname(os.path.dirname(Image.__file__)), "pillow.libs", "libtiff*.so*"))
    for path in [*bundled, ctypes.util.find_library("tiff")]:
        try:
            library = ctypes.CDLL(path) if path else None
        except OSError:
            continue
        if library is not None:
            for setter in (library.TIFFSetErrorHandler, library.TIFFSetWarningHandler):
                setter.argtypes, setter.restype = [ctypes.c_void_p], ctypes.c_void_p
                setter(None)
            return


def _first_line(error):
    text = str(error).strip()
    return text.splitlines()[0] if text else "no detail"


def _decoded(image, colour):
    """An opened image decoded within the pixel budget: L or RGB, or its own 16-bit, 32-bit or float mode."""
    width, height = image.size
    if image.format in ("JPEG", "MPO") and min(width, height) >= 2 * DRAFT_SIDE:
        # libjpeg decodes at 1/2, 1/4 or 1/8 scale, keeping the smaller side at DRAFT_SIDE or more: a fraction
        # of the time and memory, and still far more pixels than a digit's 20x20 needs
        image.draft("L" if not colour else image.mode, (min(width, DRAFT_SIDE), min(height, DRAFT_SIDE)))
        width, height = image.size
    if width * height > MAX_PIXELS:
        raise BadImage(f"{width}x{height} pixels is over the limit of {MAX_PIXELS:,}; scale it down")
    if width < 2 or height < 2:
        raise BadImage(f"{width}x{height} pixels is too small to hold a digit")
    image.load()
    image = ImageOps.exif_transpose(image)  # a phone photo stored sideways, with its orientation tag
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return image
    if image.mode == "LAB":  # CIELAB (a TIFF option): its L is the lightness; colour by a colour transform
        return image.getchannel("L") if not colour else ImageCms.applyTransform(image, _lab_to_srgb())
    try:
        return image.convert("RGB" if colour else "L")
    except ValueError:
        raise BadImage(f"pixels in mode {image.mode}, which this project does not convert: save it as RGB or "
                       f"grayscale")


def _lab_to_srgb():
    return ImageCms.buildTransform(ImageCms.createProfile("LAB"), ImageCms.createProfile("sRGB"), "LAB", "RGB")
