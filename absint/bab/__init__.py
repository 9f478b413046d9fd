"""Complete verification by branch and bound (issue #8).

* :class:`BabAnalysis` — the ``bab`` analysis (``absint verify -a bab``), options
  :class:`BabOptions`: bounding domain by name, ``input`` / ``relu`` / ``auto`` splitting, batch
  size, memory bound, workers.
* :func:`relu_branch_and_bound` — ReLU-split BaB with α/β bounding from root bounds proved
  elsewhere (the entry refinement uses).

Modules: :mod:`.engine` (the loop), :mod:`.input_split`, :mod:`.relu_split` (strategies),
:mod:`.bounding` (domain calls with split constraints), :mod:`.beta` (optimised α/β bounds of
ReLU-split sub-problems, ``BabOptions(bounding="alpha-beta")``), :mod:`.queue` (bounded queue).
"""
from absint.bab.analysis import BabAnalysis, default_domain, relu_branch_and_bound
from absint.bab.engine import SearchResult
from absint.bab.options import BabOptions

__all__ = ["BabAnalysis", "BabOptions", "SearchResult", "default_domain", "relu_branch_and_bound"]
