"""Image files that are not what they claim, made byte by byte: for the tests of images.decode_image's refusals."""
import io
import struct

import numpy as np
from PIL import Image


def digit(size=60):
    """A light 1 on black: an image with ink, size x size."""
    pixels = np.zeros((size, size), np.uint8)
    pixels[size // 6: size - size // 6, size // 2 - size // 12: size // 2 + size // 12] = 255
    return pixels


def encoded(pixels, format, **options):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format, **options)
    return buffer.getvalue()


def jpeg_claiming(width, height):
    """A JPEG of a few hundred bytes, 60x60 pixels, whose SOF header claims width x height."""
    data = bytearray(encoded(digit(), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5: sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def dds_of_unknown_pixel_format():
    """A DDS file whose FourCC Pillow's DDS plugin does not implement: it raised NotImplementedError."""
    data = bytearray(encoded(np.repeat(digit()[..., None], 3, axis=2), "DDS"))
    data[80:84] = struct.pack("<I", 0x4)  # DDPF_FOURCC
    data[84:88] = b"ZZZZ"
    return bytes(data)


def tiff_with_a_tag_past_its_end(size=60):
    """A readable 8-bit grayscale TIFF with one more tag, whose data would lie past the end of the file:
    Pillow skips the tag with a UserWarning."""
    pixels = digit(size).tobytes()
    entries = [(256, 3, 1, size), (257, 3, 1, size), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (270, 2, 100_000, 8), (273, 4, 1, 0), (277, 3, 1, 1), (278, 3, 1, size), (279, 4, 1, len(pixels))]
    ifd_size = 2 + 12 * len(entries) + 4
    strip = 8 + ifd_size
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        value = strip if tag == 273 else value
        ifd += struct.pack("<HHI", tag, kind, count) + (struct.pack("<HH", value, 0) if kind == 3 else
                                                        struct.pack("<I", value))
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + pixels


def tiff_whose_deflate_stream_is_broken():
    """A deflate-compressed TIFF whose strip starts with a bad zlib header: libtiff printed `ZIPDecode: Decoding
    error at scanline 0, incorrect header check.` to stderr itself."""
    data = bytearray(encoded(np.repeat(digit()[..., None], 3, axis=2), "TIFF", compression="tiff_deflate"))
    data[Image.open(io.BytesIO(bytes(data))).tag_v2[273][0]] = 0  # the first byte of the first strip
    return bytes(data)
