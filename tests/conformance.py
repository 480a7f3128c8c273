"""The ONNX node conformance cases shipped with the onnx package, and how to compare them."""
from __future__ import annotations

import functools
import warnings

import numpy as np


@functools.lru_cache(maxsize=1)
def node_cases():
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {c.name: c for c in collect_testcases()}


def to_value(x):
    """Case data as runtime values: TensorProto and friends become numpy (ml_dtypes) arrays."""
    import onnx
    from onnx import numpy_helper

    if isinstance(x, onnx.TensorProto):
        return numpy_helper.to_array(x)
    if isinstance(x, (onnx.SequenceProto, onnx.OptionalProto, onnx.MapProto)):
        return to_value(numpy_helper.to_optional(x) if isinstance(x, onnx.OptionalProto)
                        else numpy_helper.to_list(x) if isinstance(x, onnx.SequenceProto)
                        else numpy_helper.to_dict(x))
    if isinstance(x, list):
        return [to_value(v) for v in x]
    if isinstance(x, dict):
        return {k: to_value(v) for k, v in x.items()}
    return x


def case_params(extra_failures: dict[str, str] | None = None):
    """pytest params for every node case; listed expected failures (plus ``extra_failures``)
    are strict xfails (a case that starts passing must leave the list), random ones
    excepted."""
    import pytest

    from tests.expected_failures import EXPECTED_FAILURES

    failures = {**EXPECTED_FAILURES, **(extra_failures or {})}
    for name in sorted(node_cases()):
        reason = failures.get(name)
        marks = [pytest.mark.xfail(reason=reason, strict="bernoulli" not in name)] if reason else []
        yield pytest.param(name, marks=marks, id=name)


def case_ops(case) -> set[str]:
    return {n.op_type for n in case.model.graph.node}


def assert_same(expected, actual, rtol: float, atol: float, where: str = "output") -> None:
    """Compare a reference value with a computed one: tensors, sequences, optionals, maps."""
    if expected is None:
        assert actual is None, f"{where}: expected None, got {type(actual).__name__}"
        return
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and expected.keys() == actual.keys(), where
        for k in expected:
            assert_same(expected[k], actual[k], rtol, atol, f"{where}[{k!r}]")
        return
    if isinstance(expected, list):
        assert isinstance(actual, list), f"{where}: expected a sequence, got {type(actual).__name__}"
        assert len(expected) == len(actual), f"{where}: length {len(actual)} != {len(expected)}"
        for i, (e, a) in enumerate(zip(expected, actual)):
            assert_same(e, a, rtol, atol, f"{where}[{i}]")
        return
    expected = np.asarray(expected)
    assert isinstance(actual, np.ndarray), f"{where}: expected an array, got {type(actual).__name__}"
    assert expected.shape == actual.shape, f"{where}: shape {actual.shape} != {expected.shape}"
    if expected.dtype == object or expected.dtype.kind in "US":
        assert expected.tolist() == actual.tolist(), f"{where}: strings differ"
        return
    assert expected.dtype == actual.dtype, f"{where}: dtype {actual.dtype} != {expected.dtype}"
    if expected.dtype.kind in "biu" or expected.dtype == np.bool_:
        np.testing.assert_array_equal(actual, expected, err_msg=where)
        return
    np.testing.assert_allclose(actual.astype(np.float64), expected.astype(np.float64),
                               rtol=rtol, atol=atol, err_msg=where, equal_nan=True)
