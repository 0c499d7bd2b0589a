"""Tiny model files made in a blink, without TensorFlow: for tests of what loading a model does, not of its answers."""
import numpy as np


def tiny_onnx(path, classes=10, seed=0):
    """An ONNX classifier of 28x28x1 images (one dense layer, softmax) written to path; returns path."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.random.default_rng(seed).normal(size=(784, classes)).astype(np.float32), "w")
    flat = numpy_helper.from_array(np.array([-1, 784], np.int64), "flat")
    nodes = [helper.make_node("Reshape", ["x", "flat"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["p"], axis=1)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 28, 28, 1])],
                              [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", classes])], [weights, flat])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what onnxruntime 1.x reads
    onnx.save(model, str(path))
    return path
