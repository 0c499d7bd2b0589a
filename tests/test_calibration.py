"""Calibration: ECE, Brier score and NLL against figures worked out by hand."""
import math

import numpy as np
import pytest

from mnist_cnn.calibration import calibration, reliability

# Four images, three classes. Confidences 0.9 (right) and 0.92 (wrong) share the bin (14/15 - 1/15, 14/15];
# 0.5 (right) is alone in (7/15, 8/15]; 0.35 (wrong) alone in (5/15, 6/15]
PROBABILITIES = np.array([[0.9, 0.05, 0.05], [0.92, 0.04, 0.04], [0.5, 0.3, 0.2], [0.35, 0.34, 0.31]])
LABELS = np.array([0, 1, 0, 2])


def test_ece_brier_and_nll_of_a_hand_computed_example():
    # ECE: half the images in a bin 50% right at mean confidence 0.91, a quarter 100% right at 0.5, a quarter 0% at 0.35
    ece = 2 / 4 * abs(0.5 - 0.91) + 1 / 4 * abs(1 - 0.5) + 1 / 4 * abs(0 - 0.35)
    # Brier: the squared distance to the one-hot label, per image, summed over the classes
    brier = np.mean([0.1**2 + 0.05**2 + 0.05**2, 0.92**2 + 0.96**2 + 0.04**2, 0.5**2 + 0.3**2 + 0.2**2,
                     0.35**2 + 0.34**2 + 0.69**2])
    nll = -(math.log(0.9) + math.log(0.04) + math.log(0.5) + math.log(0.31)) / 4
    assert calibration(PROBABILITIES, LABELS) == pytest.approx({"ece": 0.4175, "brier": 0.7197, "nll": 1.29714},
                                                               abs=1e-5)
    assert calibration(PROBABILITIES, LABELS) == pytest.approx({"ece": ece, "brier": brier, "nll": nll}, abs=1e-12)


def test_reliability_rows_are_the_bins_that_hold_images():
    rows = reliability(PROBABILITIES, LABELS)
    expected = [(6 / 15, 0.35, 0.0, 1), (8 / 15, 0.5, 1.0, 1), (14 / 15, 0.91, 0.5, 2)]
    assert [images for *_, images in rows] == [1, 1, 2]
    np.testing.assert_allclose(np.array(rows, float), np.array(expected, float), atol=1e-12)


def test_a_confidence_on_a_bin_edge_goes_into_the_bin_below():
    """Bins are (lower, upper]: 0.2 = 3/15 is the top of the third bin, 0.6 = 9/15 of the ninth; 1.0 of the last."""
    probabilities = np.array([[0.2] * 5, [0.6, 0.4, 0, 0, 0], [1.0, 0, 0, 0, 0]])
    assert [upper for upper, *_ in reliability(probabilities, np.array([0, 0, 0]))] == [3 / 15, 9 / 15, 1.0]


def test_a_calibrated_model_scores_near_zero_and_an_overconfident_one_does_not():
    """Right with probability equal to the confidence: ECE near 0. Always 99% sure and right half the time: 0.49."""
    rng = np.random.default_rng(0)
    n, classes = 100_000, 10
    confidence = rng.uniform(0.1, 1.0, n)
    labels = rng.integers(0, classes, n)
    right = rng.random(n) < confidence
    top = np.where(right, labels, (labels + 1) % classes)  # the class given the confidence
    probabilities = np.full((n, classes), 0.0)
    probabilities += ((1 - confidence) / (classes - 1))[:, None]
    probabilities[np.arange(n), top] = confidence
    assert calibration(probabilities, labels)["ece"] < 0.01
    sure = np.full((n, classes), 0.01 / 9)
    sure[np.arange(n), np.where(np.arange(n) % 2 == 0, labels, (labels + 1) % classes)] = 0.99
    assert calibration(sure, labels)["ece"] == pytest.approx(0.49, abs=1e-9)


def test_a_sure_mistake_costs_a_finite_nll():
    """A probability of 0 in float32 for the true class: -log of the smallest normal float32, not infinity."""
    result = calibration(np.array([[1.0, 0.0]], np.float32), np.array([1]))
    assert result["nll"] == pytest.approx(-math.log(np.finfo(np.float32).tiny)) and result["brier"] == 2
    assert result["ece"] == 1
