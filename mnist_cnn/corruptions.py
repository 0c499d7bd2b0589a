"""MNIST-C's corruptions of a test set, and a model's accuracy on each (Mu and Gilmer, 2019).

Fifteen corruptions that keep each digit's meaning, one severity each, with the parameters of MNIST-C's
code (github.com/google-research/mnist-c, corruptions.py), reimplemented with NumPy and SciPy for a whole
batch at once. Each function takes float32 images in [0, 1], (N, H, W, C) with C 1 or 3, and a seeded
numpy Generator, and returns images of the same shape in [0, 1]. MNIST-C's parameters are in pixels of a
28x28 image; on another size they are scaled along each axis, so a corruption does the same to the picture.

`corrupt` is the one entry point: uint8 images in, uint8 images out (rounded, as the splits are stored), the
generator seeded by (seed, corruption, block), so a corruption's draw does not depend on the others chosen.
`accuracy_under_corruptions` streams any split (test or validation) block by block through a predict
function: memory is bounded by a block, whatever the size of the split.
"""
import math
import zlib

import numpy as np
from scipy import ndimage

from mnist_cnn.prepare import scale as scaled
from mnist_cnn.shards import open_split, read_shard

MNIST_SIDE = 28  # the image size MNIST-C's parameters are given for
BLOCK_BYTES = 2 << 20  # images corrupted at once: 2674 of MNIST's; a fixed split of the data, so results don't
# depend on how the split is sharded or on the inference batch size
MUD = {1: (63 / 255,), 3: (63 / 255, 42 / 255, 20 / 255)}  # spatter's mud: MNIST-C's grey, ImageNet-C's brown


def scales(images):
    """(rows, columns): how many pixels of these images one pixel of a 28x28 image is."""
    return images.shape[1] / MNIST_SIDE, images.shape[2] / MNIST_SIDE


def unit_grid(images):
    """Each pixel's (row, column) in 28x28 units, shaped to broadcast over (N, H, W)."""
    rows, columns = scales(images)
    return (np.arange(images.shape[1])[None, :, None] / rows, np.arange(images.shape[2])[None, None, :] / columns)


def blur(images, sigma, mode="nearest"):
    """Gaussian blur of each image (sigma in 28x28 pixels; none across images or channels)."""
    rows, columns = scales(images)
    return ndimage.gaussian_filter(images, (0, sigma * rows, sigma * columns, 0)[: images.ndim], mode=mode)


# --- noise ---

def shot_noise(x, rng):
    """Poisson noise: each pixel a count of photons, 3 at full brightness (MNIST-C severity 5)."""
    return np.clip(rng.poisson(x * 3.0) / 3.0, 0, 1)


def impulse_noise(x, rng):
    """Salt and pepper: 17% of the values set to black or white at random (severity 4)."""
    hit = rng.random(x.shape) < 0.17
    salt = rng.random(x.shape) < 0.5
    return np.where(hit, salt.astype(x.dtype), x)


# --- blur ---

def glass_blur(x, rng, sigma=0.7, delta=1, iterations=2):
    """Blur, swap each pixel with a random neighbour at random, blur again (severity 1)."""
    x = np.floor(blur(x, sigma) * 255) / 255  # MNIST-C rounds down to uint8 between the steps
    rows, columns = scales(x)
    dr, dc = max(1, round(delta * rows)), max(1, round(delta * columns))
    height, width, n = x.shape[1], x.shape[2], len(x)
    for _ in range(iterations):
        # the swaps run in MNIST-C's order, bottom-right to top-left, so a pixel can travel several steps
        for h in range(height - dr, dr, -1):
            swap = rng.random((width, n)) < 0.5
            dy = rng.integers(-dr, dr, (width, n))  # randint's half-open range, as MNIST-C draws it
            dx = rng.integers(-dc, dc, (width, n))
            for w in range(width - dc, dc, -1):
                which = np.flatnonzero(swap[w])
                h2, w2 = h + dy[w, which], w + dx[w, which]
                here, there = x[which, h, w].copy(), x[which, h2, w2]
                x[which, h, w], x[which, h2, w2] = there, here
    return np.clip(blur(x, sigma), 0, 1)


