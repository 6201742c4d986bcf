"""Nested containers of tensors (a training state: optimiser, scheduler, RNG states) as one ``.safetensors`` file,
without pickle: the tensors are the file's tensors, and the structure around them (dicts, lists, tuples, ints,
floats, strings, booleans, None) is JSON in the file's metadata (key :data:`TREE_KEY`). Reading parses that JSON
with :func:`lavimo.core.jsonconfig.loads_bounded` after the header check of
:func:`lavimo.model.safetensors_header.read_header`: nothing in the file is run or unpickled, and nothing is
allocated beyond the file's own bytes (docs/security.md, "Checkpoints and training state").

The JSON form: a scalar is itself; a tensor is ``{"t": name}``; a list ``{"l": [...]}``; a tuple ``{"u": [...]}``;
a dict ``{"d": [[key, value], ...]}`` (keys are scalars, so the optimiser's int parameter ids stay ints).
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from lavimo.core.errors import BadInputError
from lavimo.core.jsonconfig import loads_bounded

#: the metadata key that holds the structure
TREE_KEY = "lavimo_tree"
_SCALARS = (str, int, float, bool, type(None))


def tree_to_bytes(tree: Any) -> bytes:
    """``tree`` -> the bytes of a ``.safetensors`` file (tensors copied to the CPU, contiguous). Raises TypeError
    for a value of any other type (a programming error, not bad input)."""
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}

    def encode(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            name = f"t{len(tensors)}"
            tensors[name] = value.detach().to("cpu", copy=True).contiguous()  # never shares storage with another
            return {"t": name}
        if isinstance(value, _SCALARS):
            return value
        if isinstance(value, dict):
            if not all(isinstance(k, _SCALARS) for k in value):
                raise TypeError(f"dict keys must be scalars, got {sorted({type(k).__name__ for k in value})}")
            return {"d": [[k, encode(v)] for k, v in value.items()]}
        if isinstance(value, (list, tuple)):
            return {"l" if isinstance(value, list) else "u": [encode(v) for v in value]}
        raise TypeError(f"cannot store a {type(value).__name__} in a tensor tree")

    skeleton = json.dumps(encode(tree), separators=(",", ":"))
    return save(tensors, metadata={TREE_KEY: skeleton})


def load_tree(path: str | os.PathLike) -> Any:
    """The tree a file written from :func:`tree_to_bytes` holds. :class:`BadInputError` naming the file (and the
    field, ``lavimo_tree`` or ``lavimo_tree.t3``) when it is not such a file or its structure is malformed."""
    from lavimo.model.safetensors_header import load_tensors, read_header

    header = read_header(path)
    if TREE_KEY not in header.metadata:
        raise BadInputError(path, TREE_KEY, "missing from the safetensors metadata (not a tensor tree)")
    skeleton = loads_bounded(header.metadata[TREE_KEY], path, TREE_KEY)
    # copies, not views of the file's memory map: the file may be replaced or truncated while they live (SIGBUS)
    tensors = {name: t.clone() for name, t in load_tensors(path).items()}
    used: set[str] = set()

    def decode(node: Any) -> Any:
        if isinstance(node, _SCALARS):
            return node
        if not (isinstance(node, dict) and len(node) == 1):
            raise BadInputError(path, TREE_KEY, f"malformed node {str(node)[:80]!r}")
        (kind, body), = node.items()
        if kind == "t":
            if not isinstance(body, str) or body not in tensors or body in used:
                raise BadInputError(path, f"{TREE_KEY}.{str(body)[:40]}", "names no tensor of the file, or one "
                                                                           "already used")
            used.add(body)
            return tensors[body]
        if kind in ("l", "u") and isinstance(body, list):
            items = [decode(v) for v in body]
            return items if kind == "l" else tuple(items)
        if kind == "d" and isinstance(body, list) and all(
                isinstance(p, list) and len(p) == 2 and isinstance(p[0], _SCALARS) for p in body):
            return {k: decode(v) for k, v in body}
        raise BadInputError(path, TREE_KEY, f"malformed {kind!r} node")

    tree = decode(skeleton)
    if used != set(tensors):
        raise BadInputError(path, TREE_KEY, f"{len(set(tensors) - used)} tensor(s) of the file are not in its tree")
    return tree
