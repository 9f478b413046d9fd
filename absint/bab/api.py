"""``verify_bab``: :func:`absint.verify.verify` with a configured ``bab`` analysis.

:class:`~absint.bab.analysis.BabAnalysis` is clause-aware, so ``verify`` hands it each row's
clause and decides from the proved per-clause margins (a clause may be refuted by different rows
on different sub-boxes, as in ACAS Xu properties 2–4). This wrapper only builds the analysis
from keyword options and skips ``verify``'s extra attack rounds: the search already alternates
attacks with bounding.
"""
from __future__ import annotations

from typing import Any

from absint.bab.analysis import BabAnalysis
from absint.bab.options import BabOptions
from absint.results import Result
from absint.verify import verify


def verify_bab(network: Any, spec: Any, *, timeout: float | None = None, attack: bool = True,
               options: BabOptions | None = None, name: str | None = None, device=None, **fields: Any) -> Result:
    """Verify ``spec`` on ``network`` by branch and bound (``fields`` override :class:`BabOptions`)."""
    an = BabAnalysis(device=device, options=options, **fields)
    return verify(network, spec, analysis=an, timeout=timeout, attack=attack, name=name, device=device,
                  tolerance=an.bab_options.tolerance, attack_budget=0.0)
