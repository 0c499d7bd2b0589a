"""Tiny model files made in a blink, without TensorFlow: for tests of what loading a model does, not of its answers."""
import numpy as np


def tiny_onnx(path, classes=10, seed=0, batch="N", nan=None, channels=1):
    """An ONNX classifier of 28x28 images of `channels` channels (one dense layer, softmax) written to path; returns
    path.
    batch: the input's batch axis, "N" for any number of images or a number for exactly that many.
    nan: "always" (NaN weights: NaN for every image), "for_digits" (NaN when the pixels sum to between 5 and 500, as
    a normalised digit's do, not a blank or a white image's), or None."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    pixels = 784 * channels
    weights = np.random.default_rng(seed).normal(size=(pixels, classes)).astype(np.float32)
    if nan == "always":
        weights[0, 0] = np.nan
    initializers = [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(np.array([-1, pixels], np.int64),
                                                                                 "flat")]
    nodes = [helper.make_node("Reshape", ["x", "flat"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["softmax"], axis=1)]
    if nan == "for_digits":
        initializers += [numpy_helper.from_array(np.array(value, np.float32), name)
                         for name, value in (("low", 5.0), ("high", 500.0), ("nan", np.nan))]
        initializers.append(numpy_helper.from_array(np.array([1], np.int64), "pixels"))
        nodes += [helper.make_node("ReduceSum", ["f", "pixels"], ["sum"], keepdims=1),  # one sum per image
                  helper.make_node("Greater", ["sum", "low"], ["above"]),
                  helper.make_node("Less", ["sum", "high"], ["below"]),
                  helper.make_node("And", ["above", "below"], ["digit"]),
                  helper.make_node("Where", ["digit", "nan", "softmax"], ["p"])]
    else:
        nodes.append(helper.make_node("Identity", ["softmax"], ["p"]))
    images = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 28, 28, channels])
    graph = helper.make_graph(nodes, "tiny", [images],
                              [helper.make_tensor_value_info("p", TensorProto.FLOAT, [batch, classes])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what onnxruntime 1.x reads
    onnx.save(model, str(path))
    return path
