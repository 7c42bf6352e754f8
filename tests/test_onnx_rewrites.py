"""The exact graph rewrites of model/runtimes/rewrites.py: the exported network computes the same
bits with them, every GroupNorm of the embedded network is rewritten, and a near miss is left alone."""

from __future__ import annotations

import numpy as np
import pytest

from model import load_checkpoint
from model.runtimes import export as export_module
from model.runtimes.rewrites import affine_as_depthwise_conv, optimise, static_reshapes, swap_last_axes

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
helper, numpy_helper, TensorProto = onnx.helper, onnx.numpy_helper, onnx.TensorProto


def run(model: object, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])  # type: ignore[attr-defined]
    return session.run(None, feeds)[0]


@pytest.fixture(scope="module")
def raw_graph() -> object:
    """The embedded network as the exporter writes it, before any rewrite."""
    model = load_checkpoint(None, device="cpu", dtype="float32", channels_last=False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(export_module, "optimise", lambda proto: {})
        return onnx.load_from_string(export_module.export_onnx(model.unet, model.config))


def test_every_group_norm_is_rewritten_and_the_outputs_keep_every_bit(raw_graph: object) -> None:
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(raw_graph)
    counts = optimise(rewritten)
    onnx.checker.check_model(rewritten, full_check=True)
    ops = [n.op_type for n in rewritten.graph.node]
    norms, attentions = ops.count("InstanceNormalization"), ops.count("Softmax")
    assert (norms, attentions) == (41, 6)
    assert counts == {"affine_as_depthwise_conv": norms, "static_reshapes": norms, "swap_last_axes": attentions}
    before = [n.op_type for n in raw_graph.graph.node]  # type: ignore[attr-defined]
    assert before.count("Mul") - ops.count("Mul") == norms and before.count("Add") - ops.count("Add") == norms
    # Every Reshape's target is now a constant: no shape arithmetic is left to run per call.
    constants = {init.name for init in rewritten.graph.initializer}
    assert all(n.input[1] in constants for n in rewritten.graph.node if n.op_type == "Reshape")
    assert "Shape" not in ops and "Concat" in before and len(ops) < len(before) - 2 * norms - 6 * attentions
    assert depthwise_convs(rewritten) == norms and depthwise_convs(raw_graph) == 0
    g = np.random.default_rng(0)
    for batch in (1, 5, 16):
        feeds = {"x": g.standard_normal((batch, 1, 8, 8), dtype=np.float32),
                 "t": g.integers(0, 1000, batch), "labels": g.integers(0, 11, batch)}
        assert np.array_equal(run(raw_graph, feeds), run(rewritten, feeds)), batch


def depthwise_convs(graph: object) -> int:
    return sum(n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)
               for n in graph.graph.node)  # type: ignore[attr-defined]


def test_the_served_export_carries_the_rewrites() -> None:
    model = load_checkpoint(None, device="cpu", dtype="float32", channels_last=False)
    graph = onnx.load_from_string(export_module.onnx_bytes(model.unet, model.config))
    assert depthwise_convs(graph) == sum(n.op_type == "InstanceNormalization" for n in graph.graph.node) == 41


