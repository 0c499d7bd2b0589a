"""A split streamed with tf.data: shards read in parallel, shuffled through a buffer, scaled on the fly, prefetched.

Memory is bounded by the shards being read (SHARDS_READ at a time, each at most data.shard_mb MiB
of uint8), the shuffle buffer (train.shuffle_buffer uint8 images) and PREFETCH float32 batches, never
by the size of the dataset: every buffer has a fixed size (tf.data's autotuning, left to itself,
grows its prefetch buffers over a long epoch). The pixels and labels each batch holds are those of prepare.scale and
prepare.one_hot: float32 / 255 and one-hot rows.
"""
import math

import tensorflow as tf

from mnist_cnn.errors import UserError, raised_in_pipeline
from mnist_cnn.shards import read_shard

SHARDS_READ = 2  # shards read at once, interleaved: one is read while the other feeds the batches
PREFETCH = 2  # batches ready ahead of the model: fixed, where tf.data's autotuning would grow its buffers
RAM_BUDGET = 256 << 20  # bytes tf.data's autotuner may use for the buffers it sizes itself


def stream(split, batch_size, *, shuffle_buffer=0, seed=0, worker=(0, 1), labels=True, drop_remainder=False,
           steps=None):
    """A tf.data pipeline over a split's shards (worker (index, count): only that worker's part of them).

    shuffle_buffer > 0 shuffles the shard order and the images through a buffer of that many images,
    seeded and differently each epoch; 0 keeps the order (validation, evaluation). Batches are
    (images, one-hot labels), or images alone with labels=False; steps caps the batches per epoch
    (multi-worker training, where every worker must take as many steps as the others).
    """
    files, images = split.part(*worker)
    num_classes = len(split.class_names)
    dataset = tf.data.Dataset.from_tensor_slices(list(files))
    if shuffle_buffer:
        dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)

    def read(path):  # called by tf.data in threads of its own
        try:
            return read_shard(split, path.decode())
        except UserError as error:  # reaches the caller inside TensorFlow's error: the runner prints its one line
            raise raised_in_pipeline(error)

    def load(path):
        x, y = tf.numpy_function(read, [path], (tf.uint8, tf.int64), stateful=False)
        x.set_shape((None, *split.image_shape))
        y.set_shape((None,))
        return x, y

    def images_of(shard):
        # unbatch copies each image out of the shard. from_tensor_slices would not: its images would share the
        # shard's buffer, and one image left in the shuffle buffer would keep the whole shard in memory
        return tf.data.Dataset.from_tensors(shard).unbatch()

    parallel = min(SHARDS_READ, len(files))
    if shuffle_buffer:  # images of `parallel` shards taken in turn, then shuffled through the buffer
        dataset = dataset.interleave(lambda path: images_of(load(path)),
                                     cycle_length=parallel, num_parallel_calls=parallel, deterministic=True)
        dataset = dataset.shuffle(shuffle_buffer, seed=seed + 1, reshuffle_each_iteration=True)
    else:  # in order, as the labels are: shards read `parallel` at a time, their images one shard after another
        dataset = dataset.map(load, num_parallel_calls=parallel, deterministic=True)
        dataset = dataset.flat_map(lambda x, y: images_of((x, y)))
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)

    def prepare(x, y):
        x = tf.cast(x, tf.float32) / 255
        return (x, tf.one_hot(y, num_classes, dtype=tf.float32)) if labels else x

    dataset = dataset.map(prepare, num_parallel_calls=SHARDS_READ, deterministic=True)
    batches = images // batch_size if drop_remainder else math.ceil(images / batch_size)
    if steps is not None:
        dataset, batches = dataset.take(steps), min(steps, batches)
    options = tf.data.Options()
    options.autotune.ram_budget = RAM_BUDGET
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(batches)).prefetch(PREFETCH)
    return dataset.with_options(options)
