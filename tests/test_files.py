"""Atomic, byte-deterministic outputs (files.py, model_files.py) and one-line errors for unreadable files."""
import datetime
import hashlib
import os
import re
import time

import numpy as np
import pytest

from mnist_cnn.errors import UserError
from mnist_cnn.files import atomic_path, load_npz, read_arrays, write_npz


def md5(path):
    return hashlib.md5(open(path, "rb").read()).hexdigest()


@pytest.fixture
def clock_ahead(monkeypatch):
    """Call it to move the clock 3 days and 7 s ahead: a file written before and one written after
    must not differ by their time stamps (zip stores them with 2 s resolution). Both clocks move: time.time
    (zipfile's) and datetime.now (Keras stamps a model's metadata with it, to the second)."""
    def move():
        shift = 3 * 86400 + 7
        ahead = time.time() + shift

        class Later(datetime.datetime):
            @classmethod
            def now(cls, tz=None):
                return real.now(tz) + datetime.timedelta(seconds=shift)

        real = datetime.datetime
        monkeypatch.setattr(time, "time", lambda: ahead)
        monkeypatch.setattr(datetime, "datetime", Later)  # modules that `import datetime` see it at their next call
    return move


def test_atomic_path_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "result.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("crash in the middle")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["result.json"]


def test_write_npz_is_byte_deterministic_across_time_and_loadable(tmp_path, clock_ahead):
    arrays = {"x": np.arange(12, dtype=np.float32).reshape(3, 4), "names": np.array(["a", "b"])}
    write_npz(tmp_path / "a.npz", arrays)
    clock_ahead()
    write_npz(tmp_path / "b.npz", {k: v.copy() for k, v in arrays.items()})
    assert md5(tmp_path / "a.npz") == md5(tmp_path / "b.npz")
    loaded = load_npz(tmp_path / "b.npz")
    np.testing.assert_array_equal(loaded["x"], arrays["x"])
    assert loaded["names"].tolist() == ["a", "b"]


def test_saved_model_is_byte_deterministic_across_time(tmp_path, clock_ahead):
    import keras

    from mnist_cnn.model_files import save_model
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, kernel_initializer="ones")])
    save_model(model, tmp_path / "a.keras")
    clock_ahead()
    save_model(model, tmp_path / "b.keras")
    assert md5(tmp_path / "a.keras") == md5(tmp_path / "b.keras")
    # an equal model built again lies at other memory addresses, which Keras writes in its config
    def build():
        layers = [keras.Input((4,), name="x"), keras.layers.Dense(2, kernel_initializer="ones", name="d")]
        return keras.Sequential(layers, name="model")
    save_model(build(), tmp_path / "c.keras")
    save_model(build(), tmp_path / "d.keras")
    assert md5(tmp_path / "c.keras") == md5(tmp_path / "d.keras")


def test_shared_object_ids_are_renumbered_in_order_of_appearance_and_nothing_else_changes():
    from mnist_cnn.model_files import renumber_shared_objects
    config = {"a": {"shared_object_id": 140_711, "name": "dense", "units": 3},
              "b": [{"shared_object_id": 140_955}, [{"shared_object_id": 140_711}], "text", 7],
              "shared_object_id": 139_001}
    assert renumber_shared_objects(config, {}) == {
        "a": {"shared_object_id": 0, "name": "dense", "units": 3},
        "b": [{"shared_object_id": 1}, [{"shared_object_id": 0}], "text", 7],
        "shared_object_id": 2}


