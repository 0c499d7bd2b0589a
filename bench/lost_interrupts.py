"""How often Python loses the KeyboardInterrupt of a signal during a training loop of tf.function calls.

    python -m bench.lost_interrupts [--seconds 40]

A thread sends this process SIGINT every 1 to 20 ms while the main thread runs a distributed training
loop like multi_worker.fit's (an iterator over a distributed dataset, tf.function calls of a few steps
each). The handler, as mnist_cnn/runner.py's, raises KeyboardInterrupt; each one that reaches the loop's
`except` is counted. A KeyboardInterrupt raised inside a __del__ is reported by Python ("Exception ignored")
and dropped; one raised inside code that TensorFlow's C++ calls back into may be cleared without a word.
Prints the signals handled, the KeyboardInterrupts that came through, and the difference: the ones lost,
why runner.stop_if_interrupted exists (a CI run's multi-worker worker trained on after Ctrl-C).
"""
import argparse
import json
import os
import random
import signal
import sys
import threading
import time

from mnist_cnn.runner import quiet_tensorflow

tf = quiet_tensorflow()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=40, help="how long to send signals")
    seconds = parser.parse_args(argv).seconds

    strategy = tf.distribute.MirroredStrategy(["/CPU:0"])
    data = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices(tf.random.uniform((256, 8), seed=0)).batch(4).repeat())
    total = tf.Variable(0.0)

    @tf.function
    def steps(iterator, count):
        for _ in tf.range(count):
            strategy.run(lambda x: total.assign_add(tf.reduce_sum(x)), args=(next(iterator),))
        return total.read_value()

    def epoch():
        iterator = iter(data)
        for _ in range(5):
            float(steps(iterator, tf.constant(2)))

    handled = came_through = 0

    def handler(signum, frame):
        nonlocal handled
        if frame.f_code.co_filename == __file__:
            return  # this loop's own bookkeeping: not a place a stage's code would be
        handled += 1
        raise KeyboardInterrupt

    sending = True

    def send():
        while sending:
            time.sleep(random.uniform(0.001, 0.02))
            os.kill(os.getpid(), signal.SIGINT)

    signal.signal(signal.SIGINT, handler)
    sys.unraisablehook = lambda unraisable: None  # the ones lost in a __del__: counted, not printed
    threading.Thread(target=send, daemon=True).start()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            epoch()
        except KeyboardInterrupt:
            came_through += 1
    sending = False
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    print(json.dumps({"seconds": seconds, "handled": handled, "came_through": came_through,
                      "lost": handled - came_through}))


if __name__ == "__main__":
    main()
