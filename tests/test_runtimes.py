"""runtimes: one interface over the model formats, in process with tiny models (no training): fixed batches, class
names, ranking, the form of a path, missing runtimes, and which SavedModel or LiteRT files count as the project's."""
import hashlib
import importlib
import importlib.util
import os

import numpy as np
import pytest
from test_predict import tiny_probabilities
from tiny_models import tiny_onnx

from conftest import digit_images
from mnist_cnn import runtimes
from mnist_cnn.errors import UserError
from mnist_cnn.images import to_model_image
from mnist_cnn.runtimes import Classifier, class_names_for, dvc_md5, format_of, is_own_output, open_model, top_classes


@pytest.mark.parametrize("batch", ["N", 1, 4])
def test_a_model_of_a_fixed_batch_takes_any_number_of_images(tmp_path, batch):
    """Exported for exactly `batch` images at a time, a model still classifies 0, 1, 6 or 9 of them: the last
    batch filled up with blank images, then dropped."""
    model = open_model(str(tiny_onnx(tmp_path / "model.onnx", batch=batch)))
    assert (model.image_shape, model.num_classes, model.format) == ((28, 28, 1), 10, "onnx")
    assert model.fixed_batch == (None if batch == "N" else batch)
    digits, _ = digit_images(9, seed=21)
    x = np.stack([to_model_image(d, 28, False) for d in digits])[..., None]
    expected = np.stack([tiny_probabilities(d) for d in digits])
    for count in (1, 6, 9):
        got = model.predict(x[:count], batch_size=5)
        assert got.dtype == np.float32 and got.shape == (count, 10)
        np.testing.assert_allclose(got, expected[:count], atol=1e-5)
    empty = model.predict(x[:0])
    assert empty.shape == (0, 10) and empty.dtype == np.float32


def test_predict_runs_the_batches_it_is_given_and_a_fixed_batch_pads_with_blank_images(tmp_path):
    seen = []

    def run_batch(x):
        seen.append(x.copy())
        return np.tile(np.arange(3, dtype=np.float64), (len(x), 1)) + x.reshape(len(x), -1)[:, :1]

    x = np.arange(5, dtype=np.float64).reshape(5, 1, 1, 1) + 1
    free = Classifier("m.onnx", "onnx", [None, 1, 1, 1], 3, run_batch)
    np.testing.assert_array_equal(free.predict(x, batch_size=2), np.arange(3) + x.reshape(5, 1))
    assert [batch.ravel().tolist() for batch in seen] == [[1, 2], [3, 4], [5]]
    assert all(batch.dtype == np.float32 for batch in seen)
    assert free.predict(x).dtype == np.float32  # what the runtime returned was float64
    seen.clear()
    fixed = Classifier("m.onnx", "onnx", [3, 1, 1, 1], 3, run_batch)
    assert fixed.predict(x, batch_size=2).shape == (5, 3)  # its own batch of 3, not the 2 asked
    assert [batch.ravel().tolist() for batch in seen] == [[1, 2, 3], [4, 5, 0]]
    seen.clear()
    litert = Classifier("m.tflite", "litert", [1, 1, 1, 1], 3, run_batch)  # resizes its input itself
    assert litert.fixed_batch is None and litert.predict(x, batch_size=4).shape == (5, 3)
    assert [len(batch) for batch in seen] == [4, 1]
    seen.clear()
    assert free.predict(np.ones((1000, 1, 1, 1))).shape == (1000, 3)  # in batches of 512 unless told
    assert [len(batch) for batch in seen] == [512, 488]
    for shape, size in (([None, 1, 1, 1], None), ([None, 1, 1, 1], 0), ([None, 1, 1, 1], "3")):
        with pytest.raises(UserError, match=r"^m.keras has an output of unknown size: run `dvc repro --force train`$"):
            Classifier("m.keras", "keras", shape, size, run_batch)
    with pytest.raises(UserError, match=r"^m.onnx has an output of unknown size: run `dvc repro --force export`$"):
        Classifier("m.onnx", "onnx", [None, 1, 1, 1], -1, run_batch)
    for path, format, stage in (("m.onnx", "onnx", "exported; run `dvc repro --force export`"),
                                ("m.tflite", "litert", "exported; run `dvc repro --force export`"),
                                ("m.keras", "keras", "trained; run `dvc repro --force train`")):
        with pytest.raises(UserError) as error:  # the stage that writes a file of its format
            Classifier(path, format, [None, 1, 1, 5], 3, run_batch)
        assert str(error.value) == (f"{path} takes inputs of shape (None, 1, 1, 5), not images of (height, width, 1 "
                                    f"or 3): it is not a model this pipeline {stage}")
    assert Classifier("m.onnx", "onnx", [0, 1, 1, 1], 1, run_batch).fixed_batch is None
    assert Classifier("m.onnx", "onnx", ["N", 1, 1, 1], 1, run_batch).fixed_batch is None


