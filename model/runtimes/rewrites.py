"""Exact rewrites of the exported graph that make ONNX Runtime's CPU provider faster.

The embedded network's call is a few hundred small operators, and on ONNX Runtime's CPU provider
a per-channel broadcast (``x * gamma[C, 1, 1]``) is one of the dearest: its broadcaster walks
the tensor in spans of the innermost matching extent, here H x W = 4 to 64 floats, so an ``Add``
of a [16, 64, 2, 2] tensor and a [64, 1, 1] one takes ~6 us where a same-shape ``Add`` takes
0.5 us. GroupNorm, exported at opset 20 as Reshape -> InstanceNormalization -> Reshape -> Mul ->
Add, pays two of them each time (41 times per call); every other operator costs 2-3 us however
little it does. The rewrites below leave every output bit as it was (tests/test_onnx_rewrites.py)
and together make a call of the embedded network 1.18-1.28x faster at batch 1, 1.15x at 16 and
1.13x at 64 (``python -m bench.rewrites``; docs/benchmarks.md, "Where the targets stand"):

- ``affine_as_depthwise_conv``: GroupNorm's per-channel affine, ``Mul(gamma)`` then
  ``Add(beta)``, becomes one 1x1 depthwise ``Conv`` (weight gamma, bias beta), which the
  provider runs in its blocked convolution layout: 10-11 % of a call;
- ``static_reshapes``: the ``Reshape`` back from the normalized groups takes its target shape
  from a ``Shape`` node at run time; the shape is static but for the batch, so it becomes a
  constant ``[0, C, H, W]`` (0 copies the batch), and the ``Shape`` node goes: 2-3 %;
- ``swap_last_axes``: attention's ``k.transpose(-2, -1)``, exported as a fold of the leading
  axes, a transpose and an unfold, both targets computed at run time by nine nodes of shape
  arithmetic, becomes one Transpose: 7-12 % at batch 1, 1-4 % at 16 and 64.

A pattern that does not match exactly (another exporter's layout, an affine that is not a
constant) is left as it was: a rewrite is an optimisation, never a requirement.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

Node = Any  # onnx.NodeProto; onnx is an optional dependency, imported by the caller
REWRITES_VERSION = 2  # part of the export cache's key: a graph cached before a change is re-exported


def _consumers(nodes: list[Node]) -> dict[str, list[Node]]:
    users: dict[str, list[Node]] = defaultdict(list)
    for node in nodes:
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
    nodes = list(graph.node)  # one snapshot: protobuf hands out a new wrapper per access, ids differ
    constants = {init.name: init for init in graph.initializer}
    users = _consumers(nodes)
    replaced: dict[int, Node] = {}
    dropped: set[int] = set()
    for norm in nodes:
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
    _replace_nodes(graph, nodes, replaced, dropped)
    _prune(graph)
    return len(replaced)


def static_reshapes(model: Any) -> int:
    """Give each Reshape whose target is ``Shape(t)`` of a tensor static but for its batch (the
    same symbolic extent as the data's first) the constant ``[0, *t.shape[1:]]``, in place,
    dropping the Shape node when nothing else reads it; returns how many were rewritten."""
    from onnx import numpy_helper

    graph = model.graph
    nodes = list(graph.node)  # one snapshot: protobuf hands out a new wrapper per access, ids differ
    shapes = _inferred_shapes(model)
    producers = {name: node for node in nodes for name in node.output}
    users = _consumers(nodes)
    dropped: set[int] = set()
    count = 0
    for reshape in nodes:
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
    _replace_nodes(graph, nodes, {}, dropped)
    _prune(graph)
    return count


def swap_last_axes(model: Any) -> int:
    """Replace each Reshape -> Transpose -> Reshape chain that, by the inferred shapes, only swaps
    the last two axes of its input (how the exporter writes attention's ``k.transpose(-2, -1)``:
    fold the leading axes, transpose, unfold them again, with both targets computed at run time
    from ``Shape`` nodes) by that one Transpose, in place, and prune what no longer has a reader;
    returns how many chains were replaced."""
    from onnx import helper

    graph = model.graph
    nodes = list(graph.node)  # one snapshot: protobuf hands out a new wrapper per access, ids differ
    shapes = _inferred_shapes(model, data_prop=True)
    producers = {name: node for node in nodes for name in node.output}
    users = _consumers(nodes)
    replaced: dict[int, Node] = {}
    dropped: set[int] = set()
    for last in nodes:
        middle = producers.get(last.input[0]) if last.op_type == "Reshape" else None
        first = producers.get(middle.input[0]) if middle is not None and middle.op_type == "Transpose" else None
        if middle is None or first is None or first.op_type != "Reshape" or len(users[first.output[0]]) != 1 \
                or len(users[middle.output[0]]) != 1:
            continue
        source, target = shapes.get(first.input[0]), shapes.get(last.output[0])
        folded = shapes.get(first.output[0])
        perm = [a.ints for a in middle.attribute if a.name == "perm"]
        if not source or not folded or len(source) < 2 or not perm or list(perm[0]) != [0, 2, 1] \
                or len(folded) != 3 or source[-2:] != folded[1:] or any(d == "" for d in source) \
                or target != [*source[:-2], source[-1], source[-2]]:
            continue
        rank = len(source)
        replaced[id(last)] = helper.make_node("Transpose", [first.input[0]], [last.output[0]],
                                              name=f"{last.name or last.output[0]}_swap",
                                              perm=[*range(rank - 2), rank - 1, rank - 2])
        dropped |= {id(first), id(middle)}
    _replace_nodes(graph, nodes, replaced, dropped)
    _prune(graph)
    return len(replaced)


def _inferred_shapes(model: Any, data_prop: bool = False) -> dict[str, list[int | str]]:
    """Each tensor's inferred shape: a static extent, or a symbolic one's name ("" if unnamed)."""
    from onnx import shape_inference

    inferred = shape_inference.infer_shapes(model, data_prop=data_prop).graph
    return {info.name: [d.dim_value if d.HasField("dim_value") else d.dim_param
                        for d in info.type.tensor_type.shape.dim]
            for info in [*inferred.value_info, *inferred.input, *inferred.output]}


def _prune(graph: Any) -> None:
    """Drop nodes and constants nothing reads (a rewrite may orphan a chain of shape arithmetic)."""
    nodes = list(graph.node)
    wanted = {output.name for output in graph.output}
    kept = set()
    for node in reversed(nodes):  # readers come after writers
        if any(name in wanted for name in node.output):
            kept.add(id(node))
            wanted.update(node.input)
    _replace_nodes(graph, nodes, {}, {id(node) for node in nodes} - kept)
    unread = [init for init in graph.initializer if init.name not in wanted]
    for init in unread:
        graph.initializer.remove(init)


def _replace_nodes(graph: Any, nodes: list[Node], replaced: dict[int, Node], dropped: set[int]) -> None:
    """Give ``graph`` the snapshot ``nodes`` with swaps and drops (by id), keeping their order."""
    kept = [replaced.get(id(node), node) for node in nodes if id(node) not in dropped]
    del graph.node[:]
    graph.node.extend(kept)


def optimise(model: Any) -> dict[str, int]:
    """Every rewrite above, in place; how many sites each rewrote (for the export's log)."""
    return {"affine_as_depthwise_conv": affine_as_depthwise_conv(model), "static_reshapes": static_reshapes(model),
            "swap_last_axes": swap_last_axes(model)}