def motion_blur(x, rng, radius=10, sigma=3.0):
    """ImageMagick's motion blur: a one-sided Gaussian streak at a random angle within 45 degrees of
    horizontal (severity 1)."""
    steps = np.arange(2 * math.ceil(radius) + 1)  # ImageMagick's kernel width for a radius
    weights = np.exp(-steps**2 / (2 * sigma**2))
    weights /= weights.sum()
    angle = np.radians(rng.uniform(-45, 45, len(x)))
    rows, columns = scales(x)
    # ImageMagick rounds each offset half down, and repeats the edge pixels beyond the border
    dr = np.ceil(steps[:, None] * np.sin(angle) * rows - 0.5).astype(int)
    dc = np.ceil(steps[:, None] * np.cos(angle) * columns - 0.5).astype(int)
    margin = int(max(np.abs(dr).max(), np.abs(dc).max()))
    padded = np.pad(x, ((0, 0), (margin, margin), (margin, margin), (0, 0)), mode="edge")
    height, width = x.shape[1:3]
    out = np.zeros_like(x)
    for step, weight in zip(steps, weights):
        # images whose offset is the same at this step take the same slice of the padded batch
        for r, c in set(zip(dr[step], dc[step])):
            which = np.flatnonzero((dr[step] == r) & (dc[step] == c))
            out[which] += weight * padded[which, margin + r:margin + r + height, margin + c:margin + c + width]
    return np.clip(out, 0, 1)


# --- affine maps about the centre (skimage's AffineTransform and warp, bilinear, black outside) ---

def warp(x, matrix):
    """Each output pixel (column, row) takes the input at matrix @ (column, row), the centre fixed: bilinear,
    black outside the image (skimage's warp of an AffineTransform, as MNIST-C does it)."""
    height, width = x.shape[1:3]
    centre = np.array([(width - 1) / 2, (height - 1) / 2])
    rows, columns = np.mgrid[:height, :width]
    c, r = np.tensordot(matrix, np.stack([columns - centre[0], rows - centre[1]]), axes=1) + centre[:, None, None]
    r0, c0 = np.floor(r).astype(int), np.floor(c).astype(int)
    out = np.zeros_like(x)
    for dr in (0, 1):
        for dc in (0, 1):
            rr, cc = r0 + dr, c0 + dc
            weight = (1 - np.abs(r - rr)) * (1 - np.abs(c - cc))
            inside = (rr >= 0) & (rr < height) & (cc >= 0) & (cc < width)
            pixels = x[:, np.clip(rr, 0, height - 1), np.clip(cc, 0, width - 1)]
            out += (weight * inside).astype(x.dtype)[None, :, :, None] * pixels
    return np.clip(out, 0, 1)


def signed(x, rng, matrix_of):
    """Warp each image by matrix_of(+1) or matrix_of(-1), the sign drawn per image."""
    sign = rng.choice([-1, 1], len(x))
    out = np.empty_like(x)
    for s in (-1, 1):
        out[sign == s] = warp(x[sign == s], matrix_of(s))
    return out


def shear(x, rng, angle=0.4):
    """Sheared by 0.4 radians, left or right at random (severity 2)."""
    return signed(x, rng, lambda s: np.array([[1, -math.sin(s * angle)], [0, math.cos(s * angle)]]))


def scale(x, rng, factor=0.7):
    """Shrunk to 70% about the centre (severity 3)."""
    return warp(x, np.eye(2) / factor)


def rotate(x, rng, angle=0.4):
    """Rotated by 0.4 radians (23 degrees), either way at random (severity 2)."""
    def matrix(s):
        cos, sin = math.cos(s * angle), math.sin(s * angle)
        return np.array([[cos, -sin], [sin, cos]])
    return signed(x, rng, matrix)


def translate(x, rng, pixels=3):
    """Moved 3 pixels along each axis, each way at random (severity 3); black where the image left."""
    rows, columns = scales(x)
    dr, dc = max(1, round(pixels * rows)), max(1, round(pixels * columns))
    signs = rng.choice([-1, 1], (len(x), 2))
    out = np.zeros_like(x)
    for sr in (-1, 1):
        for sc in (-1, 1):
            which = (signs[:, 0] == sr) & (signs[:, 1] == sc)
            out[which] = np.roll(x[which], (sr * dr, sc * dc), axis=(1, 2))
            out[which, slice(0, dr) if sr > 0 else slice(-dr, None)] = 0  # what rolled round is not the image
            out[which, :, slice(0, dc) if sc > 0 else slice(-dc, None)] = 0
    return out


