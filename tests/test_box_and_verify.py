"""Box domain soundness by sampling, the verify API, attacks and counterexample checking."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import absint
from absint.attack import AttackOptions, check_counterexample, pgd_attack
from absint.interpreter import propagate
from absint.ir import Add, Affine, Graph, Input, MaxPool2d, Relu, Reshape, Sigmoid, Tanh
from absint.linear import ConvOperator, DenseOperator, DiagonalOperator
from absint.results import Verdict
from absint.specs import Instance, linf_ball, robustness_property
from absint.domains.box import BoxDomain


def _t(a):
    return torch.as_tensor(a, dtype=torch.float64)


def random_cnn(seed: int = 0) -> Graph:
    """A small CNN exercising every IR op: conv, diag, relu, maxpool, sigmoid, tanh, reshape, residual add."""
    rng = np.random.default_rng(seed)
    conv = ConvOperator(_t(rng.normal(size=(3, 2, 3, 3))), (2, 6, 6), (1, 1), (1, 1))
    nodes = [
        Input("x", (), (2, 6, 6)),
        Affine("c1", ("x",), (3, 6, 6), conv, _t(rng.normal(size=(3, 1, 1)))),
        Relu("r1", ("c1",), (3, 6, 6)),
        Affine("bn", ("r1",), (3, 6, 6), DiagonalOperator(_t(rng.uniform(0.5, 2, (3, 1, 1))), (3, 6, 6)),
               _t(rng.normal(size=(3, 1, 1)))),
        Add("res", ("bn", "c1"), (3, 6, 6)),
        MaxPool2d("mp", ("res",), (3, 3, 3), (2, 2), (2, 2), (0, 0)),
        Tanh("th", ("mp",), (3, 3, 3)),
        Reshape("fl", ("th",), (27,)),
        Affine("fc", ("fl",), (8,), DenseOperator(_t(rng.normal(size=(8, 27)))), _t(rng.normal(size=8))),
        Sigmoid("sg", ("fc",), (8,)),
        Affine("out", ("sg",), (4,), DenseOperator(_t(rng.normal(size=(4, 8)))), _t(rng.normal(size=4))),
    ]
    return Graph(tuple(nodes), "out", "random_cnn")


@pytest.mark.parametrize("seed", range(3))
def test_box_bounds_contain_sampled_values_at_every_node(seed):
    graph = random_cnn(seed)
    rng = np.random.default_rng(seed)
    center = rng.uniform(0, 1, size=(2, 2, 6, 6))
    lo, hi = center - 0.1, center + 0.1
    prop = propagate(graph, BoxDomain(), _t(lo), _t(hi), keep_all=True)
    for b in range(2):
        xs = lo[b] + rng.uniform(size=(500, 2, 6, 6)) * (hi[b] - lo[b])
        xs[:50] = np.where(rng.uniform(size=(50, 2, 6, 6)) < 0.5, lo[b], hi[b])  # corners
        values = graph.forward(_t(xs), all_nodes=True)
        for name, elem in prop.elements.items():
            v = values[name]
            assert torch.all(v >= elem.lower[b] - 1e-9) and torch.all(v <= elem.upper[b] + 1e-9), name


def test_box_linear_bounds_are_sound():
    graph = random_cnn(5)
    rng = np.random.default_rng(5)
    lo = rng.uniform(0, 0.5, size=(1, 2, 6, 6))
    hi = lo + 0.2
    out = propagate(graph, BoxDomain(), _t(lo), _t(hi)).output
    C = _t(rng.normal(size=(1, 6, 4)))
    d = _t(rng.normal(size=(1, 6)))
    lb = BoxDomain().linear_bounds(out, C, d)[0]
    xs = lo[0] + rng.uniform(size=(2000, 2, 6, 6)) * (hi[0] - lo[0])
    ys = graph.forward(_t(xs))
    vals = ys @ C[0].T + d[0]
    assert torch.all(vals >= lb - 1e-9)


def test_verify_falsifies_with_checked_counterexample_and_verifies_trivial(networks_dir):
    net = absint.load_network(networks_dir / "digits_mlp_2x64.onnx")
    images, labels = absint.load_images(networks_dir / "digits_test.npz", net.input_shape)
    # eps = 0: the region is a point, Box is exact, correctly classified => verified.
    r = absint.verify(net, Instance(linf_ball(images[0], 0.0), robustness_property(int(labels[0]), 10)), analysis="box")
    assert r.verdict is Verdict.VERIFIED and r.margin > 0
    # A huge eps: the attack must find a counterexample, and it must really be one.
    inst = Instance(linf_ball(images[0], 0.5), robustness_property(int(labels[0]), 10))
    r = absint.verify(net, inst, analysis="box")
    assert r.verdict is Verdict.FALSIFIED
    ok, y = check_counterexample(net, inst.region, inst.prop, r.counterexample)
    assert ok and int(np.argmax(y)) != int(labels[0])


def test_verify_robustness_counts_misclassified_as_falsified(networks_dir):
    net = absint.load_network(networks_dir / "digits_mlp_2x64.onnx")
    images, labels = absint.load_images(networks_dir / "digits_test.npz", net.input_shape)
    wrong_label = (labels[:20] + 1) % 10
    res = absint.verify_robustness(net, images[:20], wrong_label, eps=0.0, analysis="box")
    assert all(r.verdict is Verdict.FALSIFIED for r in res)
    res = absint.verify_robustness(net, images[:60], labels[:60], eps=0.005, analysis="box", batch_size=16)
    assert len(res) == 60
    for r, img, lab in zip(res, images[:60], labels[:60]):
        if r.falsified:
            ok, _ = check_counterexample(net, linf_ball(img, 0.005), robustness_property(int(lab), 10), r.counterexample)
            assert ok
    assert sum(r.verified for r in res) >= 30  # tiny eps: Box proves most correctly classified images


def test_batched_and_single_analysis_agree(networks_dir):
    net = absint.load_network(networks_dir / "digits_mlp_2x64.onnx")
    images, labels = absint.load_images(networks_dir / "digits_test.npz", net.input_shape)
    batched = absint.verify_robustness(net, images[:10], labels[:10], 0.01, analysis="box", batch_size=10, attack=False)
    single = absint.verify_robustness(net, images[:10], labels[:10], 0.01, analysis="box", batch_size=1, attack=False)
    for a, b in zip(batched, single):
        assert a.verdict == b.verdict
        if a.margin is not None:
            assert a.margin == pytest.approx(b.margin, abs=1e-9)


def test_sampling_attack_evaluates_each_regions_own_samples(networks_dir, monkeypatch):
    """sample_attack_many draws the unit positions once per shape (issue 13): the points it runs
    are exactly each region's centre and ``region.sample(n, default_rng(seed))``."""
    from absint.attack import sample_attack_many

    net = absint.load_network(networks_dir / "digits_mlp_2x64.onnx")
    images, labels = absint.load_images(networks_dir / "digits_test.npz", net.input_shape)
    problems = [(linf_ball(img, eps), robustness_property(int(lab), 10))
                for img, lab, eps in zip(images[:3], labels[:3], (0.01, 0.05, 0.2))]
    seen = []
    forward = type(net).forward

    def record(self, x, *args, **kwargs):
        seen.append(np.asarray(x, dtype=np.float64).copy())
        return forward(self, x, *args, **kwargs)

    monkeypatch.setattr(type(net), "forward", record)
    sample_attack_many(net, problems, 16, seed=3)
    expect = np.concatenate([np.concatenate([r.center[None], r.sample(16, np.random.default_rng(3))])
                             for r, _ in problems])
    assert np.array_equal(seen[0].reshape(expect.shape), expect)


