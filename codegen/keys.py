"""How a node finds its row in codegen's tables (LOWERINGS, TEMPLATES).

ai.onnx and tritort's internal ops are keyed by their op type; other domains' ops by
``domain.op_type``, so a ``com.microsoft`` op never takes the row of an ai.onnx op of the
same name (their Gelu and LayerNormalization differ in attributes and inputs).
"""
from __future__ import annotations

from tritort.contracts import INTERNAL_DOMAIN

CONTRIB_DOMAIN = "com.microsoft"
_PLAIN = ("", "ai.onnx", INTERNAL_DOMAIN)
_KEYED = (CONTRIB_DOMAIN,)


def op_key(node) -> str | None:
    """The node's row key, or None for a domain codegen has no rows for."""
    if node.domain in _PLAIN:
        return node.op_type
    if node.domain in _KEYED:
        return f"{node.domain}.{node.op_type}"
    return None


def contrib(op_type: str) -> str:
    """The row key of a com.microsoft op."""
    return f"{CONTRIB_DOMAIN}.{op_type}"
