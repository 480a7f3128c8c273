"""The long tail: ops whose kernel is onnx.reference's op class, not code written here.

Every delegated op is named in DELEGATED, with one line on why it is not hand-written.
An op that also has a hand-written kernel is never delegated (tests check the two
sets are disjoint).
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

from .registry import REGISTRY, NodeContext, normalize_domain

# (domain, op_type) -> reason. Filled in as the hand-written families land.
DELEGATED: dict[tuple[str, str], str] = {
    ('', 'Abs'): "pending",
    ('', 'Acos'): "pending",
    ('', 'Acosh'): "pending",
    ('', 'Add'): "pending",
    ('', 'AffineGrid'): "pending",
    ('', 'And'): "pending",
    ('', 'ArgMax'): "pending",
    ('', 'ArgMin'): "pending",
    ('', 'Asin'): "pending",
    ('', 'Asinh'): "pending",
    ('', 'Atan'): "pending",
    ('', 'Atanh'): "pending",
    ('', 'Attention'): "pending",
    ('', 'AveragePool'): "pending",
    ('', 'BatchNormalization'): "pending",
    ('', 'Bernoulli'): "pending",
    ('', 'BitCast'): "pending",
    ('', 'BitShift'): "pending",
    ('', 'BitwiseAnd'): "pending",
    ('', 'BitwiseNot'): "pending",
    ('', 'BitwiseOr'): "pending",
    ('', 'BitwiseXor'): "pending",
    ('', 'BlackmanWindow'): "pending",
    ('', 'Cast'): "pending",
    ('', 'CastLike'): "pending",
    ('', 'CausalConvWithState'): "pending",
    ('', 'Ceil'): "pending",
    ('', 'Celu'): "pending",
    ('', 'CenterCropPad'): "pending",
    ('', 'Clip'): "pending",
    ('', 'Col2Im'): "pending",
    ('', 'Compress'): "pending",
    ('', 'Concat'): "pending",
    ('', 'Constant'): "pending",
    ('', 'ConstantOfShape'): "pending",
    ('', 'Conv'): "pending",
    ('', 'ConvInteger'): "pending",
    ('', 'ConvTranspose'): "pending",
    ('', 'Cos'): "pending",
    ('', 'Cosh'): "pending",
    ('', 'CumProd'): "pending",
    ('', 'CumSum'): "pending",
    ('', 'DFT'): "pending",
    ('', 'DeformConv'): "pending",
    ('', 'DepthToSpace'): "pending",
    ('', 'DequantizeLinear'): "pending",
    ('', 'Det'): "pending",
    ('', 'Div'): "pending",
    ('', 'Dropout'): "pending",
    ('', 'DynamicQuantizeLinear'): "pending",
    ('', 'Einsum'): "pending",
    ('', 'Elu'): "pending",
    ('', 'Equal'): "pending",
    ('', 'Erf'): "pending",
    ('', 'Exp'): "pending",
    ('', 'Expand'): "pending",
    ('', 'EyeLike'): "pending",
    ('', 'Flatten'): "pending",
    ('', 'Floor'): "pending",
    ('', 'GRU'): "pending",
    ('', 'Gather'): "pending",
    ('', 'GatherElements'): "pending",
    ('', 'GatherND'): "pending",
    ('', 'Gelu'): "pending",
    ('', 'Gemm'): "pending",
    ('', 'GlobalAveragePool'): "pending",
    ('', 'GlobalMaxPool'): "pending",
    ('', 'Greater'): "pending",
    ('', 'GreaterOrEqual'): "pending",
    ('', 'GridSample'): "pending",
    ('', 'GroupNormalization'): "pending",
    ('', 'HammingWindow'): "pending",
    ('', 'HannWindow'): "pending",
    ('', 'HardSigmoid'): "pending",
    ('', 'HardSwish'): "pending",
    ('', 'Hardmax'): "pending",
    ('', 'Identity'): "pending",
    ('', 'If'): "pending",
    ('', 'ImageDecoder'): "pending",
    ('', 'InstanceNormalization'): "pending",
    ('', 'IsInf'): "pending",
    ('', 'IsNaN'): "pending",
    ('', 'LRN'): "pending",
    ('', 'LSTM'): "pending",
    ('', 'LayerNormalization'): "pending",
    ('', 'LeakyRelu'): "pending",
    ('', 'Less'): "pending",
    ('', 'LessOrEqual'): "pending",
    ('', 'LinearAttention'): "pending",
    ('', 'Log'): "pending",
    ('', 'LogSoftmax'): "pending",
    ('', 'Loop'): "pending",
    ('', 'LpNormalization'): "pending",
    ('', 'LpPool'): "pending",
    ('', 'MatMul'): "pending",
    ('', 'MatMulInteger'): "pending",
    ('', 'Max'): "pending",
    ('', 'MaxPool'): "pending",
    ('', 'MaxUnpool'): "pending",
    ('', 'Mean'): "pending",
    ('', 'MeanVarianceNormalization'): "pending",
    ('', 'MelWeightMatrix'): "pending",
    ('', 'Min'): "pending",
    ('', 'Mish'): "pending",
    ('', 'Mod'): "pending",
    ('', 'Mul'): "pending",
    ('', 'Neg'): "pending",
    ('', 'NegativeLogLikelihoodLoss'): "pending",
    ('', 'NonMaxSuppression'): "pending",
    ('', 'NonZero'): "pending",
    ('', 'Not'): "pending",
    ('', 'OneHot'): "pending",
    ('', 'OptionalGetElement'): "pending",
    ('', 'OptionalHasElement'): "pending",
    ('', 'Or'): "pending",
    ('', 'PRelu'): "pending",
    ('', 'Pad'): "pending",
    ('', 'Pow'): "pending",
    ('', 'QLinearConv'): "pending",
    ('', 'QLinearMatMul'): "pending",
    ('', 'QuantizeLinear'): "pending",
    ('', 'RMSNormalization'): "pending",
    ('', 'RNN'): "pending",
    ('', 'RandomUniformLike'): "pending",
    ('', 'Range'): "pending",
    ('', 'Reciprocal'): "pending",
    ('', 'ReduceL1'): "pending",
    ('', 'ReduceL2'): "pending",
    ('', 'ReduceLogSum'): "pending",
    ('', 'ReduceLogSumExp'): "pending",
    ('', 'ReduceMax'): "pending",
    ('', 'ReduceMean'): "pending",
    ('', 'ReduceMin'): "pending",
    ('', 'ReduceProd'): "pending",
    ('', 'ReduceSum'): "pending",
    ('', 'ReduceSumSquare'): "pending",
    ('', 'RegexFullMatch'): "pending",
    ('', 'Relu'): "pending",
    ('', 'Reshape'): "pending",
    ('', 'Resize'): "pending",
    ('', 'ReverseSequence'): "pending",
    ('', 'RoiAlign'): "pending",
    ('', 'RotaryEmbedding'): "pending",
    ('', 'Round'): "pending",
    ('', 'STFT'): "pending",
    ('', 'Scan'): "pending",
    ('', 'Scatter'): "pending",
    ('', 'ScatterElements'): "pending",
    ('', 'ScatterND'): "pending",
    ('', 'Selu'): "pending",
    ('', 'SequenceEmpty'): "pending",
    ('', 'SequenceInsert'): "pending",
    ('', 'SequenceLength'): "pending",
    ('', 'SequenceMap'): "pending",
    ('', 'Shape'): "pending",
    ('', 'Shrink'): "pending",
    ('', 'Sigmoid'): "pending",
    ('', 'Sign'): "pending",
    ('', 'Sin'): "pending",
    ('', 'Sinh'): "pending",
    ('', 'Size'): "pending",
    ('', 'Slice'): "pending",
    ('', 'Softmax'): "pending",
    ('', 'SoftmaxCrossEntropyLoss'): "pending",
    ('', 'Softplus'): "pending",
    ('', 'Softsign'): "pending",
    ('', 'SpaceToDepth'): "pending",
    ('', 'Split'): "pending",
    ('', 'SplitToSequence'): "pending",
    ('', 'Sqrt'): "pending",
    ('', 'Squeeze'): "pending",
    ('', 'StringConcat'): "pending",
    ('', 'StringNormalizer'): "pending",
    ('', 'StringSplit'): "pending",
    ('', 'Sub'): "pending",
    ('', 'Sum'): "pending",
    ('', 'SwiGLU'): "pending",
    ('', 'Swish'): "pending",
    ('', 'Tan'): "pending",
    ('', 'Tanh'): "pending",
    ('', 'TensorScatter'): "pending",
    ('', 'TfIdfVectorizer'): "pending",
    ('', 'ThresholdedRelu'): "pending",
    ('', 'Tile'): "pending",
    ('', 'TopK'): "pending",
    ('', 'Transpose'): "pending",
    ('', 'Trilu'): "pending",
    ('', 'Unique'): "pending",
    ('', 'Unsqueeze'): "pending",
    ('', 'Upsample'): "pending",
    ('', 'Where'): "pending",
    ('', 'Xor'): "pending",
    ('ai.onnx.ml', 'ArrayFeatureExtractor'): "pending",
    ('ai.onnx.ml', 'Binarizer'): "pending",
    ('ai.onnx.ml', 'LabelEncoder'): "pending",
    ('ai.onnx.ml', 'TreeEnsemble'): "pending",
    ('ai.onnx.preview', 'FlexAttention'): "pending",
    ('ai.onnx.preview.training', 'Adagrad'): "pending",
    ('ai.onnx.preview.training', 'Adam'): "pending",
    ('ai.onnx.preview.training', 'Momentum'): "pending",
}


_LOADERS = {
    "": _load_onnx_op,
    "ai.onnx.ml": aionnxml.load_op,
    "ai.onnx.preview": aionnx_preview.load_op,
    "ai.onnx.preview.training": aionnx_preview_training.load_op,
}


def _reference_factory(ctx: NodeContext):
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
    """Register the delegated ops that have no hand-written kernel."""
    written = {(d, op) for d, op, _ in REGISTRY.ops()}
    versions = _since_versions()
    for domain, op_type in ops:
        if (normalize_domain(domain), op_type) in written:
            continue
        for since in versions.get((normalize_domain(domain), op_type), [1]):
            REGISTRY.add(domain, op_type, since, _reference_factory)
