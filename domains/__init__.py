"""Abstract domains for absint: one module per domain (box, zonotope, deeppoly, ...)."""
from absint.domains.base import Domain, NoOptions
from absint.domains.box import BoxDomain, BoxElement

__all__ = ["Domain", "NoOptions", "BoxDomain", "BoxElement"]
