"""absint.optim.Adam: the same steps as torch.optim.Adam (bit for bit), without importing torch._dynamo."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from absint.optim import Adam, ExponentialDecay


def _quadratic_steps(make_opt, make_sched, steps: int = 25) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(7, dtype=torch.float64, generator=g).requires_grad_(True)
    b = torch.randn(3, 2, dtype=torch.float64, generator=g).requires_grad_(True)
    c = torch.randn(4, dtype=torch.float64, generator=g).requires_grad_(True)  # no gradient on odd steps
    target = torch.randn(7, dtype=torch.float64, generator=g)
    opt = make_opt([{"params": [a, b], "lr": 0.1}, {"params": [c], "lr": 0.03}])
    sched = make_sched(opt) if make_sched else None
    for k in range(steps):
        opt.zero_grad()
        loss = ((a - target) ** 2).sum() + (b ** 3).sum() + (a[:3] * b.sum()).sum()
        if k % 2 == 0:
            loss = loss + (c.exp() - 1).pow(2).sum()
        loss.backward()
        opt.step()
        if sched:
            sched.step()
    return [a.detach(), b.detach(), c.detach()]


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("decay", [None, 0.93])
def test_adam_matches_torch_bit_for_bit(decay, fused, monkeypatch):
    """With torch's fused kernel the steps equal ``torch.optim.Adam(fused=True)``'s; without it (an
    older torch, another device) the textbook update equals the plain ``torch.optim.Adam``'s."""
    import absint.optim as optim

    if not fused:
        monkeypatch.setattr(optim, "_fused_step", lambda *a: False)
    elif getattr(torch, "_fused_adam_", None) is None:
        pytest.skip("this torch has no fused Adam kernel")
    ours = _quadratic_steps(Adam, (lambda o: ExponentialDecay(o, decay)) if decay else None)
    ref = _quadratic_steps(lambda groups: torch.optim.Adam(groups, fused=fused),
                           (lambda o: torch.optim.lr_scheduler.ExponentialLR(o, decay)) if decay else None)
    for x, y in zip(ours, ref):
        assert torch.equal(x, y)


def test_fused_and_textbook_steps_agree_to_rounding(monkeypatch):
    import absint.optim as optim

    fused = _quadratic_steps(Adam, None, steps=60)
    monkeypatch.setattr(optim, "_fused_step", lambda *a: False)
    plain = _quadratic_steps(Adam, None, steps=60)
    for x, y in zip(fused, plain):
        assert torch.allclose(x, y, rtol=1e-12, atol=1e-12)


def test_bound_optimisers_do_not_import_torch_dynamo():
    """torch.optim's first optimiser imports torch._dynamo (0.8-3 s per process)."""
    code = ("import sys, absint, numpy as np\n"
            "net = absint.load_network(absint.bundled('digits_mlp_2x64.onnx'))\n"
            "x, y = absint.load_images(absint.bundled('digits_test.npz'), net.input_shape)\n"
            "for a in ('alphapoly', 'kpoly'):\n"
            "    absint.verify_robustness(net, x[:2], y[:2], 0.05, analysis=a, attack=False)\n"
            "print('torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"
