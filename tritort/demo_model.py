"""A small transformer-style block the demo builds itself (no download, fixed seed)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def build_demo_model(hidden: int = 64, ffn: int = 256, classes: int = 10, seed: int = 0,
                     opset: int = 21) -> onnx.ModelProto:
    """x[batch, seq, hidden] -> LayerNorm -> MatMul+bias -> Gelu -> MatMul+bias -> residual
    -> mean over seq -> Gemm -> Softmax. Dynamic batch and sequence."""
    rng = np.random.default_rng(seed)

    def weight(name, *shape, scale=0.05):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32),
                                       name)

    inits = [
        weight("ln_scale", hidden, scale=1.0), weight("ln_bias", hidden),
        weight("w1", hidden, ffn), weight("b1", ffn), weight("w2", ffn, hidden),
        weight("b2", hidden), weight("w_cls", hidden, classes), weight("b_cls", classes),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "seq_axis"),
    ]
    nodes = [
        helper.make_node("LayerNormalization", ["x", "ln_scale", "ln_bias"], ["ln"],
                         name="layer_norm", axis=-1, epsilon=1e-5),
        helper.make_node("MatMul", ["ln", "w1"], ["h1"], name="ffn_up"),
        helper.make_node("Add", ["h1", "b1"], ["h1b"], name="ffn_up_bias"),
        helper.make_node("Gelu", ["h1b"], ["act"], name="gelu"),
        helper.make_node("MatMul", ["act", "w2"], ["h2"], name="ffn_down"),
        helper.make_node("Add", ["h2", "b2"], ["h2b"], name="ffn_down_bias"),
        helper.make_node("Add", ["x", "h2b"], ["res"], name="residual"),
        helper.make_node("ReduceMean", ["res", "seq_axis"], ["pooled"], name="pool",
                         keepdims=0),
        helper.make_node("Gemm", ["pooled", "w_cls", "b_cls"], ["logits"], name="classifier"),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "tritort_demo",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", hidden])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", classes]),
         helper.make_tensor_value_info("res", TensorProto.FLOAT, ["batch", "seq", hidden])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="tritort-demo")
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model
