"""absint-symint: the symbolic-interval domain of ReluVal as an absint plugin.

Installing the package registers the domain through the ``absint.domains`` entry point (see
setup.cfg), so ``absint list`` shows it and ``absint verify -a symint`` uses it.
"""
from absint_symint.domain import Equations, SymIntDomain, SymIntElement, SymIntOptions

__version__ = "0.1.0"
__all__ = ["Equations", "SymIntDomain", "SymIntElement", "SymIntOptions"]
