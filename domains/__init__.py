"""Abstract domains for absint: one module per domain (box, zonotope, deeppoly, ...)."""
# absint must be initialised first: domains.base imports absint.linear, and absint's package
# __init__ imports the interpreter, which imports domains.base (a cycle if domains comes first).
import absint  # noqa: F401
from domains.base import Domain, NoOptions
from domains.box import BoxDomain, BoxElement

__all__ = ["Domain", "NoOptions", "BoxDomain", "BoxElement"]
