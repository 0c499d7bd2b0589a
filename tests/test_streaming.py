"""Splits as shards: preprocess cuts them by data.shard_mb, train and evaluate stream the ones of several shards."""
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import CODE_ENV, SHARD_MB, run_stage, write_params
from mnist_cnn.prepare import one_hot, read_split
from mnist_cnn.shards import open_split, read_all, rows_per_shard, write_split
from mnist_cnn.streaming import PREFETCH, SHARDS_READ, stream


def test_preprocess_cuts_each_split_into_shards_of_at_most_shard_mb(sharded_dir, processed_dir):
    sizes = {}
    for name in ("train", "val", "test"):
        split, whole = open_split(sharded_dir / name), open_split(processed_dir / name)
        assert len(whole.files) == 1  # the default 64 MiB: one shard, as MNIST's splits are
        assert all(size * 28 * 28 <= SHARD_MB * 2**20 for size in split.sizes)
        (x, y), (x_whole, y_whole) = read_all(split), read_all(whole)
        if name == "train":  # streamed through a buffer: put in a seeded order first, every class in each shard
            order = np.random.default_rng(42).permutation(len(y_whole))
            x_whole, y_whole = x_whole[order], y_whole[order]
            assert all(len(set(y[i:i + 66])) == 10 for i in range(0, 240, 66))
        np.testing.assert_array_equal(x, x_whole)  # the same images and labels, in that order
        np.testing.assert_array_equal(y, y_whole)
        assert split.class_names == whole.class_names
        sizes[name] = split.sizes
    assert sizes == {"train": (66, 66, 66, 42), "val": (60,), "test": (66, 34)}


def test_mnist_and_fashion_mnist_fit_in_one_shard_by_default():
    with open("params.yaml") as f:
        shard_mb = float(next(line.split()[1] for line in f if line.strip().startswith("shard_mb:")))
    assert rows_per_shard((28, 28, 1), shard_mb) >= 48_000  # the training split, after validation's 12,000
    assert rows_per_shard((64, 64, 3), shard_mb) == 5461  # the bench's RGB images: many shards


def test_a_stream_holds_the_notebooks_arrays_in_order(sharded_dir):
    split = open_split(sharded_dir / "train")
    x, y, names = read_split(sharded_dir / "train")
    batches = list(stream(split, 32).as_numpy_iterator())
    assert len(batches) == 8  # 240 images, the last batch of 16
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), x)  # float32 / 255, exactly
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), one_hot(y, len(names)))


def test_a_shuffled_stream_is_seeded_and_reshuffled_each_epoch(sharded_dir):
    split = open_split(sharded_dir / "train")
    x, y, _ = read_split(sharded_dir / "train")

    def epochs(seed):
        dataset = stream(split, 16, shuffle_buffer=100, seed=seed)
        return [np.concatenate([b[1].argmax(axis=1) for b in dataset.as_numpy_iterator()]) for _ in range(2)]

    first, again, other = epochs(1), epochs(1), epochs(2)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))  # the same seed, the same order
    assert not np.array_equal(first[0], first[1]) and not np.array_equal(first[0], other[0])
    assert sorted(first[0].tolist()) == sorted(y.tolist())  # every image once per epoch
    images = np.concatenate([b[0] for b in stream(split, 16, shuffle_buffer=100, seed=1).as_numpy_iterator()])
    assert sorted(map(bytes, images)) == sorted(map(bytes, x))


def test_evaluate_streams_several_shards_to_the_same_results(trained_run, sharded_dir, workdir):
    from stages import evaluate
    evaluate.main([str(trained_run["model"]), str(sharded_dir / "test"), "m.json", "p.csv"])
    assert (workdir / "p.csv").read_text() == trained_run["predictions"].read_text()
    ours, theirs = json.loads((workdir / "m.json").read_text()), json.loads(trained_run["metrics"].read_text())
    assert ours["accuracy"] == theirs["accuracy"] and ours["loss"] == pytest.approx(theirs["loss"], rel=1e-6)


@pytest.mark.slow
def test_train_streams_several_shards_deterministically(sharded_dir, workdir):
    write_params(workdir, train__epochs=3, train__batch_size=16, train__shuffle_buffer=100, train__precision="float32")
    digests = []
    for run in ("a", "b"):  # two processes, as two `dvc repro` runs
        result = run_stage("stages.train", sharded_dir / "train", sharded_dir / "val", f"{run}/model.keras",
                           f"{run}/log", cwd=workdir)
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""  # no `E0000 ... node_def_util.cc:682] NodeDef mentions attribute ...`, no warning
        assert "train: 240 training images streamed from 4 shards, shuffled through a buffer of 100" in result.stdout
        digests.append(hashlib.md5((workdir / run / "model.keras").read_bytes()).hexdigest())
    assert digests[0] == digests[1]  # streamed and shuffled, and still the same bytes
    accuracy = [float(line.split("\t")[1]) for line in (workdir / "a" / "log" / "plots" / "metrics" / "eval" /
                                                         "accuracy.tsv").read_text().splitlines()[1:]]
    assert len(accuracy) == 3 and accuracy[-1] > 0.3  # it learns: 10 classes, chance is 0.1


# Streams a split through a shuffle buffer in a fresh process (whose allocator has freed nothing yet to reuse) and
# prints how far its anonymous memory grew over the epoch, polled at every batch
PEAK_GROWTH = """
import json, sys
from mnist_cnn.shards import open_split
from mnist_cnn.streaming import stream
def rss_anon():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon:"))
batches = stream(open_split(sys.argv[1]), int(sys.argv[2]), shuffle_buffer=int(sys.argv[3]), seed=1)
iterator = batches.as_numpy_iterator()
images = len(next(iterator)[0])
start = peak = rss_anon()
for x, _ in iterator:
    images, peak = images + len(x), max(peak, rss_anon())
print(json.dumps({"images": images, "growth": peak - start}))
"""


@pytest.mark.slow
def test_streaming_memory_is_bounded_by_the_buffer_and_the_batches_not_the_dataset(tmp_path):
    """docs/scaling.md: memory is bounded by the shards in flight, the buffer and a few batches. 8,000 images of
    64x64x3 (94 MiB) in 80 shards, through a buffer of 2,000 (23 MiB): about 30 MiB here. Were each image a view
    of its shard (from_tensor_slices), an image left in the buffer would keep its whole shard: 110 MiB."""
    shape, per_shard, buffer, batch = (64, 64, 3), 100, 2000, 32
    image = int(np.prod(shape))
    x = np.random.default_rng(0).integers(0, 256, (8000, *shape), dtype=np.uint8)
    write_split(tmp_path / "train", x, np.arange(len(x)) % 10, np.array(list("0123456789")), per_shard * image / 2**20)
    assert len(open_split(tmp_path / "train").files) == 80
    result = subprocess.run([sys.executable, "-c", PEAK_GROWTH, str(tmp_path / "train"), str(batch), str(buffer)],
                            env={**os.environ, **CODE_ENV}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    measured = json.loads(result.stdout)
    # the buffer twice over (tf.data's shuffle keeps its own slack), the shards being read, float32 batches
    bound = 2 * buffer * image + SHARDS_READ * per_shard * image + (PREFETCH + SHARDS_READ) * batch * image * 4
    assert measured["images"] == len(x) and x.nbytes > 1.5 * bound
    assert measured["growth"] < bound, f"{measured['growth'] / 2**20:.1f} MiB, bound {bound / 2**20:.1f} MiB"
