"""The conformance kit (absint.testing) on every registered domain, and on domains broken on purpose.

Parametrised over ``available_domains()``, so a new built-in (or an installed plugin) is checked
as soon as it registers. The example plugin (examples/absint-symint) is imported from its source
path when it is not installed, so it is checked here too.
"""
from __future__ import annotations

import pickle
import random
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import absint  # noqa: F401  (absint before domains: see docs/writing-a-domain.md)
from absint.linear import ConvOperator
from absint.registry import available_domains
from absint.testing import CHECKS, CheckResult, ConformanceReport, check_domain, domain_conformance_tests, run_check
from absint.domains.box import BoxDomain, BoxElement

torch.set_num_threads(1)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "absint-symint"


def _domains() -> dict[str, type]:
    domains = dict(available_domains())
    if "symint" not in domains:
        sys.path.insert(0, str(EXAMPLE))
        from absint_symint import SymIntDomain

        domains["symint"] = SymIntDomain
    return domains


DOMAINS = _domains()


@pytest.mark.parametrize("check", CHECKS)
@pytest.mark.parametrize("name", sorted(DOMAINS))
def test_registered_domain_conforms(name: str, check: str) -> None:
    result = run_check(DOMAINS[name], check)
    if result.status == "skipped":
        pytest.skip(result.message)


def test_symint_neurify_conforms() -> None:
    from absint_symint import SymIntOptions

    report = check_domain(DOMAINS["symint"], options=SymIntOptions(relu="neurify"), seed=1)
    assert report.passed and len(report.results) == len(CHECKS)


# -- domains broken on purpose: each must fail the check named next to it -----------------------
class _UnsoundAffine(BoxDomain):
    name = "t_bad_affine"

    def affine(self, x, op, bias):
        c = op.forward((x.upper + x.lower) / 2) + (0 if bias is None else bias)
        r = op.forward((x.upper - x.lower) / 2).abs()  # |A r| instead of |A| r
        return BoxElement(c - r, c + r)


class _UnsoundConv(BoxDomain):
    name = "t_bad_conv"

    def affine(self, x, op, bias):
        e = BoxDomain.affine(self, x, op, bias)
        return BoxElement(e.lower, e.upper - 0.01) if isinstance(op, ConvOperator) else e


class _UnsoundRelu(BoxDomain):
    name = "t_bad_relu"

    def relu(self, x):
        return BoxElement(x.lower.clamp(min=0), x.upper.clamp(min=0) * 0.9)


class _MutatingRelu(BoxDomain):
    name = "t_mutating"

    def relu(self, x):
        x.lower.clamp_(min=0)
        x.upper.clamp_(min=0)
        return BoxElement(x.lower, x.upper)


class _Unpicklable(BoxDomain):
    name = "t_unpicklable"

    def relu(self, x):
        e = BoxDomain.relu(self, x)
        object.__setattr__(e, "hook", lambda: None)
        return e


class _Random(BoxDomain):
    name = "t_random"

    def relu(self, x):
        return BoxElement(x.lower.clamp(min=0) - random.random() * 1e-3, x.upper.clamp(min=0))


class _BatchLeak(BoxDomain):
    name = "t_batch_leak"

    def relu(self, x):  # sound, but mixes the regions of a batch
        return BoxElement(x.lower.clamp(min=0), x.upper.clamp(min=0).amax(0, keepdim=True).expand_as(x.upper))


class _Looser(BoxDomain):
    name = "t_looser"

    def relu(self, x):
        return BoxElement(x.lower.clamp(min=0) - 0.01, x.upper.clamp(min=0))


class _UnsoundSigmoid(BoxDomain):
    name = "t_bad_sigmoid"

    def sigmoid(self, x):
        return BoxElement(torch.sigmoid(x.lower) + 0.05 * (x.upper - x.lower), torch.sigmoid(x.upper))


class _UnsoundTanh(BoxDomain):
    name = "t_bad_tanh"

    def tanh(self, x):
        return BoxElement(torch.tanh(x.lower), torch.tanh(x.upper) - 0.05 * (x.upper - x.lower))


class _UnsoundMaxpool(BoxDomain):
    name = "t_bad_maxpool"

    def maxpool(self, x, kernel, stride, padding):
        lower = F.max_pool2d(x.lower, kernel, stride, padding)
        return BoxElement(lower, F.avg_pool2d(x.upper, kernel, stride, padding))  # avg ≤ max: unsound


