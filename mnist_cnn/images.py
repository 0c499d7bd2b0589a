"""Images as the model sees them: reading image files, and the one normalisation of every image.

A user's image, in a folder dataset (download) or given to predict, goes through read_image and
to_model_image: MNIST's own recipe for grayscale (light ink on black, cropped to the ink, fitted
into 20x20, centred by centre of mass in 28x28), or fitted and centred for colour.
"""
import os
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SIZE = 28  # MNIST: 28 x 28 pixels, the digit fitted into 20 x 20 and centred by centre of mass
INK_THRESHOLD = 0.2  # a pixel is ink when brighter than this fraction of the image's contrast
MAX_PIXELS = 50_000_000  # larger image files are refused (decompression bombs): 50 megapixels
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm")


class BadImage(ValueError):
    """An image file or array that can't be used; the message says why."""


def _border(pixels):
    return np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])


def mnist_style(pixels, size=IMAGE_SIZE):
    """Bring a grayscale image (2-D array, any size and range) to MNIST's form: float32 size x size in [0, 1].

    As MNIST was made: light ink on a dark background (inverted when the border is lighter than
    the image on average), cropped to the ink, scaled to fit 20/28 of the frame keeping the aspect
    ratio, placed with its centre of mass at the centre. Raises BadImage for an image with no ink.
    """
    pixels = np.asarray(pixels, dtype=np.float32)
    if pixels.ndim != 2 or min(pixels.shape) < 2:
        raise BadImage(f"{pixels.shape[1] if pixels.ndim == 2 else 0}x{pixels.shape[0]} pixels is too small "
                       f"to hold a digit")
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
    """The one normalisation of every image the model sees: MNIST-style grayscale, or fitted colour."""
    return fit_colour(pixels, size) if colour else mnist_style(pixels, size)


def read_image(path, colour=False):
    """The pixels of an image file: 2-D brightness (alpha laid on white, 16-bit kept exact), or H x W x 3 RGB."""
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    if os.path.getsize(path) == 0:
        raise BadImage("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked below, in our words
            with Image.open(path) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise BadImage(f"{width}x{height} pixels is over the limit of {MAX_PIXELS:,}; scale it down")
                if width < 2 or height < 2:
                    raise BadImage(f"{width}x{height} pixels is too small to hold a digit")
                image.load()
                if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                    rgba = image.convert("RGBA")
                    image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
                if colour:
                    return np.asarray(image.convert("RGB"), dtype=np.float32)
                if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                    return np.asarray(image, dtype=np.float32)
                return np.asarray(image.convert("L"), dtype=np.float32)
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage("not an image file (or in a format Pillow can't read)")
    except Image.DecompressionBombError as e:  # over twice the limit: Pillow refuses to open it
        raise BadImage(f"over the limit of {MAX_PIXELS:,} pixels ({e}); scale it down")
    except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt data
        raise BadImage(f"broken image data ({e})")
