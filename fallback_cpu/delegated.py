"""The long tail: ops whose kernel is onnx.reference's op class, not code written here.

Every delegated op is named in DELEGATED, with why it is not hand-written. An op with a
hand-written kernel is never delegated (a test checks the two sets are disjoint). Ops that
are neither (MaxRoiPool, training's Gradient) fail at session creation with NotImplemented.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import onnx
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun
from onnx.reference.ops import aionnx_preview, aionnx_preview_training, aionnxml
from onnx.reference.ops import load_op as _load_onnx_op

from tritort.errors import Fail

from .registry import REGISTRY, NodeContext, normalize_domain

# (domain, op_type) -> why the op runs on onnx.reference.
_CLASSICAL_ML = ("classical-ML (scikit-learn converter) op, not on a neural-network hot "
                 "path")

DELEGATED: dict[tuple[str, str], str] = {
    ("", "ImageDecoder"): "decodes JPEG/PNG/WebP/TIFF/JPEG2000 through Pillow's codecs",
    ("", "TfIdfVectorizer"): "n-gram text featurizer of classical ML pipelines; rare",
    ("ai.onnx.preview", "FlexAttention"): "preview-domain op whose score/mask hooks are "
                                          "subgraphs; its spec is not yet stable",
    ("ai.onnx.ml", "DictVectorizer"): _CLASSICAL_ML,
    ("ai.onnx.ml", "FeatureVectorizer"): _CLASSICAL_ML,
    ("ai.onnx.ml", "Imputer"): _CLASSICAL_ML,
    ("ai.onnx.ml", "LinearClassifier"): _CLASSICAL_ML,
    ("ai.onnx.ml", "LinearRegressor"): _CLASSICAL_ML,
    ("ai.onnx.ml", "Normalizer"): _CLASSICAL_ML,
    ("ai.onnx.ml", "OneHotEncoder"): _CLASSICAL_ML,
    ("ai.onnx.ml", "SVMClassifier"): _CLASSICAL_ML,
    ("ai.onnx.ml", "SVMRegressor"): _CLASSICAL_ML,
    ("ai.onnx.ml", "Scaler"): _CLASSICAL_ML,
    ("ai.onnx.ml", "TreeEnsembleClassifier"): _CLASSICAL_ML,
    ("ai.onnx.ml", "TreeEnsembleRegressor"): _CLASSICAL_ML,
}


_LOADERS = {
    "": _load_onnx_op,
    "ai.onnx.ml": aionnxml.load_op,
    "ai.onnx.preview": aionnx_preview.load_op,
    "ai.onnx.preview.training": aionnx_preview_training.load_op,
}


def _check_tree_ensemble(ctx: NodeContext) -> None:
    """onnx.reference walks each tree until a LEAF: node links that loop would never end."""
    from .ml import check_tree_links

    a = ctx.attrs
    trees, ids = a.get("nodes_treeids") or [], a.get("nodes_nodeids") or []
    modes = a.get("nodes_modes") or []
    true_ids, false_ids = a.get("nodes_truenodeids") or [], a.get("nodes_falsenodeids") or []
    index = {(t, n): i for i, (t, n) in enumerate(zip(trees, ids))}
    children = []
    for i, (t, mode) in enumerate(zip(trees, modes)):
        kids = []
        if mode != "LEAF":
            for child in (true_ids[i] if i < len(true_ids) else None,
                          false_ids[i] if i < len(false_ids) else None):
                if (t, child) not in index:
                    raise Fail(f"{ctx.op_type} node '{ctx.name}': branch {i} (tree {t}, node "
                               f"{ids[i] if i < len(ids) else '?'}) links to node id {child}, "
                               f"which tree {t} does not have")
                kids.append(index[(t, child)])
        children.append(kids)
    check_tree_links(f"{ctx.op_type} node '{ctx.name}'", children, [])


# ops whose attributes onnx.reference trusts: checked once, when the kernel is built
VALIDATORS = {
    ("ai.onnx.ml", "TreeEnsembleClassifier"): _check_tree_ensemble,
    ("ai.onnx.ml", "TreeEnsembleRegressor"): _check_tree_ensemble,
}


def _reference_factory(ctx: NodeContext):
    validator = VALIDATORS.get((ctx.domain, ctx.op_type))
    if validator is not None:
        validator(ctx)
    cls = _LOADERS[ctx.domain](ctx.domain, ctx.op_type, ctx.since_version)
    run_params = {"log": lambda *a: None, "opsets": dict(ctx.opsets), "verbose": 0,
                  "new_ops": None, "existing_functions": {},
                  # graph attributes of a delegated op are evaluated by onnx.reference too
                  "evaluator_cls": ReferenceEvaluator}
    op: OpRun = cls(ctx.proto, run_params)

    def run(*inputs: Any) -> tuple:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = op.run(*inputs)
        if not isinstance(res, tuple):
            res = (res,)
        return tuple(np.asarray(r) if isinstance(r, (np.generic, float, int)) else r
                     for r in res)

    return run


def _since_versions() -> dict[tuple[str, str], list[int]]:
    versions: dict[tuple[str, str], set[int]] = {}
    for schema in onnx.defs.get_all_schemas_with_history():
        key = (normalize_domain(schema.domain), schema.name)
        versions.setdefault(key, set()).add(schema.since_version)
    return {k: sorted(v) for k, v in versions.items()}


def install(ops: dict[tuple[str, str], str] = DELEGATED) -> None:
    """Register the delegated ops."""
    versions = _since_versions()
    for domain, op_type in ops:
        for since in versions.get((normalize_domain(domain), op_type), [1]):
            REGISTRY.add(domain, op_type, since, _reference_factory)