def test_a_saved_model_drops_its_save_time_and_keeps_keras_own_config(tmp_path):
    import json
    import zipfile

    import keras

    from mnist_cnn.model_files import load_model, renumber_shared_objects, save_model
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, kernel_initializer="ones")])
    save_model(model, tmp_path / "ours.keras")
    model.save(tmp_path / "keras.keras")
    with zipfile.ZipFile(tmp_path / "ours.keras") as ours, zipfile.ZipFile(tmp_path / "keras.keras") as theirs:
        assert ours.namelist() == theirs.namelist()
        metadata = json.loads(theirs.read("metadata.json"))
        del metadata["date_saved"]
        assert json.loads(ours.read("metadata.json")) == metadata
        config, keras_config = json.loads(ours.read("config.json")), json.loads(theirs.read("config.json"))
        assert config == renumber_shared_objects(keras_config, {}) and config != keras_config  # Keras' has an address
        assert ours.read("model.weights.h5") != b""
    np.testing.assert_array_equal(load_model(tmp_path / "ours.keras").predict(np.ones((1, 4)), verbose=0), [[4, 4]])


def test_load_npz_explains_missing_and_broken_files(tmp_path):
    with pytest.raises(UserError, match="not found: run `dvc repro`"):
        load_npz(tmp_path / "none.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="is not a readable .npz file"):
        load_npz(tmp_path / "bad.npz")


def test_read_arrays_takes_npy_and_npz_and_refuses_pickles(tmp_path):
    np.save(tmp_path / "one.npy", np.arange(3))
    assert list(read_arrays(tmp_path / "one.npy")) == [None]
    np.savez(tmp_path / "two.npz", a=np.zeros(2), b=np.ones(2))
    assert list(read_arrays(tmp_path / "two.npz", names=("b",))) == ["b"]
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="pickle"):
        read_arrays(tmp_path / "objects.npy")


def test_load_model_explains_a_missing_file_and_one_that_is_not_a_keras_model(tmp_path):
    from mnist_cnn.model_files import load_model
    with pytest.raises(UserError) as error:
        load_model(str(tmp_path / "model.keras"))
    assert str(error.value) == f"{tmp_path / 'model.keras'} not found: run `dvc repro` to train the model"
    (tmp_path / "model.keras").write_bytes(b"not a zip file")
    with pytest.raises(UserError) as error:
        load_model(str(tmp_path / "model.keras"))
    assert re.fullmatch(rf"{re.escape(str(tmp_path))}/model.keras is not a Keras model \([^\n]+\): "
                        r"run `dvc repro --force train` to rebuild it", str(error.value)), str(error.value)
    import keras
    lambda_model = keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda x: 2 * x)])
    lambda_model.save(tmp_path / "lambda.keras")  # code safe mode won't run: a TypeError inside Keras
    with pytest.raises(UserError, match=r"lambda.keras is not a Keras model \(.*(safe|unsafe).*\): run `dvc repro"):
        load_model(str(tmp_path / "lambda.keras"))


def test_load_model_names_an_error_without_words_by_its_type(tmp_path, monkeypatch):
    import keras

    from mnist_cnn.model_files import load_model

    def wordless(*args, **kwargs):
        raise KeyError

    (tmp_path / "m.keras").write_bytes(b"PK")
    monkeypatch.setattr(keras.saving, "load_model", wordless)
    with pytest.raises(UserError) as error:
        load_model(str(tmp_path / "m.keras"))
    assert str(error.value) == (f"{tmp_path / 'm.keras'} is not a Keras model (KeyError): run `dvc repro --force "
                                f"train` to rebuild it")


@pytest.mark.parametrize("shape, taken", [((None, 28, 28, 1), (28, 28, 1)), ([None, 32, 20, 3], (32, 20, 3)),
                                          ((None, 1, 5, 1), (1, 5, 1)),
                                          ((None, 784), None), ((None, 28, 28, 2), None), ((None, 28, 28), None),
                                          ((None, 0, 28, 1), None), ((None, None, 28, 1), None),
                                          ((None, 28, 28.0, 1), None), ("images", None)])