class Model:
    def __init__(self, path, num_classes=3):
        self.path, self.num_classes = str(path), num_classes


def test_class_names_come_from_classes_json_beside_the_model_else_the_indices(tmp_path):
    (tmp_path / "models").mkdir()
    assert class_names_for(Model(tmp_path / "models" / "model.onnx")) == ["0", "1", "2"]
    (tmp_path / "models" / "classes.json").write_text('["cat", "dog", "émeu"]')
    assert class_names_for(Model(tmp_path / "models" / "model.onnx")) == ["cat", "dog", "émeu"]
    assert class_names_for(Model(f"{tmp_path}/models/saved_model/")) == ["cat", "dog", "émeu"]  # a folder's
    for content in ('["cat", "dog"]', '["cat", "dog", 3]', '{"0": "cat", "1": "dog", "2": "emu"}'):
        (tmp_path / "models" / "classes.json").write_text(content)
        with pytest.raises(UserError) as error:
            class_names_for(Model(tmp_path / "models" / "model.onnx"))
        assert str(error.value) == (
            f"{tmp_path}/models/classes.json does not hold the 3 class names of {tmp_path}/models/model.onnx: the two "
            f"come from different runs; run `dvc checkout models` or `dvc repro --force train`")
    (tmp_path / "models" / "classes.json").write_text("[")
    with pytest.raises(UserError, match=r"classes.json is not readable JSON \(.*\): run `dvc repro --force train` to "
                                        r"write it again$"):
        class_names_for(Model(tmp_path / "models" / "model.onnx"))


def test_top_classes_rank_by_probability_ties_in_class_order():
    names = ["a", "b", "c", "d"]
    p = np.array([0.1, 0.3, 0.3, 0.3], np.float32)
    assert top_classes(p, names, 2) == [{"label": "b", "probability": pytest.approx(0.3)},
                                        {"label": "c", "probability": pytest.approx(0.3)}]
    assert [r["label"] for r in top_classes(p, names, 9)] == ["b", "c", "d", "a"]
    assert [r["label"] for r in top_classes(np.array([0.4, 0.1, 0.5, 0.0]), names, 1)] == ["c"]
    # 100 classes, most of them tied: past NumPy's few-element insertion sort, its default sort is not stable
    many = np.full(100, 0.005, np.float32)
    many[[97, 3, 50]] = [0.2, 0.1, 0.2]
    expected = sorted(range(100), key=lambda i: -many[i])  # Python's sort is stable
    assert [r["label"] for r in top_classes(many, [str(i) for i in range(100)], 100)] == [str(i) for i in expected]
    assert all(type(r["probability"]) is float for r in top_classes(p, names, 4))  # JSON-ready


def test_the_form_of_a_path_names_its_runtime(tmp_path):
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / "saved_model.pb").write_bytes(b"")
    (tmp_path / "folder").mkdir()
    assert [format_of(str(tmp_path / name)) for name in ("saved", "folder")] == ["saved_model", None]
    assert [format_of(name) for name in ("m.keras", "M.ONNX", "m.TfLite", "m.h5", "model")] == [
        "keras", "onnx", "litert", None, None]


