"""Abstract domains for absint: one module per domain (box, zonotope, deeppoly, ...)."""
from domains.base import Domain, NoOptions
from domains.box import BoxDomain, BoxElement

__all__ = ["Domain", "NoOptions", "BoxDomain", "BoxElement"]
