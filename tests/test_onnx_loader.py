"""ONNX frontend: op coverage against onnxruntime, every benchmark network, and clear errors."""
from __future__ import annotations

import csv

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from absint.errors import ModelError, UnsupportedOpError
from absint.frontends.onnx_loader import load_onnx
from absint.ir import Affine, MaxPool2d, Relu

TOL = 1e-5


def _ort(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: xi[None].astype(np.float32)})[0] for xi in x])


def _compare(model: onnx.ModelProto, x: np.ndarray, tol: float = TOL) -> None:
    data = model.SerializeToString()
    graph = load_onnx(data)
    ref = _ort(data, x)
    ours = graph.forward(torch.as_tensor(x, dtype=torch.float64)).numpy().reshape(ref.shape)
    scale = max(1.0, float(np.abs(ref).max()))
    assert np.abs(ours - ref).max() <= tol * scale, np.abs(ours - ref).max()


def _init(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name)


def _model(nodes, inits, in_shape, out_shape, opset=13) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def test_every_required_op_matches_onnxruntime():
    """Gemm, MatMul, Add, Sub, Mul, Div, Conv, Relu, Flatten, Reshape, MaxPool, AveragePool,
    BatchNormalization, Sigmoid, Tanh, Identity, Dropout, Constant, Transpose, Softmax."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Sub", ["x", "mean"], ["a"]),
        helper.make_node("Div", ["a", "std"], ["b"]),
        helper.make_node("Conv", ["b", "cw", "cb"], ["c"], pads=[1, 1, 1, 1], strides=[1, 1]),
        helper.make_node("BatchNormalization", ["c", "g", "be", "m", "v"], ["d"], epsilon=1e-5),
        helper.make_node("Relu", ["d"], ["e"]),
        helper.make_node("MaxPool", ["e"], ["f"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("AveragePool", ["f"], ["f2"], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["f2"], ["h"]),
        helper.make_node("Identity", ["h"], ["h2"]),
        helper.make_node("Dropout", ["h2"], ["h3"]),
        helper.make_node("Transpose", ["h3"], ["t"], perm=[0, 1, 3, 2]),
        helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(np.array([1, -1], dtype=np.int64))),
        helper.make_node("Reshape", ["t", "shape"], ["r"]),
        helper.make_node("MatMul", ["r", "mw"], ["mm"]),
        helper.make_node("Add", ["mm", "mb"], ["ma"]),
        helper.make_node("Tanh", ["ma"], ["th"]),
        helper.make_node("Mul", ["th", "k"], ["mu"]),
        helper.make_node("Flatten", ["mu"], ["fl"], axis=1),
        helper.make_node("Gemm", ["fl", "gw", "gb"], ["gm"], transB=1, alpha=0.5, beta=2.0),
        helper.make_node("Softmax", ["gm"], ["y"], axis=1),
    ]
    inits = [
        _init("mean", [[[0.1]], [[0.2]]]), _init("std", [[[0.5]], [[0.25]]]),
        _init("cw", rng.normal(size=(4, 2, 3, 3))), _init("cb", rng.normal(size=4)),
        _init("g", rng.uniform(0.5, 1.5, 4)), _init("be", rng.normal(size=4)), _init("m", rng.normal(size=4)),
        _init("v", rng.uniform(0.5, 2, 4)), _init("mw", rng.normal(size=(4 * 3 * 3, 7))), _init("mb", rng.normal(size=7)),
        _init("k", rng.normal(size=7)), _init("gw", rng.normal(size=(5, 7))), _init("gb", rng.normal(size=5)),
    ]
    model = _model(nodes, inits, [1, 2, 6, 6], [1, 5])
    data = model.SerializeToString()
    graph = load_onnx(data)
    assert graph.meta["output_softmax"] is True
    x = rng.uniform(0, 1, size=(6, 2, 6, 6))
    # Softmax is dropped (argmax-preserving): compare the argmax, and the logits via a model without it.
    ref = _ort(data, x)
    ours = graph.forward(torch.as_tensor(x)).numpy()
    assert (ref.argmax(1) == ours.argmax(1)).all()
    nodes_no_softmax = nodes[:-1]
    nodes_no_softmax[-1] = helper.make_node("Gemm", ["fl", "gw", "gb"], ["y"], transB=1, alpha=0.5, beta=2.0)
    _compare(_model(nodes_no_softmax, inits, [1, 2, 6, 6], [1, 5]), x)


def test_avgpool_without_pad_counting_and_global_pool():
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("AveragePool", ["x"], ["a"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                              count_include_pad=0),
             helper.make_node("GlobalAveragePool", ["a"], ["y"])]
    _compare(_model(nodes, [], [1, 3, 5, 5], [1, 3, 1, 1]), rng.normal(size=(4, 3, 5, 5)))


def test_two_variable_add_and_sub_make_residual_nodes():
    rng = np.random.default_rng(2)
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["a"], transB=1),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Add", ["a", "r"], ["s"]),
             helper.make_node("Sub", ["s", "a"], ["y"])]
    inits = [_init("w1", rng.normal(size=(4, 3))), _init("b1", rng.normal(size=4))]
    _compare(_model(nodes, inits, [1, 3], [1, 4]), rng.normal(size=(5, 3)))


def test_unsupported_ops_are_all_named_at_once():
    nodes = [helper.make_node("Erf", ["x"], ["a"], name="erf_node"),
             helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Mul", ["x", "x"], ["c"], name="square"),
             helper.make_node("LpNormalization", ["b"], ["y"], name="lpn")]
    with pytest.raises(UnsupportedOpError) as exc:
        load_onnx(_model(nodes, [], [1, 3], [1, 3]).SerializeToString())
    names = {name for name, _, _ in exc.value.unsupported}
    assert names == {"erf_node", "square", "lpn"}
    msg = str(exc.value)
    assert "Erf" in msg and "LpNormalization" in msg and "non-linear" in msg


def test_malformed_and_invalid_models_raise_model_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf at all \x00\xff")
    with pytest.raises(ModelError):
        load_onnx(bad)
    with pytest.raises(ModelError):
        load_onnx(tmp_path / "missing.onnx")
    nan_w = np.ones((2, 3))
    nan_w[0, 1] = np.nan
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)]
    with pytest.raises(ModelError, match="NaN"):
        load_onnx(_model(nodes, [_init("w", nan_w), _init("b", np.zeros(2))], [1, 3], [1, 2]).SerializeToString())


def test_weights_that_do_not_fit_their_input_are_named_at_load_time():
    """Found by mutating benchmark models: these loaded, then crashed inside the first forward pass."""
    rng = np.random.default_rng(0)
    conv = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3]),
            helper.make_node("Flatten", ["c"], ["y"])]
    bias_31 = _model(conv, [_init("w", rng.normal(size=(4, 2, 3, 3))), _init("b", np.zeros(3))], [1, 2, 5, 5], [1, 36])
    with pytest.raises(ModelError, match=r"Conv2d .*cannot run on its input of shape \(2, 5, 5\)"):
        load_onnx(bias_31.SerializeToString())
    two_convs = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3, 3]),
                 helper.make_node("Conv", ["c", "w2"], ["d"], kernel_shape=[1, 1]),
                 helper.make_node("Flatten", ["d"], ["y"])]
    wrong_channels = _model(two_convs, [_init("w", rng.normal(size=(4, 2, 3, 3))), _init("b", np.zeros(4)),
                                        _init("w2", rng.normal(size=(1, 3, 1, 1)))], [1, 2, 5, 5], [1, 9])
    with pytest.raises(ModelError, match="does not fit an input with 4 channels"):
        load_onnx(wrong_channels.SerializeToString())
    empty_input = _model([helper.make_node("Relu", ["x"], ["y"])], [], [1, 0], [1, 0])
    with pytest.raises(ModelError, match="no input variables"):
        load_onnx(empty_input.SerializeToString())


def _bench_inputs(bench, path, n=4):
    rng = np.random.default_rng(0)
    if "eran" in str(path) and "cifar" in path.name:
        with open(bench / "eran" / "cifar10_test_100.csv") as f:
            rows = [list(map(float, r)) for r, _ in zip(csv.reader(f), range(n))]
        return np.array([np.array(r[1:]).reshape(32, 32, 3).transpose(2, 0, 1) / 255 for r in rows])
    if "eran" in str(path) or "mnistfc" in str(path):
        imgs = np.load(bench / "eran" / "mnist_test_1000.npz")["images"][:n].astype(np.float64)
        return imgs
    return rng.uniform(-0.5, 0.5, size=(n, 5))


def test_every_benchmark_network_loads_and_matches_onnxruntime(bench):
    files = sorted(bench.glob("eran/*.onnx")) + sorted(bench.glob("mnistfc/onnx/*.onnx")) + \
        sorted(bench.glob("acasxu/onnx/*.onnx"))
    assert len(files) == 5 + 3 + 45
    for path in files:
        graph = load_onnx(path)
        x = _bench_inputs(bench, path).reshape(-1, *graph.input_shape)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        ref = np.concatenate([sess.run(None, {inp.name: xi.reshape(1, *graph.input_shape).astype(np.float32)})[0]
                              for xi in x])
        ours = graph.forward(torch.as_tensor(x)).numpy().reshape(ref.shape)
        # float32 runtime vs our float64 evaluation of the same float32 weights
        assert np.abs(ours - ref).max() <= TOL * max(1.0, float(np.abs(ref).max())), path.name


def test_bundled_networks_load(networks_dir):
    for path in sorted(networks_dir.glob("*.onnx")):
        graph = load_onnx(path)
        assert graph.input_shape == (1, 8, 8) and graph.output_shape == (10,)
    cnn = load_onnx(networks_dir / "digits_cnn.onnx")
    kinds = [n.kind for n in cnn.nodes]
    assert "Conv2d" in kinds and any(isinstance(n, MaxPool2d) for n in cnn.nodes)
    # BatchNorm folded into the preceding convolution
    assert "ElementwiseAffine" not in kinds
    mlp = load_onnx(networks_dir / "digits_mlp_2x64.onnx")
    assert sum(isinstance(n, Relu) for n in mlp.nodes) == 2
    assert sum(isinstance(n, Affine) for n in mlp.nodes) == 3


@pytest.mark.parametrize("attrs, why", [
    ({"strides": [0, 1]}, "must be >= 1"), ({"dilations": [1, 0]}, "must be >= 1"),
    ({"pads": [-1, 0, -1, 0]}, "negative padding"), ({"kernel_shape": [7, 3]}, "larger than the padded input"),
    ({"pads": [1, 1]}, "needs 4 values"), ({"group": 0}, "does not fit an input with 1 channels"),
])
def test_impossible_window_attributes_are_malformed_nodes(attrs, why):
    """A stride of 0 once crashed the loader with ZeroDivisionError (found by mutating ConvSmall)."""
    w = np.ones((2, 1, 7 if attrs.get("kernel_shape") == [7, 3] else 3, 3))
    a = {"kernel_shape": list(w.shape[2:]), **attrs}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], **a), helper.make_node("Flatten", ["c"], ["y"])]
    with pytest.raises(UnsupportedOpError, match=why):
        load_onnx(_model(nodes, [_init("w", w)], [1, 1, 5, 5], [1, 18]).SerializeToString())


# -- lowerings that must not change what the network computes (found by differential fuzzing) ------
def test_cast_of_the_input_to_an_integer_type_is_refused_not_dropped():
    """``float(int32(x))`` truncates: lowering it as the identity proved false properties."""
    nodes = [helper.make_node("Cast", ["x"], ["i"], to=TensorProto.INT32, name="to_int"),
             helper.make_node("Cast", ["i"], ["y"], to=TensorProto.FLOAT)]
    with pytest.raises(UnsupportedOpError, match="INT32") as exc:
        load_onnx(_model(nodes, [], [1, 3], [1, 3]).SerializeToString())
    assert {name for name, _, _ in exc.value.unsupported} == {"to_int"}
    keep = [helper.make_node("Cast", ["x"], ["d"], to=TensorProto.DOUBLE),
            helper.make_node("Cast", ["d"], ["y"], to=TensorProto.FLOAT)]
    _compare(_model(keep, [], [1, 3], [1, 3]), np.random.default_rng(3).normal(size=(4, 3)))


@pytest.mark.parametrize("perm, shape", [([1, 0, 3, 2], [1, 1, 2, 3]), ([2, 1, 0, 3], [1, 2, 1, 3]),
                                         ([1, 0, 2, 3], [1, 1, 2, 3]), ([0, 2, 1, 3], [1, 2, 1, 3])])
def test_transpose_that_moves_a_unit_batch_axis_keeps_the_other_permutation(perm, shape):
    """``perm=[1, 0, 3, 2]`` on ``[1, 1, 2, 3]`` swaps the unit axes *and* the last two: it was lowered
    as a plain reshape, dropping the swap of the last two axes."""
    out_shape = [shape[p] for p in perm]
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=perm),
             helper.make_node("Flatten", ["t"], ["y"])]
    x = np.random.default_rng(4).normal(size=(3, *shape[1:]))
    _compare(_model(nodes, [], shape, [1, int(np.prod(out_shape))]), x)


@pytest.mark.parametrize("axis, opset, shape, ok", [
    (-1, 13, [1, 4], True), (1, 13, [1, 4], True), (0, 13, [1, 4], False), (2, 13, [1, 2, 2], False),
    (1, 11, [1, 2, 2], True), (0, 11, [1, 4], True), (2, 11, [1, 2, 2], False)])
def test_a_final_softmax_is_dropped_only_over_all_outputs(axis, opset, shape, ok):
    """Dropping a Softmax keeps comparisons between outputs only inside one normalised group: over
    the batch axis every output is 1, and over one axis of ``[1, 2, 2]`` each row is normalised alone."""
    nodes = [helper.make_node("Flatten", ["x"], ["f"], axis=0 if len(shape) == 2 else 1),
             helper.make_node("Reshape", ["f", "s"], ["r"]),
             helper.make_node("Softmax", ["r"], ["y"], axis=axis)]
    inits = [numpy_helper.from_array(np.array(shape, dtype=np.int64), "s")]
    data = _model(nodes, inits, [1, int(np.prod(shape))], shape, opset=opset).SerializeToString()
    if ok:
        assert load_onnx(data).meta["output_softmax"]
    else:
        with pytest.raises(UnsupportedOpError, match="Softmax"):
            load_onnx(data)


def test_dropout_in_training_mode_is_refused_and_in_inference_mode_dropped():
    ratio = numpy_helper.from_array(np.array(0.5, dtype=np.float32), "ratio")
    for mode, ok in ((True, False), (False, True)):
        nodes = [helper.make_node("Dropout", ["x", "ratio", "mode"], ["y"], name="drop")]
        inits = [ratio, numpy_helper.from_array(np.array(mode), "mode")]
        data = _model(nodes, inits, [1, 3], [1, 3]).SerializeToString()
        if ok:
            _compare(_model(nodes, inits, [1, 3], [1, 3]), np.random.default_rng(5).normal(size=(2, 3)))
        else:
            with pytest.raises(UnsupportedOpError, match="training mode"):
                load_onnx(data)


def test_avgpool_padding_beyond_half_the_kernel():
    """Pads above half the kernel once leaked torch's RuntimeError; they are valid ONNX while every
    window still holds a real element, and refused (division by zero) once a window holds none."""
    nodes = [helper.make_node("AveragePool", ["x"], ["a"], kernel_shape=[3, 3], pads=[2, 2, 2, 2],
                              count_include_pad=0), helper.make_node("Flatten", ["a"], ["y"])]
    _compare(_model(nodes, [], [1, 1, 4, 4], [1, 36]), np.random.default_rng(6).normal(size=(3, 1, 4, 4)))
    nodes[0] = helper.make_node("AveragePool", ["x"], ["a"], kernel_shape=[2, 2], pads=[2, 2, 2, 2],
                                count_include_pad=0, name="pool")
    with pytest.raises(UnsupportedOpError, match="only padding"):
        load_onnx(_model(nodes, [], [1, 1, 4, 4], [1, 49]).SerializeToString())


@pytest.mark.parametrize("opset", [6, 26])
def test_opsets_outside_the_supported_range_are_refused(opset):
    """Opset 6's ``Add(broadcast=1, axis=1)`` aligns the constant with axis 1: read with numpy
    broadcasting it was another function, analysed without a word."""
    nodes = [helper.make_node("Add", ["x", "c"], ["y"], **({"broadcast": 1, "axis": 1} if opset < 7 else {}))]
    m = _model(nodes, [_init("c", np.array([10.0, 20.0]))], [1, 2, 2], [1, 2, 2], opset=opset)
    with pytest.raises(ModelError, match=f"opset is {opset}"):
        load_onnx(m.SerializeToString())


def test_ops_of_a_custom_domain_are_not_read_as_standard_ops():
    nodes = [helper.make_node("Relu", ["x"], ["y"], domain="com.example", name="custom")]
    m = _model(nodes, [], [1, 3], [1, 3])
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(UnsupportedOpError, match="custom domain"):
        load_onnx(m.SerializeToString())
