"""Benchmark models, built here with no downloads, random weights from fixed seeds.

    from perf import models
    built = models.get_model("bert", quick=False)      # -> BuiltModel (path, feeds, batch, ...)

Three families:

- torch modules written in this file (BERT-base-shaped encoder, GPT-2-small-shaped causal
  decoder, ViT-B/16-shaped encoder, an MLP and a small CNN), exported with
  ``torch.onnx.export(..., dynamo=True)`` at opset 18 with dynamic batch (and sequence, where the
  model allows it). The same modules, rebuilt from the same seed, are the torch peers on a GPU.
- the CNNs that ship inside the onnx package (``onnx/backend/test/data/light/*.onnx``). Their
  weights are ConstantOfShape nodes filling every tensor with 0.02, which makes every class
  score equal and an output check meaningless; the benchmark copy replaces each of them by an
  initializer of seeded random values scaled by the consumer (He-scaled Conv/Gemm weights,
  BatchNormalization scale near 1 and variance in [0.5, 1.5], small biases and means), drops the
  shape inputs, and adds the Softmax input (the logits) as a second output. Compute is unchanged:
  the same nodes and shapes, input 1x3x224x224; ``batch`` N makes the input Nx3x224x224 (graph
  inputs and outputs and the activations' constant Reshape shapes say N, weights unchanged).

Built models are cached under ``perf/.models/`` (``TRITORT_BENCH_MODELS`` or ``cache_dir``
overrides), keyed by the model's configuration and the builder version, and written
atomically, so reruns only load them.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = ROOT / "perf" / ".models"
BUILDER_VERSION = 1  # bump to invalidate cached models when a builder changes
OPSET = 18
SEED = 0

# -- configurations -----------------------------------------------------------------------------
# full: the shapes named in the model's description; quick: small shapes with the same structure.
TORCH_CONFIGS: dict[str, dict[str, dict[str, Any]]] = {
    "bert": {
        "full": dict(layers=12, hidden=768, heads=12, ffn=3072, vocab=30522, max_pos=512,
                     batch=1, seq=128),
        "quick": dict(layers=2, hidden=64, heads=2, ffn=128, vocab=1000, max_pos=64,
                      batch=1, seq=16),
    },
    "gpt2": {
        "full": dict(layers=12, hidden=768, heads=12, ffn=3072, vocab=50257, max_pos=1024,
                     batch=1, seq=128),
        "quick": dict(layers=2, hidden=64, heads=2, ffn=256, vocab=1000, max_pos=64,
                      batch=1, seq=16),
    },
    "vit": {
        "full": dict(layers=12, hidden=768, heads=12, ffn=3072, image=224, patch=16,
                     classes=1000, batch=1),
        "quick": dict(layers=2, hidden=64, heads=2, ffn=128, image=32, patch=8, classes=10,
                      batch=1),
    },
    "mlp": {
        "full": dict(inp=1024, hidden=4096, layers=3, out=1000, batch=64),
        "quick": dict(inp=32, hidden=64, layers=2, out=10, batch=4),
    },
    "cnn": {
        "full": dict(channels=[32, 64, 128], image=64, classes=10, batch=16),
        "quick": dict(channels=[4, 8, 8], image=16, classes=10, batch=2),
    },
}

LIGHT_MODELS = {
    "resnet50": "light_resnet50.onnx",
    "densenet121": "light_densenet121.onnx",
    "inception_v2": "light_inception_v2.onnx",
    "inception_v1": "light_inception_v1.onnx",
    "squeezenet": "light_squeezenet.onnx",
    "shufflenet": "light_shufflenet.onnx",
    "vgg19": "light_vgg19.onnx",
    "alexnet": "light_bvlc_alexnet.onnx",
    "zfnet512": "light_zfnet512.onnx",
}

DESCRIPTIONS = {
    "bert": "BERT-base-shaped encoder (post-LN, erf GELU, attention mask input)",
    "gpt2": "GPT-2-small-shaped causal decoder (pre-LN, tanh GELU, tied LM head)",
    "vit": "ViT-B/16-shaped encoder (patch conv, class token, pre-LN)",
    "mlp": "MLP (Linear + GELU stack)",
    "cnn": "small CNN (Conv + BatchNorm + ReLU, MaxPool, residual block, global pool)",
    "resnet50": "ResNet-50 (onnx package, light)",
    "densenet121": "DenseNet-121 (onnx package, light)",
    "inception_v2": "Inception v2 (onnx package, light)",
    "inception_v1": "Inception v1 / GoogLeNet (onnx package, light)",
    "squeezenet": "SqueezeNet 1.0 (onnx package, light)",
    "shufflenet": "ShuffleNet (onnx package, light)",
    "vgg19": "VGG-19 (onnx package, light)",
    "alexnet": "AlexNet (onnx package, light)",
    "zfnet512": "ZFNet-512 (onnx package, light)",
}

ALL_MODELS = ["bert", "gpt2", "vit", "mlp", "cnn", *LIGHT_MODELS]


@dataclass
class BuiltModel:
    name: str
    path: Path
    feeds: dict[str, np.ndarray]
    batch: int
    items: str                      # what one item of throughput is: sequence, image, row
    input_desc: str                 # e.g. "input_ids int64[1,128]"
    config: dict[str, Any]
    description: str
    cached: bool                    # loaded from the cache (False: built now)
    build_s: float
    has_torch: bool = False
    notes: list[str] = field(default_factory=list)

    def torch_module(self):
        """The torch module with the exported weights (same seed), eval mode, on the CPU."""
        if not self.has_torch:
            raise ValueError(f"{self.name} is an ONNX-only model: no torch module")
        return _torch_module(self.name, self.config)

    def torch_inputs(self, device: str = "cpu") -> tuple:
        import torch

        return tuple(torch.from_numpy(self.feeds[k]).to(device) for k in _input_names(self.name))


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    d = Path(override or os.environ.get("TRITORT_BENCH_MODELS") or DEFAULT_CACHE)
    d.mkdir(parents=True, exist_ok=True)
    ignore = d / ".gitignore"
    if not ignore.exists():  # like .pytest_cache: the cache ignores itself (GBs of models)
        ignore.write_text("# built benchmark models (perf/models.py); never committed\n*\n")
    return d


def resolve_config(name: str, quick: bool, batch: int | None = None,
                   seq: int | None = None, layers: int | None = None) -> dict[str, Any]:
    if name in LIGHT_MODELS:
        return {"batch": batch or 1, "image": 224}  # fixed in the file: rewritten per batch
    cfg = dict(TORCH_CONFIGS[name]["quick" if quick else "full"])
    if batch is not None:
        cfg["batch"] = batch
    if seq is not None and "seq" in cfg:
        cfg["seq"] = seq
    if layers is not None:
        if "layers" not in cfg:
            raise ValueError(f"model '{name}' has no layer count to set")
        cfg["layers"] = layers
    return cfg


def get_model(name: str, quick: bool = False, batch: int | None = None, seq: int | None = None,
              cache: str | os.PathLike | None = None, log: Callable[[str], None] | None = None,
              layers: int | None = None) -> BuiltModel:
    """Build (or load from the cache) one benchmark model and its seeded inputs; ``layers``
    overrides the configuration's layer count (bert, gpt2, vit, mlp)."""
    if name not in DESCRIPTIONS:
        raise ValueError(f"unknown model '{name}'; known: {', '.join(ALL_MODELS)}")
    cfg = resolve_config(name, quick, batch, seq, layers)
    folder = cache_dir(cache)
    t0 = time.perf_counter()
    if name in LIGHT_MODELS:
        path, cached = _light_model(name, folder, log, cfg["batch"])
    else:
        path, cached = _torch_model(name, cfg, folder, log)
    build_s = time.perf_counter() - t0
    feeds = make_feeds(name, cfg)
    built = BuiltModel(name=name, path=path, feeds=feeds, batch=cfg["batch"],
                       items=_ITEMS.get(name, "image"),
                       input_desc=", ".join(f"{k} {v.dtype}[{','.join(map(str, v.shape))}]"
                                            for k, v in feeds.items()),
                       config=cfg, description=DESCRIPTIONS[name], cached=cached,
                       build_s=build_s, has_torch=name not in LIGHT_MODELS)
    if name in LIGHT_MODELS:
        built.notes.append("weights: seeded random initializers in place of the shipped "
                           "ConstantOfShape(0.02) fills; logits added as a second output")
    return built


