"""The ONNX node cases with the Triton provider first, in Triton's interpreter on the CPU."""
from __future__ import annotations


import numpy as np
import pytest

from tests.conformance import case_params, node_cases
from tests.expected_failures import TRITON_EXPECTED_FAILURES
from tests.test_node_conformance import _check_case
from tests.triton_env import requires_triton

pytestmark = requires_triton

CASES = node_cases()
PROVIDERS = ["TritonExecutionProvider", "CPUExecutionProvider"]


@pytest.mark.parametrize("name", case_params(TRITON_EXPECTED_FAILURES))
def test_node_case_triton_first(name):
    with np.errstate(all="ignore"):
        _check_case(CASES[name], PROVIDERS)