# --- light and weather ---

def brightness(x, rng, amount=0.5):
    """HSV value raised by 0.5 (severity 5): grey becomes lighter; a colour keeps its hue and saturation."""
    value = x.max(axis=-1, keepdims=True)
    raised = np.minimum(value + amount, 1)
    # with hue and saturation fixed, each channel is proportional to the value; black becomes grey
    return np.where(value > 0, x * raised / np.maximum(value, 1e-12), raised)


def refine(grid, step, wibble, rng):
    """One level of diamond-square on (count, size, size) grids whose points `step` apart are set: the points
    between them become the mean of their neighbours plus noise of +-wibble**2 (MNIST-C's wibbledmean)."""
    def mean_plus_noise(total):
        return total / 4 + wibble**2 * (2 * rng.random(total.shape, np.float32) - 1)

    half = step // 2
    corners = grid[:, ::step, ::step]
    squares = corners + np.roll(corners, -1, axis=1)
    squares += np.roll(squares, -1, axis=2)
    grid[:, half::step, half::step] = mean_plus_noise(squares)
    centres = grid[:, half::step, half::step]
    grid[:, ::step, half::step] = mean_plus_noise(centres + np.roll(centres, 1, axis=1)
                                                  + corners + np.roll(corners, -1, axis=2))
    grid[:, half::step, ::step] = mean_plus_noise(centres + np.roll(centres, 1, axis=2)
                                                  + corners + np.roll(corners, -1, axis=1))


def plasma(rng, count, height, width, decay=1.4):
    """The top-left height x width of count diamond-square fractals (MNIST-C's plasma_fractal: 256 x 256,
    wrapping at the edges), scaled to [0, 1] by the range of each whole fractal."""
    size = max(256, 1 << (max(height, width) + 3).bit_length())
    grid = np.zeros((count, size, size), np.float32)
    step, wibble = size, 100.0
    while step > 2:
        refine(grid, step, wibble, rng)
        step, wibble = step // 2, wibble / decay
    # The finest level holds three quarters of the points: it is drawn only around the corner that is kept
    # (2 points of margin, where rolling round the small grid gives wrong values that nothing kept reads), and
    # the range is taken before it, which moves it by at most its noise, 90 in about 20,000
    low = grid[:, ::2, ::2].min(axis=(1, 2), keepdims=True)
    high = grid[:, ::2, ::2].max(axis=(1, 2), keepdims=True)
    rows, columns = np.arange(-2, height + height % 2 + 2) % size, np.arange(-2, width + width % 2 + 2) % size
    corner = grid[:, rows][:, :, columns]
    refine(corner, 2, wibble, rng)
    return np.clip((corner[:, 2:2 + height, 2:2 + width] - low) / (high - low), 0, 1)


def fog(x, rng, thickness=3.0, decay=1.4, chunk=64):
    """A plasma fractal laid over the image, which keeps its brightest value (severity 5)."""
    height, width = x.shape[1:3]
    layer = np.concatenate([plasma(rng, min(chunk, len(x) - start), height, width, decay)
                            for start in range(0, len(x), chunk)])
    brightest = x.max(axis=(1, 2, 3), keepdims=True)
    return np.clip((x + thickness * layer[..., None]) * brightest / (brightest + thickness), 0, 1)


def spatter(x, rng):
    """Mud: blobs of smoothed noise over the image (severity 4, MNIST-C's mud without water)."""
    liquid = blur(rng.normal(0.65, 0.3, x.shape[:3]), 1.0)
    mud = blur((liquid > 0.65).astype(np.float64), 1.5)
    mud = np.where(mud < 0.8, 0, mud)[..., None].astype(x.dtype)
    return np.clip(x * (1 - mud) + np.asarray(MUD[x.shape[3]], x.dtype) * mud, 0, 1)


# --- lines over the digit ---

