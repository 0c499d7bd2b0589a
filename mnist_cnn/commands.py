"""The installed commands (pyproject.toml's [project.scripts]), the same as `python -m mnist_cnn.<command>`.

Each imports its module only when run, so mnist-predict starts without the server's packages.
"""
from mnist_cnn.runner import run


def predict():
    """mnist-predict: classify your own images (mnist_cnn/predict.py)."""
    from mnist_cnn.predict import main

    run(main, command="predict")


def serve():
    """mnist-serve: the drawing page and the HTTP API (mnist_cnn/serve.py)."""
    from mnist_cnn.serve import main

    run(main, command="serve")