def affine_graph(gamma_is_constant: bool) -> object:
    """InstanceNormalization over (N, 2, 8) groups, back to (N, 4, 2, 2), then x * gamma + beta."""
    inits = [numpy_helper.from_array(np.array([0, 2, -1], np.int64), "groups"),
             numpy_helper.from_array(np.ones(2, np.float32), "ones"),
             numpy_helper.from_array(np.zeros(2, np.float32), "zeros"),
             numpy_helper.from_array(np.array([0, 4, 2, 2], np.int64), "back"),
             numpy_helper.from_array(np.arange(4, dtype=np.float32).reshape(4, 1, 1) - 1.5, "beta")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 2, 2])]
    if gamma_is_constant:
        inits.append(numpy_helper.from_array(np.linspace(0.5, 2, 4, dtype=np.float32).reshape(4, 1, 1), "gamma"))
    else:
        inputs.append(helper.make_tensor_value_info("gamma", TensorProto.FLOAT, [4, 1, 1]))
    nodes = [helper.make_node("Reshape", ["x", "groups"], ["grouped"]),
             helper.make_node("InstanceNormalization", ["grouped", "ones", "zeros"], ["normed"]),
             helper.make_node("Reshape", ["normed", "back"], ["image"]),
             helper.make_node("Mul", ["image", "gamma"], ["scaled"]),
             helper.make_node("Add", ["scaled", "beta"], ["y"])]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def test_the_affine_becomes_a_depthwise_conv_only_when_gamma_and_beta_are_constants() -> None:
    x = np.random.default_rng(1).standard_normal((3, 4, 2, 2), dtype=np.float32)
    model = affine_graph(gamma_is_constant=True)
    expected = run(model, {"x": x})
    assert affine_as_depthwise_conv(model) == 1
    assert [n.op_type for n in model.graph.node][-1] == "Conv"  # type: ignore[attr-defined]
    np.testing.assert_allclose(run(model, {"x": x}), expected, rtol=0, atol=1e-6)
    varying = affine_graph(gamma_is_constant=False)
    assert affine_as_depthwise_conv(varying) == 0
    assert [n.op_type for n in varying.graph.node][-2:] == ["Mul", "Add"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(("target_batch", "rewritten"), [("n", True), ("m", False)])
def test_a_reshape_to_a_runtime_shape_becomes_static_only_when_it_keeps_the_datas_batch(
        target_batch: str, rewritten: bool) -> None:
    inputs = [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", 8]),
              helper.make_tensor_value_info("b", TensorProto.FLOAT, [target_batch, 2, 4])]
    nodes = [helper.make_node("Shape", ["b"], ["shape"]), helper.make_node("Reshape", ["a", "shape"], ["y"])]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    feeds = {"a": np.arange(24, dtype=np.float32).reshape(3, 8), "b": np.zeros((3, 2, 4), np.float32)}
    expected = run(model, feeds)
    assert static_reshapes(model) == int(rewritten)
    assert ("Shape" in [n.op_type for n in model.graph.node]) != rewritten  # type: ignore[attr-defined]
    np.testing.assert_array_equal(run(model, feeds), expected)


def transpose_dance(final_perm: list[int]) -> object:
    """k.transpose(-2, -1) as the exporter writes it for k of shape (n, 1, 4, 3): fold to
    (-1, 4, 3) with a target computed from Shape(k), Transpose, unfold to (n, 1, 3, 4)."""
    inits = [numpy_helper.from_array(np.array(v, np.int64), name) for name, v in
             (("minus1", [-1]), ("minus2", [-2]), ("first", [-(2**63)]), ("end", [2**63 - 1]))]
    nodes = [helper.make_node("Shape", ["k"], ["shape"]),  # the exporter's nodes, in its order
             helper.make_node("Slice", ["shape", "minus1", "end"], ["cols"]),
             helper.make_node("Slice", ["shape", "minus2", "minus1"], ["rows"]),
             helper.make_node("Slice", ["shape", "first", "minus2"], ["head"]),
             helper.make_node("Concat", ["minus1", "rows", "cols"], ["folded_shape"], axis=0),
             helper.make_node("Reshape", ["k", "folded_shape"], ["folded"]),
             helper.make_node("Transpose", ["folded"], ["swapped"], perm=final_perm),
             helper.make_node("Concat", ["head", "cols", "rows"], ["back_shape"], axis=0),
             helper.make_node("Reshape", ["swapped", "back_shape"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("k", TensorProto.FLOAT, ["n", 1, 4, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


@pytest.mark.parametrize(("perm", "rewritten"), [([0, 2, 1], True), ([1, 0, 2], False)])
def test_a_transpose_of_the_last_two_axes_through_folds_becomes_one_transpose(perm: list[int], rewritten: bool) -> None:
    model = transpose_dance(perm)
    k = np.arange(24, dtype=np.float32).reshape(2, 1, 4, 3)
    if rewritten:
        np.testing.assert_array_equal(run(model, {"k": k}), k.swapaxes(-1, -2))
    assert swap_last_axes(model) == int(rewritten)
    ops = [n.op_type for n in model.graph.node]  # type: ignore[attr-defined]
    assert (ops == ["Transpose"]) == rewritten  # and the shape arithmetic went with the folds
    if rewritten:
        np.testing.assert_array_equal(run(model, {"k": k}), k.swapaxes(-1, -2))