def line_from_points(grid, c0, r0, c1, r1):
    """MNIST-C's line: full within 1.45 pixels of the line through (c0, r0) and (c1, r1) (per image: arrays of N),
    fading to nothing at 2.3, between columns floor(c0) and ceil(c1); 28x28 units, (N, H, W)."""
    rows, columns = grid
    c0, r0, c1, r1 = (np.asarray(v, float)[:, None, None] for v in (c0, r0, c1, r1))
    flat = c1 == c0
    slope = (r1 - r0) / np.where(flat, 1, c1 - c0)
    distance = np.clip(np.abs(rows - (slope * (columns - c0) + r0)), 0, 2.3 - 1e-10)
    line = np.clip(np.log(1 - distance / 2.3) + 1, 0, 1)
    inside = (columns >= np.floor(c0)) & (columns < np.ceil(c1)) & ~flat
    return np.where(inside, line, 0)


def dotted_line(x, rng):
    """A dashed white line from the left edge to the right one, at random heights."""
    r0, r1 = rng.integers(0, 27, (2, len(x)))
    grid = unit_grid(x)
    line = line_from_points(grid, np.zeros(len(x)), r0, np.full(len(x), 27), r1)
    line = np.where(np.floor(grid[1] / 2) % 2 == 0, 0, line)  # dashes of 2 pixels, gaps of 2
    return np.clip(x + line[..., None], 0, 1)