def test_open_model_says_what_is_wrong_with_a_path_in_one_line(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "model.h5").write_bytes(b"")
    (tmp_path / "broken.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(UserError, match=r"^.*/none.onnx not found: run `dvc repro` to train and export the model$"):
        open_model(str(tmp_path / "none.onnx"))
    for name in ("folder", "model.h5"):
        with pytest.raises(UserError) as error:
            open_model(str(tmp_path / name))
        assert str(error.value) == (f"{tmp_path}/{name} is not a model file: give a .keras, .onnx or .tflite file or "
                                    f"a SavedModel folder")
    with pytest.raises(UserError) as error:
        open_model(str(tmp_path / "broken.onnx"))
    message = str(error.value)
    assert message.startswith(f"{tmp_path}/broken.onnx is not a readable onnx model (")
    assert message.endswith("): run `dvc repro --force export`") and "\n" not in message


def test_open_model_turns_a_runtimes_error_without_text_into_its_name(tmp_path, monkeypatch):
    def fails(path, threads):
        raise RuntimeError("  \n")

    monkeypatch.setitem(runtimes.__dict__, "_onnx", fails)
    with pytest.raises(UserError, match=r"^m.onnx is not a readable onnx model \(RuntimeError\): run "):
        (tmp_path / "m.onnx").write_bytes(b"")
        monkeypatch.chdir(tmp_path)
        open_model("m.onnx")

    def says(path, threads):
        raise RuntimeError("  [ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model failed\n  at line 2\n")

    monkeypatch.setitem(runtimes.__dict__, "_onnx", says)
    with pytest.raises(UserError) as error:  # the first line of the runtime's message, stripped
        open_model("m.onnx")
    assert str(error.value) == ("m.onnx is not a readable onnx model ([ONNXRuntimeError] : 7 : INVALID_PROTOBUF : "
                                "Load model failed): run `dvc repro --force export`")

    def breaks(path, threads):
        raise ImportError("a broken onnxruntime")

    monkeypatch.setitem(runtimes.__dict__, "_onnx", breaks)
    with pytest.raises(UserError, match=r"^m.onnx: onnx models need onnxruntime, not installed here: `pip install "
                                        r"onnxruntime`$"):
        open_model("m.onnx")


def test_a_missing_runtime_is_named_with_the_command_that_installs_it(monkeypatch):
    absent = {"tensorflow", "onnxruntime"}
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in absent else find_spec(name, *a))
    with pytest.raises(UserError) as error:
        runtimes.check_runtime("m.keras", "keras")
    assert str(error.value) == ("m.keras: keras models need tensorflow, not installed here: `pip install tensorflow`, "
                                "or install mnist-cnn with its [keras] extra (`pip install '.[keras]'`)")
    with pytest.raises(UserError) as error:
        runtimes.check_runtime("m.onnx", "onnx")
    assert str(error.value) == "m.onnx: onnx models need onnxruntime, not installed here: `pip install onnxruntime`"
    absent.add("keras")
    with pytest.raises(UserError, match=r"need tensorflow and keras, not installed here: `pip install tensorflow "
                                        r"keras`, or install"):
        runtimes.check_runtime("m.keras", "keras")
    absent.clear()
    runtimes.check_runtime("m.keras", "keras")
    # load=True: a package there but not importable counts as missing
    import_module = importlib.import_module

    def refuse(name, *args):
        if name == "keras":
            raise ImportError("broken")
        return import_module(name, *args)

    monkeypatch.setattr(importlib, "import_module", refuse)
    runtimes.check_runtime("m.keras", "keras")  # without load, only found
    with pytest.raises(UserError, match=r"^m.keras: keras models need keras, not installed here: `pip install keras`"):
        runtimes.check_runtime("m.keras", "keras", load=True)


def test_open_model_names_the_model_whose_runtime_is_missing_before_reading_it(tmp_path, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else
                        find_spec(name, *a))
    (tmp_path / "m.onnx").write_bytes(b"")
    with pytest.raises(UserError) as error:
        open_model(str(tmp_path / "m.onnx"))
    assert str(error.value) == (f"{tmp_path}/m.onnx: onnx models need onnxruntime, not installed here: `pip install "
                                f"onnxruntime`")


def dir_md5(folder):
    """DVC's own digest of a folder (dvc_data's Tree), computed apart from runtimes.dvc_md5."""
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.meta import Meta
    from dvc_data.hashfile.tree import Tree

    tree = Tree()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        tree.add(path.relative_to(folder).parts, Meta(), HashInfo("md5", hashlib.md5(path.read_bytes()).hexdigest()))
    tree.digest()
    return tree.hash_info.value


def test_a_savedmodel_or_litert_file_is_the_projects_own_when_the_nearest_dvc_lock_records_its_digest(tmp_path):
    project = tmp_path / "project"
    saved = project / "models" / "saved_model"
    (saved / "variables").mkdir(parents=True)
    (saved / "saved_model.pb").write_bytes(b"graph")
    (saved / "variables" / "variables.index").write_bytes(b"index")
    (saved / "Zeta.txt").write_bytes(b"z")
    tflite = project / "models" / "model.tflite"
    tflite.write_bytes(b"flatbuffer")
    assert dvc_md5(str(saved)) == dir_md5(saved) and dvc_md5(str(tflite)) == hashlib.md5(b"flatbuffer").hexdigest()
    assert not is_own_output(str(tflite))  # no dvc.lock above it
    (tmp_path / "dvc.lock").write_text(f"    - path: project/models/model.tflite\n      md5: {dvc_md5(str(tflite))}\n")
    assert is_own_output(str(tflite))
    lock = (f"schema: '2.0'\nstages:\n  export:\n    outs:\n    - path: models/model.tflite\n      hash: md5\n"
            f"      md5: {hashlib.md5(b'flatbuffer').hexdigest()}\n      size: 10\n    - path: models/saved_model\n"
            f"      hash: md5\n      md5: {dir_md5(saved)}\n      size: 15\n      nfiles: 3\n")
    (project / "dvc.lock").write_text(lock)  # the nearest: project/'s, which names the paths relative to it
    assert is_own_output(str(tflite)) and is_own_output(str(saved)) and is_own_output(str(saved) + "/")
    (saved / "variables" / "variables.index").write_bytes(b"changed")
    tflite.write_bytes(b"changed")
    assert not is_own_output(str(tflite)) and not is_own_output(str(saved))
    other = project / "other.tflite"
    other.write_bytes(b"flatbuffer")  # the digest of a recorded output, at a path the lock does not name
    assert not is_own_output(str(other))
    (project / "dvc.lock").write_bytes(b"\xff\xfe not UTF-8")
    assert not is_own_output(str(other))
    with pytest.raises(UserError, match="a LiteRT file is a program that can read and write files"):
        runtimes.check_trusted(str(other), "litert")
    runtimes.check_trusted(str(other), "onnx")  # an ONNX or .keras file runs from anywhere