def test_pgd_attack_finds_acas_counterexample(bench):
    net = absint.load_network(bench / "acasxu/onnx/ACASXU_run2a_4_4_batch_2000.onnx")
    spec = absint.parse_vnnlib(bench / "acasxu/vnnlib/prop_2.vnnlib")  # sat in truth.csv
    inst = spec.instances[0]
    cx = pgd_attack(net, inst.region, inst.prop, AttackOptions(restarts=16, steps=60))
    assert cx is not None
    assert check_counterexample(net, inst.region, inst.prop, cx)[0]


def test_spec_network_mismatch_is_a_clear_error(networks_dir, bench):
    with pytest.raises(absint.SpecError, match="input variables"):
        absint.verify(networks_dir / "digits_mlp_2x64.onnx", bench / "acasxu/vnnlib/prop_1.vnnlib", analysis="box")


def test_unknown_analysis_and_timeout():
    graph = random_cnn(1)
    x = np.full((2, 6, 6), 0.15)
    with torch.no_grad():
        label = int(graph.forward(torch.as_tensor(x[None])).argmax())
    # a point region (eps 0) around a correctly classified input: nothing to falsify, so with no
    # time at all the answer must be unknown because of the time limit
    inst = Instance(absint.InputBox(x, x.copy()), robustness_property(label, 4))
    with pytest.raises(absint.AbsintError, match="unknown analysis"):
        absint.verify(graph, inst, analysis="no-such-analysis")
    for bad in (0.0, -1.0, float("nan"), float("inf"), "10"):
        with pytest.raises(absint.AbsintError, match="timeout must be a finite number of seconds > 0"):
            absint.verify(graph, inst, analysis="box", timeout=bad, attack=False)
    r = absint.verify(graph, inst, analysis="box", timeout=1e-9, attack=False)
    assert r.verdict is Verdict.UNKNOWN and r.reason.startswith("time-out"), r
    assert absint.verify(graph, inst, analysis="box", attack=False).verified  # with time, box proves a point


@pytest.mark.parametrize("kwargs, message", [
    ({"eps": "0.1"}, "eps must be one finite number"), ({"eps": None}, "eps must be one finite number"),
    ({"eps": np.array([0.01, 0.02, 0.03])}, "eps must be one finite number"),
    ({"labels": 3}, "one label per image"), ({"names": ["a"]}, "1 names for 3 images")])
def test_verify_robustness_names_a_wrong_argument(kwargs, message):
    """Wrong-typed arguments once leaked TypeError / ValueError / IndexError from numpy."""
    from absint.errors import SpecError

    net = absint.load_network(absint.bundled("digits_mlp_2x64.onnx"))
    images, labels = absint.load_images(absint.bundled("digits_test.npz"), net.input_shape)
    call = {"eps": 0.01, "labels": labels[:3], **kwargs}
    with pytest.raises(SpecError, match=message):
        absint.verify_robustness(net, images[:3], call.pop("labels"), call.pop("eps"), **call)
