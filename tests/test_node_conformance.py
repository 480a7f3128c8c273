"""Every ONNX node conformance case shipped with onnx, run through InferenceSession."""
from __future__ import annotations

import numpy as np
import pytest

import tritort as ort
from tests.conformance import assert_same, case_params, node_cases, to_value
from tests.expected_failures import EXPECTED_FAILURES

CASES = node_cases()


def _check_case(case, providers):
    sess = ort.InferenceSession(case.model.SerializeToString(), providers=providers)
    input_names = [i.name for i in case.model.graph.input]
    output_names = [o.name for o in case.model.graph.output]
    for inputs, outputs in case.data_sets:
        inputs, outputs = to_value(list(inputs)), to_value(list(outputs))
        feed = dict(zip(input_names, inputs))
        got = sess.run(output_names, feed)
        for name, expected, actual in zip(output_names, outputs, got):
            assert_same(expected, actual, case.rtol, case.atol, name)


@pytest.mark.parametrize("name", case_params())
def test_node_case_cpu(name):
    with np.errstate(all="ignore"):
        _check_case(CASES[name], ["CPUExecutionProvider"])


def test_expected_failures_are_real_cases_with_reasons():
    unknown = sorted(set(EXPECTED_FAILURES) - set(CASES))
    assert not unknown, f"expected-failure entries that are not node cases: {unknown}"
    assert all(isinstance(r, str) and len(r) > 10 for r in EXPECTED_FAILURES.values())


def test_all_node_cases_collected():
    assert len(CASES) == 1884
