"""Exact rewrites of the exported graph that make ONNX Runtime's CPU provider faster.

The embedded network's call is a few hundred small operators, and on ONNX Runtime's CPU provider
a per-channel broadcast (``x * gamma[C, 1, 1]``) is one of the dearest: its broadcaster walks
the tensor in spans of the innermost matching extent, here H x W = 4 to 64 floats, so an ``Add``
of a [16, 64, 2, 2] tensor and a [64, 1, 1] one takes ~6 us where a same-shape ``Add`` takes
0.5 us. GroupNorm, exported at opset 20 as Reshape -> InstanceNormalization -> Reshape -> Mul ->
Add, pays two of them each time (41 times per call). Both rewrites below leave every output bit
for bit as it was (tests/test_onnx.py), and together make a call 1.12-1.15x faster at batch 1,
16 and 64 (docs/benchmarks.md, "Rewriting the graph"):

- ``affine_as_depthwise_conv``: GroupNorm's per-channel affine, ``Mul(gamma)`` then
  ``Add(beta)``, becomes one 1x1 depthwise ``Conv`` (weight gamma, bias beta), which the
  provider runs in its blocked convolution layout: 10-11 % of a call;
- ``static_reshapes``: the ``Reshape`` back from the normalized groups takes its target shape
  from a ``Shape`` node at run time; the shape is static but for the batch, so it becomes a
  constant ``[0, C, H, W]`` (0 copies the batch), and the ``Shape`` node goes: 2-3 %.

A pattern that does not match exactly (another exporter's layout, an affine that is not a
constant) is left as it was: a rewrite is an optimisation, never a requirement.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

Node = Any  # onnx.NodeProto; onnx is an optional dependency, imported by the caller
REWRITES_VERSION = 1  # part of the export cache's key: a graph cached before a change is re-exported


def _consumers(graph: Any) -> dict[str, list[Node]]:
    users: dict[str, list[Node]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            users[name].append(node)
    return users


def _only_user(users: dict[str, list[Node]], name: str, op_type: str) -> Node | None:
    found = users.get(name, [])
    return found[0] if len(found) == 1 and found[0].op_type == op_type else None


def affine_as_depthwise_conv(model: Any) -> int:
    """Rewrite each InstanceNormalization -> Reshape -> Mul(gamma) -> Add(beta) chain's affine
    as a depthwise 1x1 Conv, in place; returns how many were rewritten."""
    from onnx import helper, numpy_helper

    graph = model.graph
    constants = {init.name: init for init in graph.initializer}
    users = _consumers(graph)
    replaced: dict[int, Node] = {}
    dropped: set[int] = set()
    for norm in graph.node:
        if norm.op_type != "InstanceNormalization":
            continue
        back = _only_user(users, norm.output[0], "Reshape")
        mul = back and _only_user(users, back.output[0], "Mul")
        add = mul and _only_user(users, mul.output[0], "Add")
        if back is None or mul is None or add is None or mul.input[0] != back.output[0]:
            continue
        beta_name = add.input[1] if add.input[0] == mul.output[0] else add.input[0]
        if mul.input[1] not in constants or beta_name not in constants:
            continue
        gamma = numpy_helper.to_array(constants[mul.input[1]])
        beta = numpy_helper.to_array(constants[beta_name])
        channels = gamma.shape[0] if gamma.ndim == 3 else 0
        if not channels or gamma.shape != (channels, 1, 1) or beta.shape != (channels, 1, 1):
            continue
        weight = numpy_helper.from_array(gamma.reshape(channels, 1, 1, 1).astype(np.float32),
                                         f"{mul.name or mul.output[0]}_depthwise_weight")
        bias = numpy_helper.from_array(beta.reshape(channels).astype(np.float32),
                                       f"{add.name or add.output[0]}_depthwise_bias")
        graph.initializer.extend([weight, bias])
        replaced[id(mul)] = helper.make_node(
            "Conv", [back.output[0], weight.name, bias.name], [add.output[0]],
            name=f"{norm.name or norm.output[0]}_affine", group=channels, kernel_shape=[1, 1])
        dropped.add(id(add))
    _replace_nodes(graph, replaced, dropped)
    return len(replaced)


def static_reshapes(model: Any) -> int:
    """Give each Reshape whose target is ``Shape(t)`` of a tensor static but for its batch (the
    same symbolic extent as the data's first) the constant ``[0, *t.shape[1:]]``, in place,
    dropping the Shape node when nothing else reads it; returns how many were rewritten."""
    from onnx import numpy_helper, shape_inference

    graph = model.graph
    inferred = shape_inference.infer_shapes(model).graph
    shapes: dict[str, list[int | str]] = {}  # a static extent, or a symbolic one's name ("" if unnamed)
    for info in [*inferred.value_info, *inferred.input, *inferred.output]:
        shapes[info.name] = [d.dim_value if d.HasField("dim_value") else d.dim_param
                             for d in info.type.tensor_type.shape.dim]
    producers = {name: node for node in graph.node for name in node.output}
    users = _consumers(graph)
    dropped: set[int] = set()
    count = 0
    for reshape in graph.node:
        if reshape.op_type != "Reshape" or any(a.name == "allowzero" and a.i for a in reshape.attribute):
            continue
        source = producers.get(reshape.input[1])
        if source is None or source.op_type != "Shape" or any(
                a.name == "end" or (a.name == "start" and a.i != 0) for a in source.attribute):
            continue
        dims, data = shapes.get(source.input[0]), shapes.get(reshape.input[0])
        # 0 copies the data's first extent: it must be the very batch the target starts with.
        if not dims or not data or not isinstance(dims[0], str) or not dims[0] or data[0] != dims[0] \
                or not all(isinstance(d, int) for d in dims[1:]):
            continue
        name = f"{source.output[0]}_static"
        graph.initializer.append(numpy_helper.from_array(np.array([0, *dims[1:]], dtype=np.int64), name))
        if len(users[source.output[0]]) == 1:
            dropped.add(id(source))
        reshape.input[1] = name
        count += 1
    _replace_nodes(graph, {}, dropped)
    return count


def _replace_nodes(graph: Any, replaced: dict[int, Node], dropped: set[int]) -> None:
    """Swap nodes in place, keeping the graph's (topological) order."""
    nodes = [replaced.get(id(node), node) for node in graph.node if id(node) not in dropped]
    del graph.node[:]
    graph.node.extend(nodes)


def optimise(model: Any) -> dict[str, int]:
    """Every rewrite above, in place; how many sites each rewrote (for the export's log)."""
    return {"affine_as_depthwise_conv": affine_as_depthwise_conv(model), "static_reshapes": static_reshapes(model)}