class _UnsoundLinearBounds(BoxDomain):
    name = "t_bad_linear_bounds"

    def linear_bounds(self, x, C, d=None):
        out = (C * ((x.lower + x.upper) / 2).reshape(x.lower.shape[0], 1, -1)).sum(-1)
        return out if d is None else out + d


class _UnsoundMeet(BoxDomain):
    name = "t_bad_meet"

    def meet_box(self, x, lower, upper):
        return BoxElement(torch.maximum(x.lower, lower + 0.2 * (upper - lower)), torch.minimum(x.upper, upper))


class _UnsoundAdd(BoxDomain):
    name = "t_bad_add"

    def add(self, x, y):
        return BoxElement(x.lower + y.lower, x.upper + y.lower)


class _UnsoundReshape(BoxDomain):
    name = "t_bad_reshape"

    def reshape(self, x, shape):
        b = x.batch_size
        return BoxElement(x.lower.flip(-1).reshape(b, *shape), x.upper.flip(-1).reshape(b, *shape))


class _UnsoundFromBox(BoxDomain):
    name = "t_bad_from_box"

    def from_box(self, lower, upper):
        lo, hi = self.tensor(lower), self.tensor(upper)
        return BoxElement(lo, (lo + hi) / 2)


BROKEN = [(_UnsoundAffine, "affine_dense"), (_UnsoundConv, "affine_conv"), (_UnsoundRelu, "relu"),
          (_MutatingRelu, "inputs_not_mutated"), (_Unpicklable, "picklable"), (_Random, "deterministic"),
          (_BatchLeak, "batching"), (_Looser, "not_looser_than_box"), (_UnsoundSigmoid, "sigmoid"),
          (_UnsoundTanh, "tanh"), (_UnsoundMaxpool, "maxpool"), (_UnsoundLinearBounds, "linear_bounds"),
          (_UnsoundMeet, "meet_box"), (_UnsoundAdd, "add"), (_UnsoundReshape, "reshape"),
          (_UnsoundFromBox, "from_box")]


@pytest.mark.parametrize("cls,check", BROKEN, ids=[c for _, c in BROKEN])
def test_kit_catches_broken_domain(cls: type, check: str) -> None:
    with pytest.raises(AssertionError, match=f"failed check '{check}'"):
        run_check(cls, check)
    report = check_domain(cls, raise_on_failure=False, quick=True)
    assert check in {r.name for r in report.failures}


def test_check_domain_raises_one_message_naming_every_failure() -> None:
    with pytest.raises(AssertionError) as info:
        check_domain(_UnsoundRelu)
    text = str(info.value)
    assert "'t_bad_relu'" in text and "  - relu:" in text and "  - network_mlp:" in text


class _Declared(_Looser):
    name = "t_declared"
    never_looser_than_box = False


class _NoSigmoid(BoxDomain):
    name = "t_no_sigmoid"

    def sigmoid(self, x):
        raise NotImplementedError("no sigmoid here")


def test_declared_box_exception_is_honoured() -> None:
    Declared = _Declared
    report = check_domain(Declared)
    assert {r.name: r.status for r in report.results}["not_looser_than_box"] == "skipped"
    with pytest.raises(AssertionError, match="looser than Box"):
        check_domain(Declared, checks=["not_looser_than_box"], never_looser_than_box=True)


def test_report_api() -> None:
    report = check_domain(BoxDomain(), quick=True, skip=["batching"], seed=3)
    assert isinstance(report, ConformanceReport) and report.passed and report.domain == "box"
    assert [r.name for r in report.results] == [c for c in CHECKS if c != "batching"]
    assert all(isinstance(r, CheckResult) and r.status == "passed" for r in report.results)
    assert "passed" in str(report) and "network_cnn" in str(report)
    pickle.dumps(report)
    with pytest.raises(ValueError, match="unknown check"):
        run_check(BoxDomain, "nope")


def test_unsupported_optional_transformer_is_skipped_not_failed() -> None:
    report = check_domain(_NoSigmoid, quick=True)
    status = {r.name: r for r in report.results}
    assert status["sigmoid"].status == "skipped" and "no sigmoid here" in status["sigmoid"].message
    assert status["network_mlp"].status == "passed"


def test_pytest_helper_is_parametrised_over_checks() -> None:
    fn = domain_conformance_tests(BoxDomain, quick=True, skip=["picklable"])
    marks = [m for m in fn.pytestmark if m.name == "parametrize"]
    assert marks and list(marks[0].args[1]) == [c for c in CHECKS if c != "picklable"]
    fn("relu")  # runs one check; raises on failure
    bad = domain_conformance_tests(_UnsoundRelu)
    with pytest.raises(AssertionError):
        bad("relu")