def test_dvc_lock_is_read_as_utf8_whatever_the_locales_encoding(tmp_path, monkeypatch):
    """DVC writes dvc.lock in UTF-8: a path with an accent in it is the project's own under a locale of another
    encoding too (cp1252, Windows' default; here the default of an open() not told which)."""
    import builtins

    tflite = tmp_path / "modèles" / "model.tflite"
    tflite.parent.mkdir()
    tflite.write_bytes(b"flatbuffer")
    (tmp_path / "dvc.lock").write_bytes(
        f"    - path: modèles/model.tflite\n      md5: {hashlib.md5(b'flatbuffer').hexdigest()}\n".encode())
    assert is_own_output(str(tflite))

    def cp1252_by_default(file, mode="r", *args, encoding=None, **options):
        return builtins.open(file, mode, *args, encoding=encoding or ("cp1252" if "b" not in mode else None),
                             **options)

    monkeypatch.setattr(runtimes, "open", cp1252_by_default, raising=False)
    assert is_own_output(str(tflite))
    with cp1252_by_default(tmp_path / "dvc.lock") as f:
        assert "path: modÃ¨les/model.tflite" in f.read()  # what a read in the locale's encoding would find


def test_the_default_model_is_the_onnx_export_where_it_exists(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert runtimes.default_model() == "models/model.keras"
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "model.keras").write_bytes(b"")
    assert runtimes.default_model() == "models/model.keras"
    (tmp_path / "models" / "model.onnx").write_bytes(b"")
    assert runtimes.default_model() == "models/model.onnx"



def test_a_keras_model_is_a_classifier_of_its_input_and_output_shapes(tmp_path):
    import keras

    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(7, "softmax")])
    model.save(tmp_path / "m.keras")
    classifier = open_model(str(tmp_path / "m.keras"))
    assert (classifier.format, classifier.image_shape, classifier.num_classes) == ("keras", (28, 28, 1), 7)
    assert classifier.fixed_batch is None
    x = np.random.default_rng(0).random((3, 28, 28, 1), np.float32)
    np.testing.assert_allclose(classifier.predict(x), model.predict_on_batch(x), atol=1e-6)


def test_tensorflow_is_kept_from_writing_under_home(tmp_path, monkeypatch):
    """Without a keras.json of the user's, Keras is pointed at a folder that cannot exist; matplotlib is not
    imported. A user's keras.json is still read."""
    import sys

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KERAS_HOME", raising=False)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # restored (or removed) after the test
    del sys.modules["matplotlib"]
    tf = runtimes._tensorflow()
    assert tf.__name__ == "tensorflow" and hasattr(tf, "saved_model")
    assert os.environ["KERAS_HOME"] == "/dev/null/keras" and sys.modules["matplotlib"] is None
    monkeypatch.delenv("KERAS_HOME")
    (tmp_path / ".keras").mkdir()
    (tmp_path / ".keras" / "keras.json").write_text("{}")
    runtimes._tensorflow()
    assert "KERAS_HOME" not in os.environ
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "mine"))
    (tmp_path / ".keras" / "keras.json").unlink()
    runtimes._tensorflow()
    assert os.environ["KERAS_HOME"] == str(tmp_path / "mine")


