"""Whole models on the Triton provider (interpreter mode): every MatMul, Gemm, Conv and
detected attention runs there, and the outputs match onnxruntime (fp32, rtol 1e-3).

The transformer models are the benchmark's own torch modules at their quick sizes, exported
by torch.onnx (so attention is detected as the exporter writes it); the CNN is the
benchmark's small residual network. Kernel counts are printed for the closing notes
(``pytest -s``).
"""
from __future__ import annotations

import numpy as np
import onnxruntime
import pytest

import tritort as ort
from tests.triton_env import requires_triton
from tritort.contracts import INTERNAL_DOMAIN

pytestmark = requires_triton
T = "TritonExecutionProvider"
COMPUTE_OPS = {("", "MatMul"), ("", "Gemm"), ("", "Conv"), ("", "Attention"),
               (INTERNAL_DOMAIN, "ScaledDotProductAttention"), (INTERNAL_DOMAIN, "Float8MatMul")}
EXPECTED_ATTENTION = {"bert": 2, "gpt2": 2, "vit": 2, "cnn": 0}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    pytest.importorskip("torch")
    from perf import models

    folder = tmp_path_factory.mktemp("models")
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = models.get_model(name, quick=True, cache=str(folder))
        return cache[name]

    return get


@pytest.mark.parametrize("name", ["bert", "gpt2", "vit", "cnn"])
def test_model_compute_runs_on_triton(built, name):
    model = built(name)
    so = ort.SessionOptions()
    so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    sess = ort.InferenceSession(str(model.path), so, providers=[T, "CPUExecutionProvider"])
    assignments = sess._program.partition.assignments.values()
    compute = [a for a in assignments if (a.node.domain, a.node.op_type) in COMPUTE_OPS]
    on_cpu = [(a.node.op_type, a.node.name, a.declined) for a in compute
              if a.provider.name != T]
    assert not on_cpu, on_cpu
    attention = [a for a in compute if a.node.op_type == "ScaledDotProductAttention"]
    assert len(attention) == EXPECTED_ATTENTION[name]
    kernels = [u for u in sess.get_provider_graph_assignment_info() if u.ep_name == T]
    # every bias / residual Add after a GEMM is computed in the GEMM's kernel
    unit_of = {n.name: i for i, u in enumerate(kernels) for n in u.get_nodes()}
    producer = {o: a.node for a in assignments for o in a.node.outputs}
    for a in assignments:
        made_by = producer.get(a.node.inputs[0]) if a.node.inputs else None
        if a.node.op_type == "Add" and made_by is not None and \
                made_by.op_type in ("MatMul", "Gemm", "Conv"):
            assert unit_of.get(a.node.name) == unit_of[made_by.name], (a.node.name, made_by.name)
    cpu_nodes = [a.node.op_type for a in assignments if a.provider.name != T]
    print(f"\n{name}: {len(sess._program.graph.nodes)} nodes after optimization, "
          f"{len(kernels)} Triton kernels, CPU nodes: {cpu_nodes}")

    want = onnxruntime.InferenceSession(str(model.path), providers=[
        "CPUExecutionProvider"]).run(None, model.feeds)
    got = sess.run(None, model.feeds)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-3, atol=1e-4)
