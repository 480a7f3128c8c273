"""The torch modules the benchmark exports (perf/models.py builds, seeds and caches them):
the transformer blocks, the MLP and the CNN, by model name."""
from __future__ import annotations

import math
from typing import Any


_CLASSES: dict[str, Any] = {}


def torch_classes() -> dict[str, Any]:
    """The torch modules, defined on first use so importing this file does not import torch."""
    if _CLASSES:
        return _CLASSES
    import torch
    from torch import nn
    from torch.nn import functional as F

    class SelfAttention(nn.Module):
        def __init__(self, hidden: int, heads: int, fused: bool):
            super().__init__()
            self.heads, self.dim, self.fused = heads, hidden // heads, fused
            if fused:  # GPT-2's c_attn
                self.qkv = nn.Linear(hidden, 3 * hidden)
            else:      # BERT's query/key/value
                self.q, self.k, self.v = (nn.Linear(hidden, hidden) for _ in range(3))
            self.out = nn.Linear(hidden, hidden)

        def forward(self, x, bias):
            b, s, h = x.shape
            if self.fused:
                q, k, v = self.qkv(x).split(h, dim=-1)
            else:
                q, k, v = self.q(x), self.k(x), self.v(x)
            q, k, v = (t.reshape(b, s, self.heads, self.dim).transpose(1, 2) for t in (q, k, v))
            scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(self.dim)) + bias
            ctx = torch.matmul(torch.softmax(scores, dim=-1), v)
            return self.out(ctx.transpose(1, 2).reshape(b, s, h))

    class FeedForward(nn.Module):
        def __init__(self, hidden: int, ffn: int, approximate: str):
            super().__init__()
            self.up, self.down, self.approximate = nn.Linear(hidden, ffn), nn.Linear(ffn, hidden), approximate

        def forward(self, x):
            return self.down(F.gelu(self.up(x), approximate=self.approximate))

    class PostLNLayer(nn.Module):  # BERT
        def __init__(self, c):
            super().__init__()
            self.attn = SelfAttention(c["hidden"], c["heads"], fused=False)
            self.ln1 = nn.LayerNorm(c["hidden"], eps=1e-12)
            self.ffn = FeedForward(c["hidden"], c["ffn"], "none")
            self.ln2 = nn.LayerNorm(c["hidden"], eps=1e-12)

        def forward(self, x, bias):
            x = self.ln1(x + self.attn(x, bias))
            return self.ln2(x + self.ffn(x))

    class PreLNLayer(nn.Module):  # GPT-2, ViT
        def __init__(self, c, approximate: str, fused: bool):
            super().__init__()
            self.ln1 = nn.LayerNorm(c["hidden"], eps=1e-5)
            self.attn = SelfAttention(c["hidden"], c["heads"], fused=fused)
            self.ln2 = nn.LayerNorm(c["hidden"], eps=1e-5)
            self.ffn = FeedForward(c["hidden"], c["ffn"], approximate)

        def forward(self, x, bias):
            x = x + self.attn(self.ln1(x), bias)
            return x + self.ffn(self.ln2(x))

    class Bert(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.word = nn.Embedding(c["vocab"], c["hidden"])
            self.pos = nn.Embedding(c["max_pos"], c["hidden"])
            self.token_type = nn.Embedding(2, c["hidden"])
            self.ln = nn.LayerNorm(c["hidden"], eps=1e-12)
            self.layers = nn.ModuleList(PostLNLayer(c) for _ in range(c["layers"]))

        def forward(self, input_ids, attention_mask):
            s = input_ids.shape[1]
            pos = torch.arange(s, device=input_ids.device)
            x = self.word(input_ids) + self.pos(pos)[None] + self.token_type.weight[0]
            x = self.ln(x)
            bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
            for layer in self.layers:
                x = layer(x, bias)
            return x

    class GPT2(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.wte = nn.Embedding(c["vocab"], c["hidden"])
            self.wpe = nn.Embedding(c["max_pos"], c["hidden"])
            self.layers = nn.ModuleList(PreLNLayer(c, "tanh", fused=True)
                                        for _ in range(c["layers"]))
            self.ln_f = nn.LayerNorm(c["hidden"], eps=1e-5)
            mask = torch.tril(torch.ones(c["max_pos"], c["max_pos"], dtype=torch.bool))
            self.register_buffer("causal", mask, persistent=False)

        def forward(self, input_ids):
            s = input_ids.shape[1]
            pos = torch.arange(s, device=input_ids.device)
            x = self.wte(input_ids) + self.wpe(pos)[None]
            keep = self.causal[:s, :s]
            bias = torch.where(keep, 0.0, torch.finfo(x.dtype).min).to(x.dtype)[None, None]
            for layer in self.layers:
                x = layer(x, bias)
            return torch.matmul(self.ln_f(x), self.wte.weight.t())  # tied LM head

    class ViT(nn.Module):
        def __init__(self, c):
            super().__init__()
            tokens = (c["image"] // c["patch"]) ** 2 + 1
            self.patch = nn.Conv2d(3, c["hidden"], c["patch"], stride=c["patch"])
            self.cls = nn.Parameter(torch.randn(1, 1, c["hidden"]) * 0.02)
            self.pos = nn.Parameter(torch.randn(1, tokens, c["hidden"]) * 0.02)
            self.layers = nn.ModuleList(PreLNLayer(c, "none", fused=False)
                                        for _ in range(c["layers"]))
            self.ln = nn.LayerNorm(c["hidden"], eps=1e-6)
            self.head = nn.Linear(c["hidden"], c["classes"])

        def forward(self, pixel_values):
            x = self.patch(pixel_values).flatten(2).transpose(1, 2)
            cls = self.cls.expand(x.shape[0], -1, -1)
            x = torch.cat([cls, x], dim=1) + self.pos
            for layer in self.layers:
                x = layer(x, 0.0)
            return self.head(self.ln(x)[:, 0])

    class MLP(nn.Module):
        def __init__(self, c):
            super().__init__()
            dims = [c["inp"]] + [c["hidden"]] * c["layers"]
            self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:]))
            self.out = nn.Linear(dims[-1], c["out"])

        def forward(self, x):
            for lin in self.hidden:
                x = F.gelu(lin(x))
            return self.out(x)

    class CNN(nn.Module):
        def __init__(self, c):
            super().__init__()
            c1, c2, c3 = c["channels"]

            def block(i, o, stride=1):
                return nn.Sequential(nn.Conv2d(i, o, 3, stride, 1, bias=False),
                                     nn.BatchNorm2d(o), nn.ReLU())
            self.stem = block(3, c1)
            self.pool = nn.MaxPool2d(2)
            self.down = block(c1, c2, 2)
            self.res = nn.Sequential(block(c2, c2), nn.Conv2d(c2, c2, 3, 1, 1))
            self.last = block(c2, c3, 2)
            self.head = nn.Linear(c3, c["classes"])

        def forward(self, x):
            x = self.down(self.pool(self.stem(x)))
            x = torch.relu(x + self.res(x))
            x = self.last(x).mean(dim=(2, 3))
            return self.head(x)

    _CLASSES.update(bert=Bert, gpt2=GPT2, vit=ViT, mlp=MLP, cnn=CNN)
    return _CLASSES


# -- the CNNs shipped inside the onnx package --------------------------------------------------
