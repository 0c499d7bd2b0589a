"""Splits as shards: preprocess cuts them by data.shard_mb, train and evaluate stream the ones of several shards."""
import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import CODE_ENV, SHARD_MB, run_stage, write_params
from mnist_cnn.errors import UserError, carried_by
from mnist_cnn.prepare import one_hot, read_split
from mnist_cnn.shards import open_split, read_all, read_shard, rows_per_shard, write_split
from mnist_cnn.streaming import PREFETCH, RAM_BUDGET, SHARDS_READ, stream


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


def test_a_stream_without_a_seed_is_seeded_with_0(sharded_dir):
    split = open_split(sharded_dir / "train")

    def order(**seed):
        batches = stream(split, 64, shuffle_buffer=100, **seed).as_numpy_iterator()
        return np.concatenate([labels.argmax(axis=1) for _, labels in batches])

    np.testing.assert_array_equal(order(), order(seed=0))
    assert not np.array_equal(order(), order(seed=1))


def test_drop_remainder_and_steps_cap_the_batches_and_the_cardinality_says_so(sharded_dir):
    split = open_split(sharded_dir / "train")
    x, y, names = read_split(sharded_dir / "train")  # 240 images: 7 batches of 32 and one of 16

    def batches(dataset):
        listed = list(dataset.as_numpy_iterator())
        assert int(dataset.cardinality()) == len(listed)  # what Keras sizes an epoch by
        return listed

    whole = batches(stream(split, 32, drop_remainder=True))
    assert [len(b[0]) for b in whole] == [32] * 7
    np.testing.assert_array_equal(np.concatenate([b[0] for b in whole]), x[:224])
    np.testing.assert_array_equal(np.concatenate([b[1] for b in whole]), one_hot(y[:224], len(names)))
    capped = batches(stream(split, 32, steps=3))
    assert len(capped) == 3
    np.testing.assert_array_equal(np.concatenate([b[0] for b in capped]), x[:96])
    assert [len(b[0]) for b in batches(stream(split, 32, steps=20))] == [32] * 7 + [16]  # no more than there are
    assert [len(b[0]) for b in batches(stream(split, 32, steps=20, drop_remainder=True))] == [32] * 7


def test_a_stream_without_labels_holds_the_images_alone_and_every_batch_has_a_known_shape(sharded_dir):
    split = open_split(sharded_dir / "train")
    x, _, _ = read_split(sharded_dir / "train")
    images = list(stream(split, 32, labels=False).as_numpy_iterator())
    assert all(isinstance(batch, np.ndarray) for batch in images)
    np.testing.assert_array_equal(np.concatenate(images), x)
    # Keras builds the model's input from these: a shape left unknown would fail there, not here
    for shuffle_buffer in (0, 100):
        assert stream(split, 32, shuffle_buffer=shuffle_buffer).element_spec == (
            tf.TensorSpec((None, 28, 28, 1), tf.float32), tf.TensorSpec((None, 10), tf.float32))
    assert stream(split, 32, labels=False).element_spec == tf.TensorSpec((None, 28, 28, 1), tf.float32)


def interleaved(order, sizes, cycle_length):
    """(shard, image) in the order tf.data's interleave takes them: one image of each of cycle_length open shards in
    turn, a shard that runs out replaced in its slot by the next of order (that slot's turn is spent finding it out)."""
    waiting, taken = list(order), []
    slots = [[waiting.pop(0), 0] for _ in range(min(cycle_length, len(waiting)))]
    while any(slots):
        for i, slot in enumerate(slots):
            if slot and slot[1] == sizes[slot[0]]:
                slots[i] = [waiting.pop(0), 0] if waiting else None
            elif slot:
                taken.append(tuple(slot))
                slot[1] += 1
    return taken


def test_a_shuffled_stream_reads_two_shards_at_a_time_in_a_new_order_each_epoch(sharded_dir):
    """A buffer of one image leaves the images as the interleave takes them: shards in a seeded order, drawn anew each
    epoch, two at a time (SHARDS_READ: the memory bound), each shard's images in their order. The same on a machine
    of one core (built in a thread held to one): an interleave left to autotune reads as many shards as there are
    cores, and its order changes with them."""
    split = open_split(sharded_dir / "train")
    where = {}
    for shard, path in enumerate(split.files):
        for image, pixels in enumerate(read_shard(split, path)[0]):
            where[pixels.tobytes()] = (shard, image)
    assert len(where) == sum(split.sizes) == 240
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cores)})  # this thread's: TensorFlow's count of cores when it builds the pipeline
    try:
        dataset = stream(split, 240, shuffle_buffer=1, seed=3)
    finally:
        os.sched_setaffinity(0, cores)
    orders = []
    for _ in range(3):
        (x, _), = dataset.as_numpy_iterator()
        taken = [where[np.round(image * 255).astype(np.uint8).tobytes()] for image in x]
        order = list(dict.fromkeys(shard for shard, _ in taken))  # in the order each shard first appears
        assert taken == interleaved(order, split.sizes, SHARDS_READ)
        orders.append(order)
    assert sorted(orders[0]) == [0, 1, 2, 3] and orders[0] != orders[1]  # seeded, reshuffled each epoch


