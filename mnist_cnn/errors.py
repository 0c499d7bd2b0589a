"""The one exception for mistakes a user can fix: the stage runner prints it as one line."""


class UserError(Exception):
    """A mistake the user can fix; printed as one line, never as a traceback."""


# UserErrors raised inside TensorFlow's data pipelines (mnist_cnn/streaming.py). TensorFlow hands them to the caller
# as its own error, our traceback pasted into the text; the runner finds the one it carries and prints that line.
_IN_PIPELINES = []


def raised_in_pipeline(error):
    """Keep a UserError raised in a tf.data pipeline's thread for the runner; returns it, to raise."""
    _IN_PIPELINES.append(error)
    return error


def carried_by(exception):
    """The UserError a pipeline raised that `exception` (TensorFlow's error) carries in its text, else None."""
    text = str(exception)
    return next((error for error in _IN_PIPELINES if str(error) in text), None)
