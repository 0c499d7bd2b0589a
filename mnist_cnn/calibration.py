"""How far a model's probabilities can be trusted: expected calibration error, Brier score, negative log-likelihood.

A model is calibrated when, of the images it gives a confidence of 0.8, 80% are right. ECE (Guo et al.,
"On calibration of modern neural networks", 2017) measures the gap: the images are put in 15 bins of equal
width by their confidence (the top probability), and ECE is the mean over bins of |accuracy - confidence|,
weighted by each bin's share of the images. The Brier score (Brier, 1950) is the squared distance between
the probabilities and the one-hot label, summed over the classes (0 for a sure, right answer; 2 for a sure,
wrong one); the NLL is the mean of -log(probability of the true class). Both are proper scoring rules: they
reward confidence that is right and punish confidence that is wrong.
"""
import numpy as np

BINS = 15  # Guo et al.'s number of bins
# NLL of a probability of 0 in float32 (a sure mistake): -log of the smallest normal float32, 87.3, not infinity
FLOOR = np.finfo(np.float32).tiny


def confidence_bins(probabilities, bins=BINS):
    """The bin of each image's confidence: bin m (0-based) holds confidences in (m / bins, (m + 1) / bins]."""
    edges = np.linspace(0, 1, bins + 1)  # a confidence equal to an edge goes below it, as (lower, upper] says
    return np.clip(np.searchsorted(edges, probabilities.max(axis=1), side="left") - 1, 0, bins - 1)


def reliability(probabilities, labels, bins=BINS):
    """Rows (bin's upper edge, mean confidence, accuracy, images) of each bin that holds images, in order."""
    probabilities = np.asarray(probabilities, np.float64)
    which = confidence_bins(probabilities, bins)
    confidence, right = probabilities.max(axis=1), probabilities.argmax(axis=1) == labels
    return [((m + 1) / bins, float(confidence[which == m].mean()), float(right[which == m].mean()),
             int(np.sum(which == m))) for m in range(bins) if np.any(which == m)]


def calibration(probabilities, labels, bins=BINS):
    """{"ece", "brier", "nll"} of probabilities (N, classes) against integer labels (N,)."""
    probabilities = np.asarray(probabilities, np.float64)
    rows = reliability(probabilities, labels, bins)
    ece = sum(images * abs(accuracy - confidence) for _, confidence, accuracy, images in rows) / len(labels)
    truth = np.eye(probabilities.shape[1])[labels]
    true_probability = probabilities[np.arange(len(labels)), labels]
    return {"ece": float(ece),
            "brier": float(np.mean(np.sum((probabilities - truth) ** 2, axis=1))),
            "nll": float(np.mean(-np.log(np.maximum(true_probability, FLOOR))))}