def test_a_shuffled_stream_shuffles_images_with_the_seed_after_the_shards_one(processed_dir):
    """The images go through a buffer shuffled with seed + 1 (the shards' order has seed): with one shard, the same
    permutations, epoch after epoch, as a buffer of that size and seed gives the numbers 0, 1, 2, ..."""
    split = open_split(processed_dir / "train")
    x, _, _ = read_split(processed_dir / "train")
    assert len(split.files) == 1
    index = {image.tobytes(): i for i, image in enumerate(x)}
    assert len(index) == len(x)
    dataset = stream(split, len(x), shuffle_buffer=100, seed=4)
    numbers = tf.data.Dataset.range(len(x)).shuffle(100, seed=5, reshuffle_each_iteration=True)
    epochs = []
    for _ in range(2):
        (images, _), = dataset.as_numpy_iterator()
        epochs.append([index[image.tobytes()] for image in images])
        assert epochs[-1] == [int(i) for i in numbers]
    assert epochs[0] != epochs[1]


def pipeline(dataset):
    """(op, its integer inputs, its deterministic attribute) of each dataset op of a tf.data pipeline's graph, the
    input first. Serialized as tf.distribute and tf.data's checkpoints do: refused if the pipeline holds state."""
    graph = tf.compat.v1.GraphDef.FromString(dataset._as_serialized_graph(
        external_state_policy=tf.data.experimental.ExternalStatePolicy.FAIL).numpy())
    ints = {node.name: int(tf.make_ndarray(node.attr["value"].tensor)) for node in graph.node
            if node.op == "Const" and node.attr["dtype"].type == tf.int64.as_datatype_enum}
    return [(node.op, [ints[name] for name in node.input if name in ints], node.attr["deterministic"].s.decode())
            for node in graph.node if "Dataset" in node.op]


def test_the_buffers_and_threads_of_a_stream_are_fixed_not_autotuned(sharded_dir):
    """What bounds memory (docs/scaling.md) and keeps the order the same on any machine, neither of which a test on
    one machine sees: SHARDS_READ shards read at once and in order (deterministic), interleaved SHARDS_READ at a
    time, PREFETCH batches ahead, tf.data's autotuner held to RAM_BUDGET. Autotuned (None), the interleave would
    read as many shards as the machine has cores, the prefetch buffer would grow over an epoch. The reads are
    stateless: a stateful numpy_function makes the pipeline unserializable and, under op determinism (train),
    read one shard at a time."""
    split = open_split(sharded_dir / "train")
    for shuffle_buffer in (0, 100):
        dataset = stream(split, 32, shuffle_buffer=shuffle_buffer)
        ops = [(op, ints, deterministic) for op, ints, deterministic in pipeline(dataset)
               if op not in ("TensorSliceDataset", "ShuffleDatasetV3", "OptionsDataset")]
        # interleave's ints: cycle_length, block_length, buffer_output_elements, prefetch_input_elements, threads
        read = ([("ParallelInterleaveDatasetV4", [SHARDS_READ, 1, 3, 4, SHARDS_READ], "true")] if shuffle_buffer else
                [("ParallelMapDatasetV2", [SHARDS_READ], "true"), ("FlatMapDataset", [], "")])
        assert ops == read + [("BatchDatasetV2", [32], ""), ("ParallelMapDatasetV2", [SHARDS_READ], "true"),
                              ("AssertCardinalityDataset", [8], ""), ("PrefetchDataset", [PREFETCH], "")]
        assert dataset.options().autotune.ram_budget == RAM_BUDGET == 256 << 20


def test_a_shard_changed_on_disk_stops_the_stream_with_its_one_line(sharded_dir, tmp_path):
    shutil.copytree(sharded_dir / "train", tmp_path / "train")
    with open(tmp_path / "train" / "part-00002.npz", "r+b") as f:  # one pixel, its size kept
        f.seek(20_000)
        pixel = f.read(1)
        f.seek(20_000)
        f.write(bytes([pixel[0] ^ 1]))
    split = open_split(tmp_path / "train")
    with pytest.raises(tf.errors.OpError) as raised:
        list(stream(split, 32).as_numpy_iterator())
    error = carried_by(raised.value)  # what the stage runner prints
    assert isinstance(error, UserError)
    assert str(error).startswith(f"{tmp_path / 'train' / 'part-00002.npz'} has changed since preprocess wrote it")