_ITEMS = {"bert": "sequence", "gpt2": "sequence", "vit": "image", "mlp": "row", "cnn": "image"}


def _input_names(name: str) -> list[str]:
    return {"bert": ["input_ids", "attention_mask"], "gpt2": ["input_ids"],
            "vit": ["pixel_values"], "mlp": ["x"], "cnn": ["x"]}.get(name, ["data"])


def make_feeds(name: str, cfg: dict[str, Any], seed: int = SEED) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed + 1)
    b = cfg["batch"]
    if name in ("bert", "gpt2"):
        s = cfg["seq"]
        ids = rng.integers(0, cfg["vocab"], size=(b, s), dtype=np.int64)
        if name == "gpt2":
            return {"input_ids": ids}
        mask = np.ones((b, s), dtype=np.int64)
        if s > 4:  # the last quarter of every other sequence is padding
            mask[1::2, s - s // 4:] = 0
        return {"input_ids": ids, "attention_mask": mask}
    if name == "vit":
        return {"pixel_values": rng.standard_normal(
            (b, 3, cfg["image"], cfg["image"])).astype(np.float32)}
    if name == "mlp":
        return {"x": rng.standard_normal((b, cfg["inp"])).astype(np.float32)}
    if name == "cnn":
        return {"x": rng.standard_normal((b, 3, cfg["image"], cfg["image"])).astype(np.float32)}
    # light models: their input name is read from the cached file by light_input_name
    return {light_input_name(name): rng.standard_normal((b, 3, 224, 224)).astype(np.float32)}


def _key(payload: dict[str, Any]) -> str:
    text = json.dumps(payload, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def _atomic_save(model, path: Path) -> None:
    import onnx

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, path)


# -- torch models -------------------------------------------------------------------------------
def _torch_model(name: str, cfg: dict[str, Any], folder: Path, log) -> tuple[Path, bool]:
    import onnx

    arch = {k: v for k, v in cfg.items() if k not in ("batch", "seq")}  # dynamic dims
    key = _key({"name": name, "arch": arch, "opset": OPSET, "seed": SEED,
                "builder": BUILDER_VERSION})
    path = folder / f"{name}-{key}.onnx"
    if path.exists():
        return path, True
    if log:
        log(f"building {name} ({arch}) -> {path}")
    import torch

    module = _torch_module(name, cfg)
    example = _export_example(name, cfg)
    names = _input_names(name)
    batch = torch.export.Dim("batch", min=1, max=4096)
    dyn: dict[str, dict[int, Any]] = {n: {0: batch} for n in names}
    if name in ("bert", "gpt2"):
        seq = torch.export.Dim("seq", min=1, max=cfg["max_pos"])
        dyn = {n: {0: batch, 1: seq} for n in names}
    out_names = {"bert": ["last_hidden_state"], "gpt2": ["logits"], "vit": ["logits"],
                 "mlp": ["y"], "cnn": ["logits"]}[name]
    with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        program = torch.onnx.export(module, example, dynamo=True, opset_version=OPSET,
                                    input_names=names, output_names=out_names,
                                    dynamic_shapes=dyn, optimize=True, verbose=False)
    model = program.model_proto
    model.doc_string = f"tritort benchmark model {name}: {json.dumps(arch)}"
    onnx.checker.check_model(model, full_check=False)
    _atomic_save(model, path)
    return path, False


def _export_example(name: str, cfg: dict[str, Any]) -> tuple:
    """Small example inputs (batch 2, short sequences) so export does not specialize dims."""
    import torch

    small = dict(cfg, batch=2)
    if "seq" in small:
        small["seq"] = min(8, cfg["max_pos"])
    feeds = make_feeds(name, small)
    return tuple(torch.from_numpy(feeds[k]) for k in _input_names(name))


def _torch_module(name: str, cfg: dict[str, Any]):
    import torch

    from perf.torch_modules import torch_classes

    classes = torch_classes()
    torch.manual_seed(SEED)
    module = classes[name](cfg)
    with torch.no_grad():  # BERT-style init: N(0, 0.02), small random biases and LN params
        for mod in module.modules():
            if isinstance(mod, (torch.nn.Linear, torch.nn.Embedding)):
                mod.weight.normal_(0.0, 0.02)
                if getattr(mod, "bias", None) is not None:
                    mod.bias.normal_(0.0, 0.02)
            elif isinstance(mod, torch.nn.LayerNorm):
                mod.weight.normal_(1.0, 0.02)
                mod.bias.normal_(0.0, 0.02)
            elif isinstance(mod, torch.nn.BatchNorm2d):
                mod.weight.uniform_(0.8, 1.2)
                mod.bias.normal_(0.0, 0.1)
                mod.running_mean.normal_(0.0, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
        if name == "mlp" or name == "cnn":  # He-scaled so activations keep their size
            for mod in module.modules():
                if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)):
                    fan_in = mod.weight[0].numel()
                    mod.weight.normal_(0.0, math.sqrt(2.0 / fan_in))
    return module.eval()


