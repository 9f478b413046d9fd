"""The decision path runs analyses with a bounded torch thread count (``threads`` of
:func:`absint.verify.verify`): the count inside the analysis is what the option says, and the
caller's setting is restored afterwards (torch.set_num_threads is process-wide).

Why: with torch's default of one thread per core, a loaded 2-core machine made the bab search
~200x slower (each of its many small tensor ops waited for a descheduled intra-op thread)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import absint  # noqa: F401
from absint.analyses import get_analysis
from absint.errors import InvalidArgumentError
from absint.specs import Clause, InputBox, Instance, OutputProperty
from absint.testing import random_mlp
from absint.verify import DEFAULT_THREADS, torch_threads, verify, verify_robustness


def _spy(name: str, seen: list[int]):
    an = get_analysis(name)
    inner = an.bound

    def bound(*a, **k):
        seen.append(torch.get_num_threads())
        return inner(*a, **k)

    an.bound = bound  # type: ignore[method-assign]
    return an


def _instance():
    box = InputBox(-np.ones(4) * 0.1, np.ones(4) * 0.1)
    prop = OutputProperty((Clause(np.array([[-1.0, 1.0, 0.0]]), np.array([-100.0])),), 3)
    return Instance(box, prop, "t")


@pytest.mark.parametrize("threads,expect", [(None, 3), (1, 1), (2, 2)])
def test_analysis_runs_with_the_option_and_the_setting_is_restored(threads, expect):
    g = random_mlp(0, (4, 8, 3))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        seen: list[int] = []
        r = verify(g, _instance(), analysis=_spy("deeppoly", seen), attack=False, threads=threads)
        assert r.verified
        assert seen and all(s == expect for s in seen)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_default_is_one_thread_in_verify_and_verify_robustness():
    assert DEFAULT_THREADS == 1
    g = random_mlp(0, (4, 8, 3))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        seen: list[int] = []
        verify(g, _instance(), analysis=_spy("deeppoly", seen), attack=False)
        x = np.zeros((1, 4))
        with torch.no_grad():
            lab = int(g.forward(torch.as_tensor(x)).argmax())
        verify_robustness(g, x, [lab], 0.01, analysis=_spy("deeppoly", seen), clip=None, attack=False)
        assert seen and set(seen) == {1}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_restored_after_an_error_and_bad_values_rejected():
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError):
        with torch_threads(1 if before != 1 else 2):
            raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    for bad in (0, -1, 1.5, True):
        with pytest.raises(InvalidArgumentError):
            with torch_threads(bad):
                pass