def test_image_shape_takes_images_of_one_or_three_channels_only(shape, taken):
    from mnist_cnn.model_files import image_shape
    if taken is not None:
        assert image_shape("m.onnx", shape) == taken
        return
    for stage, verb in (("train", "trained"), ("export", "exported")):
        with pytest.raises(UserError) as error:
            image_shape("m.onnx", shape, stage)
        assert str(error.value) == (f"m.onnx takes inputs of shape {tuple(shape) if isinstance(shape, list) else shape}"
                                    f", not images of (height, width, 1 or 3): it is not a model this pipeline {verb}; "
                                    f"run `dvc repro --force {stage}`")
    with pytest.raises(UserError, match="trained; run `dvc repro --force train`$"):
        image_shape("m.onnx", shape)  # train's by default


def test_check_fits_compares_the_image_shape_and_the_classes():
    from types import SimpleNamespace

    from mnist_cnn.model_files import check_fits
    model = SimpleNamespace(input_shape=(None, 28, 28, 1), output_shape=(None, 3))
    split = SimpleNamespace(folder="data/test", image_shape=(28, 28, 1), class_names=("a", "b", "c"))
    check_fits(model, "m.keras", split)
    for other, output in ((SimpleNamespace(**{**vars(split), "class_names": ("a", "b")}), (None, 3)),
                          (SimpleNamespace(**{**vars(split), "image_shape": (28, 28, 3)}), (None, 3)),
                          (split, (None, 28, 3))):  # 3 classes in its last place, but a row per image row
        with pytest.raises(UserError) as error:
            check_fits(SimpleNamespace(input_shape=model.input_shape, output_shape=output), "m.keras", other)
        assert str(error.value) == (f"m.keras does not fit data/test (model (None, 28, 28, 1) -> {output}, data "
                                    f"{other.image_shape} with {len(other.class_names)} classes): run `dvc repro` to "
                                    f"retrain")
    with pytest.raises(UserError, match=r"^m.keras takes inputs of shape \(None, 784\), not images"):
        check_fits(SimpleNamespace(input_shape=(None, 784), output_shape=(None, 3)), "m.keras", split)


def test_an_npz_is_stored_members_of_fixed_date_and_mode_holding_contiguous_arrays(tmp_path):
    import zipfile

    from mnist_cnn.files import fixed_zip_member
    member = fixed_zip_member("a.npy")
    assert (member.filename, member.date_time, member.compress_type, member.external_attr) == (
        "a.npy", (1980, 1, 1, 0, 0, 0), zipfile.ZIP_STORED, 0o644 << 16)
    assert fixed_zip_member("b", zipfile.ZIP_DEFLATED).compress_type == zipfile.ZIP_DEFLATED
    strided = np.arange(24, dtype=np.int16).reshape(4, 6)[:, ::2]  # not contiguous: written as its values
    write_npz(tmp_path / "a.npz", {"x": strided, "y": np.array([1.5])})
    with zipfile.ZipFile(tmp_path / "a.npz") as archive:
        infos = archive.infolist()
    assert [(i.filename, i.date_time, i.compress_type, i.external_attr >> 16) for i in infos] == [
        ("x.npy", (1980, 1, 1, 0, 0, 0), zipfile.ZIP_STORED, 0o644), ("y.npy", (1980, 1, 1, 0, 0, 0), 0, 0o644)]
    assert read_arrays(tmp_path / "a.npz")["x"].tolist() == strided.tolist()
    with pytest.raises(ValueError):
        write_npz(tmp_path / "objects.npz", {"x": np.array([{"a": 1}], dtype=object)})  # no pickles written
    assert not (tmp_path / "objects.npz").exists()


