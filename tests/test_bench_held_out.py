"""The held-out sets of bench/held_out.py: deterministic files, every class, the right labels, classified by predict."""
import os

import numpy as np
import pytest
from PIL import Image
from tiny_models import tiny_onnx

from bench import held_out
from mnist_cnn.images import read_image, to_model_image

FONTS = held_out.system_fonts()[:2]
needs_fonts = pytest.mark.skipif(not FONTS, reason="no TrueType or OpenType font on this machine")


def files(folder):
    """{relative path: bytes} of every file under folder."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, folder)] = f.read()
    return found


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """Both sets built once for the module's tests, which only read them: (folder, images per label)."""
    root = tmp_path_factory.mktemp("held_out")
    return root, held_out.build_sets(root, FONTS)


@needs_fonts
def test_sets_are_deterministic_with_every_class(sets, tmp_path):
    root, counts = sets
    assert held_out.build_sets(tmp_path, FONTS) == counts
    assert files(root) == files(tmp_path)
    from sklearn.datasets import load_digits  # here: 2 s of every worker's collection otherwise
    assert counts["handwriting"] == np.bincount(load_digits().target).tolist()  # 178, 182, ... : 1797 in all
    assert counts["printed"] == [len(FONTS) * len(held_out.PRINTED_LAYOUTS)] * 10
    for name, per_label in counts.items():
        for label, count in enumerate(per_label):
            assert len(os.listdir(root / name / str(label))) == count


def test_handwriting_files_hold_the_digit_of_their_label(sets):
    from sklearn.datasets import load_digits
    digits = load_digits()
    for i in (0, 5, 1000, 1796):  # each 4x4 block of the file is one of the original's pixels, dark on white
        path = sets[0] / "handwriting" / str(digits.target[i]) / f"{i:04d}.png"
        blocks = np.asarray(Image.open(path), np.float32).reshape(8, 4, 8, 4)
        assert np.abs(blocks - (255 - digits.images[i] * 255 / 16)[:, None, :, None]).max() <= 0.5
        assert read_image(str(path)).shape == (32, 32)


@needs_fonts
def test_printed_digits_are_dark_on_light_and_differ_by_label(sets):
    name = os.path.splitext(os.path.basename(FONTS[0]))[0]
    images = [read_image(str(sets[0] / "printed" / str(label) / f"{name}-40.png")) for label in range(10)]
    for image in images:
        assert np.median(image) == 255 and image.min() < 50  # white page, black ink
    normalised = [to_model_image(image) for image in images]
    assert min(np.abs(a - b).mean() for i, a in enumerate(normalised) for b in normalised[i + 1:]) > 0.02


@needs_fonts
def test_classify_runs_predict_and_reads_labels_from_folders(tmp_path):
    held_out.write_set(tmp_path / "printed", held_out.printed_images(FONTS[:1]))
    model = str(tiny_onnx(tmp_path / "tiny.onnx", seed=1))
    truth, predicted = held_out.classify(model, str(tmp_path / "printed"))
    weights = np.random.default_rng(1).normal(size=(784, 10)).astype(np.float32)  # tiny_onnx's, computed here
    expected, labels = [], []
    for label in range(10):
        folder = tmp_path / "printed" / str(label)
        for name in sorted(os.listdir(folder)):
            expected.append(int(np.argmax(to_model_image(read_image(str(folder / name))).reshape(784) @ weights)))
            labels.append(label)
    assert truth.tolist() == labels and predicted.tolist() == expected
    result = held_out.scores(truth, predicted)
    assert result["images"] == 30 and result["accuracy"] == pytest.approx(np.mean(truth == predicted), abs=1e-4)


def test_scores_per_class():
    result = held_out.scores(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 0]))
    assert result["accuracy"] == 0.5
    assert result["per_class"] == {"0": 0.5, "1": 1.0, "2": 0.0, **{str(c): None for c in range(3, 10)}}