def zigzag_points(r0, r1, length=2.0, width=2.0, c0=2, c1=25):
    """MNIST-C's zigzag: its corners (columns, rows) for a line from (c0, r0) to (c1, r1)."""
    theta = math.atan((r1 - r0) / (c1 - c0))
    d = (c1 - c0) / math.cos(theta)
    points = [(0.0, 0.0)]
    for i in range(int((d - length) // (2 * length)) + 1):
        points.append(((2 * i + 1) * length, (-1) ** i * width))
    end = (2 * length) * (d // (2 * length))
    if d != end:
        points.append((d, points[-1][1] / (2 * (d - end))))
    cos, sin = math.cos(theta), math.sin(theta)
    return np.array([(c * cos - r * sin + c0, c * sin + r * cos + r0) for c, r in points])


def zigzag(x, rng):
    """A white zigzag line across the image at a random height and slope."""
    r0 = rng.integers(0, 27, len(x))
    r1 = r0 + rng.integers(-5, 5, len(x))
    points = np.stack([zigzag_points(a, b) for a, b in zip(r0, r1)])  # (N, corners, 2): the same count for all
    grid = unit_grid(x)
    lines = sum(line_from_points(grid, points[:, i - 1, 0], points[:, i - 1, 1], points[:, i, 0], points[:, i, 1])
                for i in range(1, points.shape[1]))
    return np.clip(x + lines[..., None], 0, 1)


def stripe(x, rng):
    """The left and right quarters of the image inverted."""
    quarter = x.shape[2] // 4
    out = x.copy()
    out[:, :, :quarter] = 1 - x[:, :, :quarter]
    out[:, :, x.shape[2] - quarter:] = 1 - x[:, :, x.shape[2] - quarter:]
    return out


# --- edges ---

def sobel(image, axis):
    """ndimage.sobel of each image of (N, H, W) along axis 1 or 2, smoothing along the other (never across images)."""
    derivative = ndimage.correlate1d(image, [-1, 0, 1], axis=axis)
    return ndimage.correlate1d(derivative, [1, 2, 1], axis=3 - axis)


def local_maxima(magnitude, gr, gc):
    """Canny's thinning: where the gradient magnitude is no less than at either neighbour along the gradient,
    interpolated between the nearest axis neighbour and the diagonal one (skimage's four sectors)."""
    n, height, width = magnitude.shape
    padded = np.pad(magnitude, ((0, 0), (1, 1), (1, 1))).ravel()  # 0 beyond the border
    here = (np.arange(n)[:, None, None] * (height + 2) * (width + 2)
            + (np.arange(height)[None, :, None] + 1) * (width + 2) + np.arange(width)[None, None, :] + 1)

    def at(dr, dc):  # the magnitude at each pixel's neighbour (row + dr, column + dc)
        return padded[here + dr * (width + 2) + dc]

    along_rows = np.abs(gr) >= np.abs(gc)
    major = np.maximum(np.abs(gr), np.abs(gc))
    weight = np.minimum(np.abs(gr), np.abs(gc)) / np.where(major > 0, major, 1)
    sr, sc = np.where(gr >= 0, 1, -1), np.where(gc >= 0, 1, -1)
    keep = magnitude > 0
    for direction in (1, -1):
        axis_neighbour = at(np.where(along_rows, direction * sr, 0), np.where(along_rows, 0, direction * sc))
        keep &= magnitude >= (1 - weight) * axis_neighbour + weight * at(direction * sr, direction * sc)
    return keep


def canny_edges(x, rng, sigma=1.0, low=0.1, high=0.2):
    """Canny's edge detector (skimage.feature.canny's defaults): white one-pixel edges on black."""
    image = x[..., 0].astype(np.float64)
    # smoothed as if the image went on beyond its border, as skimage does (its mask's bleed-over)
    smooth = blur(image, sigma, mode="constant") / blur(np.ones_like(image), sigma, mode="constant")
    gr, gc = sobel(smooth, 1), sobel(smooth, 2)
    magnitude = np.hypot(gr, gc)
    peaks = local_maxima(magnitude, gr, gc)
    peaks[:, [0, -1], :] = peaks[:, :, [0, -1]] = False  # skimage's eroded mask: the gradient there is a guess
    weak, strong = peaks & (magnitude >= low), peaks & (magnitude >= high)
    # hysteresis: keep each 8-connected piece of weak edge that holds a strong one (within one image)
    labels, _ = ndimage.label(weak, np.pad(np.ones((1, 3, 3), bool), ((1, 1), (0, 0), (0, 0))))
    kept = np.isin(labels, np.unique(labels[strong])) & weak
    return kept[..., None].astype(x.dtype)


# MNIST-C's 15, in its order: name -> function(images, rng)
CORRUPTIONS = {function.__name__: function for function in (
    shot_noise, impulse_noise, glass_blur, motion_blur, shear, scale, rotate, brightness, translate, stripe, fog,
    spatter, dotted_line, zigzag, canny_edges)}

# Corruptions that do not fit colour images, with the one-line reason printed when they are skipped
GRAYSCALE_ONLY = {"canny_edges": "it keeps only the edges, so a colour image would lose the colours that may tell "
                                 "its classes apart"}


def unfit(name, image_shape):
    """Why a corruption does not fit images of image_shape (H, W, C), or None when it does."""
    return GRAYSCALE_ONLY.get(name) if image_shape[2] == 3 else None


def corrupt(name, images, seed, block=0):
    """uint8 images (N, H, W, C) under corruption `name`, drawn from a generator seeded by (seed, name, block)."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode()), block])
    out = CORRUPTIONS[name](scaled(images), rng)
    return np.rint(np.clip(out, 0, 1) * 255).astype(np.uint8)


def blocks(split):
    """A split's (images, labels) in blocks of BLOCK_BYTES of images, read shard by shard: the same blocks
    however the split is sharded, and never more than a shard and a block in memory."""
    size = max(1, BLOCK_BYTES // int(np.prod(split.image_shape)))
    carried = None  # the images (and labels) of a shard's end that did not fill a block
    for path in split.files:
        x, y = read_shard(split, path)
        if carried is not None:
            x, y = np.concatenate([carried[0], x]), np.concatenate([carried[1], y])
        full = len(x) // size * size
        for start in range(0, full, size):
            yield x[start:start + size], y[start:start + size]
        carried = x[full:].copy(), y[full:].copy()  # copies: the shard itself can go
    if carried is not None and len(carried[1]):
        yield carried


def accuracy_under_corruptions(predict, folder, names, seed, examples=0):
    """A split's accuracy clean and under each corruption that fits its images, streamed block by block.

    predict: float32 images in [0, 1] -> class probabilities (N, classes). Returns ({"clean": accuracy,
    name: accuracy, ...}, {name: reason} for the corruptions skipped, {"clean": images, name: images} of the
    first `examples` images of the split).
    """
    split = open_split(folder)
    skipped = {name: unfit(name, split.image_shape) for name in names if unfit(name, split.image_shape)}
    variants = ["clean"] + [name for name in names if name not in skipped]
    right, shown = dict.fromkeys(variants, 0), {}
    for index, (x, y) in enumerate(blocks(split)):
        for variant in variants:
            images = x if variant == "clean" else corrupt(variant, x, seed, index)
            right[variant] += int(np.sum(predict(scaled(images)).argmax(axis=1) == y))
            if index == 0:
                shown[variant] = images[:examples]
    return {variant: right[variant] / split.images for variant in variants}, skipped, shown
