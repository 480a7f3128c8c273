"""The NumPy provider's registry: version coverage and the delegation list."""
from __future__ import annotations

import onnx

from tritort import fallback_cpu
from tritort.fallback_cpu.delegated import DELEGATED, _reference_factory
from tritort.fallback_cpu.registry import REGISTRY, normalize_domain


def _rows():
    return REGISTRY._rows


def test_delegated_ops_have_no_hand_written_kernel():
    for key in DELEGATED:
        rows = _rows()[(normalize_domain(key[0]), key[1])]
        assert all(f is _reference_factory for _, f in rows), key


def test_hand_written_ops_are_not_delegated_anywhere():
    delegated = {(normalize_domain(d), op) for d, op in DELEGATED}
    for key, rows in _rows().items():
        if key not in delegated:
            assert all(f is not _reference_factory for _, f in rows), key


def test_every_schema_version_finds_a_kernel():
    """Each (op, since_version) in onnx's schemas resolves, except the named gaps."""
    gaps = {("", "MaxRoiPool"), ("ai.onnx.preview.training", "Gradient")}
    missing = []
    for schema in onnx.defs.get_all_schemas_with_history():
        key = (normalize_domain(schema.domain), schema.name)
        if key in gaps:
            continue
        if REGISTRY.lookup(key[0], key[1], schema.since_version) is None:
            missing.append((key, schema.since_version))
    assert not missing, missing[:20]


def test_lookup_picks_newest_version_not_above_opset():
    since, _ = REGISTRY.lookup("", "Softmax", 12)
    assert since == 11
    since, _ = REGISTRY.lookup("ai.onnx", "Softmax", 28)
    assert since == 13
    assert REGISTRY.lookup("", "NoSuchOp", 20) is None
    assert fallback_cpu.REGISTRY is REGISTRY