def first_pixels_model(folder, batch=None):
    """A SavedModel whose probabilities are the softmax of each image's first 10 pixels, and its LiteRT file."""
    import tensorflow as tf

    class FirstPixels(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([batch, 28, 28, 1], tf.float32)])
        def serve(self, x):
            return {"probabilities": tf.nn.softmax(tf.reshape(x, [-1, 784])[:, :10])}

    module = FirstPixels()
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})
    converter = tf.lite.TFLiteConverter.from_saved_model(str(folder))
    (folder.parent / f"{folder.name}.tflite").write_bytes(converter.convert())
    return folder, folder.parent / f"{folder.name}.tflite"


def test_a_savedmodel_and_a_litert_file_classify_as_their_graph_computes(tmp_path, monkeypatch):
    from ai_edge_litert import interpreter

    threads, resized, real = [], [], interpreter.Interpreter

    class Counting(real):
        def resize_tensor_input(self, index, shape, *args, **options):
            resized.append(shape[0])
            return super().resize_tensor_input(index, shape, *args, **options)

    def litert(model_path, num_threads):  # LiteRT's threads per inference: the server asks for one
        threads.append(num_threads)
        return Counting(model_path=model_path, num_threads=num_threads)

    monkeypatch.setattr(interpreter, "Interpreter", litert)
    saved, tflite = first_pixels_model(tmp_path / "first")
    x = np.random.default_rng(1).random((5, 28, 28, 1), np.float32) * 4
    logits = x.reshape(5, 784)[:, :10].astype(np.float64)
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    for path, format in ((saved, "saved_model"), (tflite, "litert")):
        model = open_model(str(path), threads=1, trust=True)
        assert (model.format, model.image_shape, model.num_classes, model.fixed_batch) == (format, (28, 28, 1), 10,
                                                                                           None)
        assert model.path == str(path)
        for count in (5, 2, 2, 5):  # LiteRT's input resized to each batch as it comes
            np.testing.assert_allclose(model.predict(x[:count], batch_size=count), expected[:count], atol=1e-6)
        with pytest.raises(UserError, match="is a program that can read and write files"):
            open_model(str(path))
    assert threads == [1] and resized == [5, 2, 5]  # not again for a batch of the size it has
    np.testing.assert_allclose(open_model(str(tflite), trust=True).predict(x), expected, atol=1e-6)  # threads=0
    assert threads == [1, None]  # 0: LiteRT's default


def test_onnxruntime_runs_on_the_cpu_with_the_threads_asked_and_logs_errors_only(tmp_path, monkeypatch):
    """The server runs one thread per request (threads=1), predict onnxruntime's default (0: one per core); its log
    says errors only. Seen in the session's options: the thread count shows nowhere else on a machine of any size."""
    import onnxruntime

    made, real = [], onnxruntime.InferenceSession

    def session(path, options=None, providers=None):
        made.append((options, providers))
        return real(path, options, providers=providers)

    monkeypatch.setattr(onnxruntime, "InferenceSession", session)
    model = tiny_onnx(tmp_path / "m.onnx")
    for threads in (0, 1, 3):
        open_model(str(model), threads=threads)
        options, providers = made[-1]
        assert (options.intra_op_num_threads, options.log_severity_level, providers) == (
            threads, 3, ["CPUExecutionProvider"])


def test_the_class_count_is_the_last_axis_of_a_models_output(tmp_path):
    """An output of (images, 1, 784): 784 classes, the size of its last axis, whatever the axes before it."""
    import onnx
    import tensorflow as tf
    from onnx import TensorProto, helper, numpy_helper

    shape = numpy_helper.from_array(np.array([-1, 1, 784], np.int64), "shape")
    graph = helper.make_graph([helper.make_node("Reshape", ["x", "shape"], ["p"])], "deep",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 28, 28, 1])],
                              [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 1, 784])], [shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "deep.onnx"))
    assert open_model(str(tmp_path / "deep.onnx")).num_classes == 784

    class Deep(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32)])
        def serve(self, x):
            return {"p": tf.reshape(x, [-1, 1, 784])}

    module = Deep()
    tf.saved_model.save(module, str(tmp_path / "deep"), signatures={"serving_default": module.serve})
    assert open_model(str(tmp_path / "deep"), trust=True).num_classes == 784


def test_a_keras_or_litert_models_class_count_is_the_last_axis_of_its_output_too(tmp_path):
    """The same (images, 1, 784) output from a .keras file and from a LiteRT file: 784 classes, not 1."""
    import keras
    import tensorflow as tf

    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Reshape((1, 784))])
    model.save(tmp_path / "deep.keras")
    assert model.output_shape == (None, 1, 784) and open_model(str(tmp_path / "deep.keras")).num_classes == 784
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    (tmp_path / "deep.tflite").write_bytes(converter.convert())
    assert open_model(str(tmp_path / "deep.tflite"), trust=True).num_classes == 784