def light_source(name: str) -> Path:
    import onnx

    return Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / LIGHT_MODELS[name]


def _light_path(name: str, folder: Path, batch: int = 1) -> Path:
    import onnx

    src = light_source(name)
    payload = {"name": name, "onnx": onnx.__version__, "size": src.stat().st_size,
               "seed": SEED, "builder": BUILDER_VERSION}
    if batch != 1:  # batch 1 keeps the key it had before batches existed (cached files stay)
        payload["batch"] = batch
    return folder / f"{name}-{_key(payload)}.onnx"


def light_input_name(name: str) -> str:
    import onnx

    m = onnx.load(str(light_source(name)), load_external_data=False)
    inits = {t.name for t in m.graph.initializer}
    return next(i.name for i in m.graph.input if i.name not in inits)


def _light_model(name: str, folder: Path, log, batch: int = 1) -> tuple[Path, bool]:
    path = _light_path(name, folder, batch)
    if path.exists():
        return path, True
    if log:
        log(f"preparing {name} (batch {batch}) from {light_source(name).name} -> {path}")
    _atomic_save(with_batch(materialize_light(light_source(name)), batch), path)
    return path, False


def with_batch(model, batch: int):
    """The light model at batch ``batch``: its files say batch 1 in the graph inputs and
    outputs and in the constant shapes of Reshapes of activations ([1, 2048] before the
    classifier; ShuffleNet's channel shuffles); weights' Reshapes are left alone."""
    import onnx
    from onnx import numpy_helper

    if batch == 1:
        return model
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    for node in g.node:
        if node.op_type != "Reshape" or node.input[0] in inits:
            continue
        shape = numpy_helper.to_array(inits[node.input[1]])
        if shape[0] != 1:
            raise ValueError(f"{node.name}: Reshape to {shape.tolist()} has no batch dim")
        shape = shape.copy()
        shape[0] = batch
        inits[node.input[1]].CopyFrom(numpy_helper.from_array(shape, node.input[1]))
    for value in list(g.input) + list(g.output):
        if value.name not in inits:
            value.type.tensor_type.shape.dim[0].dim_value = batch
    onnx.checker.check_model(model)
    return model