def test_npz_members_carry_zip64_sizes_so_an_array_may_outgrow_4_gib(tmp_path):
    """A member's size is unknown when its header is written: without zip64's 8-byte fields (tag 1, 16 bytes, needing
    zip version 4.5) that header has room for 4 GiB at most, and zipfile refuses to write a member past 2 GiB."""
    import struct

    write_npz(tmp_path / "a.npz", {"x": np.arange(3)})
    data = (tmp_path / "a.npz").read_bytes()
    version, = struct.unpack("<H", data[4:6])
    name_length, extra_length = struct.unpack("<HH", data[26:30])
    assert data[:4] == b"PK\x03\x04" and data[30:30 + name_length] == b"x.npy"
    extra = data[30 + name_length:30 + name_length + extra_length]
    assert (version, struct.unpack("<HH", extra[:4])) == (45, (1, 16))


def test_an_error_without_words_is_named_by_its_type(tmp_path, monkeypatch):
    """zipfile raises a bare EOFError for a member cut short: the reason is then the error's name."""
    def cut_short(stream):
        raise EOFError

    write_npz(tmp_path / "a.npz", {"x": np.arange(3)})
    monkeypatch.setattr(np.lib.format, "read_magic", cut_short)
    from mnist_cnn.files import array_shapes
    for read in (array_shapes, read_arrays):
        with pytest.raises(ValueError) as error:
            read(tmp_path / "a.npz")
        assert str(error.value) == "EOFError"
    with pytest.raises(UserError) as error:
        load_npz(tmp_path / "a.npz")
    assert str(error.value) == (f"{tmp_path / 'a.npz'} is not a readable .npz file (EOFError): delete it and run "
                                f"`dvc repro`")


def test_write_json_refuses_nan_and_infinity_and_leaves_the_old_file(tmp_path):
    """JSON has no NaN or Infinity (Python's json writes them, JSON parsers refuse them): a metric that is NaN is an
    error, and the previous file stays."""
    from mnist_cnn.files import write_json
    (tmp_path / "m.json").write_text("old")
    for value in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
            write_json(tmp_path / "m.json", {"loss": [1.0, value]})
        assert (tmp_path / "m.json").read_text() == "old"
    assert os.listdir(tmp_path) == ["m.json"]