def materialize_light(src: Path, seed: int = SEED):
    """The light model with seeded random initializers in place of its ConstantOfShape fills."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    consumers: dict[str, list[tuple[Any, int]]] = {}
    for node in g.node:
        for i, x in enumerate(node.input):
            consumers.setdefault(x, []).append((node, i))

    def role(value: str) -> tuple[str, int, Any]:
        """(op_type, input index, node) of the first consumer, looking through Unsqueeze."""
        seen = value
        for _ in range(4):
            uses = consumers.get(seen, [])
            if not uses:
                return ("", -1, None)
            node, idx = uses[0]
            if node.op_type in ("Unsqueeze", "Reshape", "Squeeze") and idx == 0:
                seen = node.output[0]
                continue
            return (node.op_type, idx, node)
        return ("", -1, None)

    rng = np.random.default_rng(seed)

    def weight(shape: list[int], value: str) -> np.ndarray:
        op, idx, node = role(value)
        if op in ("Conv", "Gemm", "MatMul") and idx == 1 and len(shape) >= 2:
            if op == "Gemm":
                trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
                fan_in = shape[1] if trans_b else shape[0]
            else:
                fan_in = int(np.prod(shape[1:]))
            return rng.normal(0.0, math.sqrt(2.0 / fan_in), shape)
        if op == "BatchNormalization" and idx == 1 or op == "Mul":
            return rng.uniform(0.8, 1.2, shape)
        if op == "BatchNormalization" and idx == 4:
            return rng.uniform(0.5, 1.5, shape)
        if op == "BatchNormalization" and idx in (2, 3) or op == "Add":
            return rng.normal(0.0, 0.1, shape)
        return rng.normal(0.0, 0.01, shape)  # biases and anything else

    nodes, new_inits = [], []
    for node in g.node:
        if node.op_type == "ConstantOfShape" and node.input and node.input[0] in inits:
            shape = numpy_helper.to_array(inits[node.input[0]]).astype(np.int64).tolist()
            arr = weight(shape, node.output[0]).astype(np.float32)
            new_inits.append(numpy_helper.from_array(arr, node.output[0]))
        else:
            nodes.append(node)
    kept = []
    for t in g.initializer:  # float weights given directly get the same treatment
        if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) >= 1:
            arr = weight(list(t.dims), t.name).astype(np.float32)
            kept.append(numpy_helper.from_array(arr, t.name))
        else:
            kept.append(t)
    used = {x for node in nodes for x in node.input}
    all_inits = [t for t in kept + new_inits if t.name in used]
    init_names = {t.name for t in all_inits}
    inputs = [i for i in g.input if i.name not in init_names and i.name in used]
    outputs = list(g.output)
    last = nodes[-1]
    if last.op_type == "Softmax":
        logits = onnx.ValueInfoProto()
        logits.CopyFrom(next(o for o in g.output if o.name == last.output[0]))
        logits.name = last.input[0]  # Softmax keeps the shape
        outputs.append(logits)
    graph = helper.make_graph(nodes, g.name, inputs, outputs, all_inits)
    out = helper.make_model(graph, opset_imports=list(model.opset_import),
                            producer_name="tritort-perf")
    out.ir_version = 8
    out.doc_string = f"{src.name} with seeded random weights (tritort perf/models.py)"
    onnx.checker.check_model(out)
    return out