def test_array_headers_are_read_alone_and_a_header_claiming_more_than_the_file_holds_is_refused(tmp_path):
    import io
    import zipfile

    from mnist_cnn.files import array_shapes, check_array_header
    write_npz(tmp_path / "a.npz", {"x": np.zeros((3, 4), np.uint8), "names": np.array(["a", "bc"])})
    assert array_shapes(tmp_path / "a.npz") == {"x": ((3, 4), np.dtype(np.uint8)), "names": ((2,), np.dtype("<U2"))}
    for version in ((1, 0), (2, 0)):
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, np.zeros((2, 3), np.float32), version=version)
        buffer.seek(0)
        assert check_array_header(buffer, len(buffer.getvalue()), "v.npy") == ((2, 3), np.dtype(np.float32))
        buffer.seek(0)
        with pytest.raises(ValueError) as error:
            check_array_header(buffer, len(buffer.getvalue()) - 1, "v.npy")
        assert str(error.value) == "v.npy claims shape (2, 3) of float32 (24 bytes) but holds 23 bytes"
        buffer.seek(0)
        with pytest.raises(ValueError, match=r"^v.npy claims shape \(2, 3\) of float32 \(24 bytes\) but holds 0 "):
            check_array_header(buffer, 10, "v.npy")  # less than the header itself: none left for the data
    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as archive:
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"shape": (10**6, 10**6), "fortran_order": False,
                                                      "descr": "<f8"})
        archive.writestr("x.npy", header.getvalue() + b"\0" * 64)
    for read in (array_shapes, read_arrays):
        with pytest.raises(ValueError) as error:
            read(tmp_path / "huge.npz")
        assert str(error.value) == "x.npy claims shape (1000000, 1000000) of float64 (8,000,000,000,000 bytes) but " \
                                   "holds 64 bytes"
    with zipfile.ZipFile(tmp_path / "bare.npz", "w") as archive:  # a member named without .npy, asked for by name
        archive.writestr("x", header.getvalue() + b"\0" * 64)
    with pytest.raises(ValueError) as error:
        read_arrays(tmp_path / "bare.npz", names=("x",))
    assert str(error.value) == ("x claims shape (1000000, 1000000) of float64 (8,000,000,000,000 bytes) but holds "
                                "64 bytes")
    (tmp_path / "not.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="^File is not a zip file$"):
        array_shapes(tmp_path / "not.npz")


def npy_header(shape, descr, length):
    """The bytes of a version 1.0 .npy header whose text (dict, padding, newline) is `length` bytes long."""
    import struct

    text = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", length) + (text + " " * (length - len(text) - 1) + "\n").encode()


def test_a_header_past_10000_bytes_and_a_shape_past_int64_are_refused(tmp_path):
    """NumPy's limit of 10,000 bytes of header text is kept; the bytes a shape claims are counted in Python's
    integers, where int64 would wrap 2**32 * 2**32 to 0 and take a shape of 2**64 bytes for an empty one."""
    import io

    from mnist_cnn.files import check_array_header
    for length in (10000, 10001):
        header = npy_header((2,), "<f4", length)
        stream = io.BytesIO(header + bytes(8))
        if length == 10000:
            assert check_array_header(stream, len(header) + 8, "h.npy") == ((2,), np.dtype(np.float32))
        else:
            with pytest.raises(ValueError, match=r"^Header info length \(10001\) is large"):
                check_array_header(stream, len(header) + 8, "h.npy")
    header = npy_header((2**32, 2**32), "|u1", 128)
    with pytest.raises(ValueError) as error:
        check_array_header(io.BytesIO(header + bytes(64)), len(header) + 64, "w.npy")
    assert str(error.value) == ("w.npy claims shape (4294967296, 4294967296) of uint8 (18,446,744,073,709,551,616 "
                                "bytes) but holds 64 bytes")


def test_read_arrays_takes_the_names_asked_for_and_an_npy_alone(tmp_path):
    write_npz(tmp_path / "a.npz", {"x": np.arange(3), "y": np.arange(2), "z": np.zeros(1)})
    assert {k: v.tolist() for k, v in read_arrays(tmp_path / "a.npz", ("y", "z")).items()} == {"y": [0, 1], "z": [0]}
    assert list(read_arrays(tmp_path / "a.npz")) == ["x", "y", "z"]
    np.save(tmp_path / "b.npy", np.arange(4))
    assert {k: v.tolist() for k, v in read_arrays(tmp_path / "b.npy").items()} == {None: [0, 1, 2, 3]}
    np.save(tmp_path / "cut.npy", np.arange(1000))
    (tmp_path / "cut.npy").write_bytes((tmp_path / "cut.npy").read_bytes()[:200])
    with pytest.raises(ValueError, match=r"^cut.npy claims shape \(1000,\) of int64 \(8,000 bytes\) but holds 72 "):
        read_arrays(tmp_path / "cut.npy")


def test_load_npz_and_write_json_in_their_exact_words(tmp_path):
    import json

    from mnist_cnn.files import write_json
    with pytest.raises(UserError) as error:
        load_npz(tmp_path / "x.npz")
    assert str(error.value) == f"{tmp_path / 'x.npz'} not found: run `dvc repro` to create it"
    (tmp_path / "x.npz").write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(UserError) as error:
        load_npz(tmp_path / "x.npz", "dvc repro download")
    assert str(error.value) == (f"{tmp_path / 'x.npz'} is not a readable .npz file (File is not a zip file): delete it "
                                f"and run `dvc repro download`")
    write_json(tmp_path / "m.json", {"accuracy": 0.5, "names": ["a"]})
    assert (tmp_path / "m.json").read_text() == '{\n  "accuracy": 0.5,\n  "names": [\n    "a"\n  ]\n}\n'
    assert json.loads((tmp_path / "m.json").read_text()) == {"accuracy": 0.5, "names": ["a"]}
