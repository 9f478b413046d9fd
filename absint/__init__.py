"""absint: abstract interpretation for certifying the robustness of neural networks.

Quick start::

    import absint
    net = absint.load_network("networks/digits_mlp_2x64.onnx")
    images, labels = absint.load_images("networks/digits_test.npz", net.input_shape)
    results = absint.verify_robustness(net, images[:50], labels[:50], eps=0.02, analysis="deeppoly")
    print(absint.format_table(results))

    result = absint.verify("net.onnx", "prop.vnnlib", analysis="deeppoly", timeout=60)
"""
import os as _os

# The repository keeps domains/ and solvers/ as top-level folders (the design card); they import as
# absint.domains and absint.solvers. An installed wheel places them inside this package (setup.cfg
# package_dir); in a source checkout they are found through the checkout root, added here.
_checkout = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if not _os.path.isdir(_os.path.join(__path__[0], "domains")) and _os.path.isfile(
        _os.path.join(_checkout, "domains", "__init__.py")):
    __path__.append(_checkout)
from absint.analyses import Analysis, BoundResult, available_analyses, get_analysis, register_analysis
from absint.attack import AttackOptions, pgd_attack
from absint.data import load_images
from absint.errors import AbsintError, ModelError, SpecError, UnsupportedOpError, VnnlibParseError
from absint.interpreter import propagate
from absint.ir import Graph
from absint.plugins import available_domains, register_domain
from absint.results import Result, Verdict, format_table, results_to_csv, results_to_json, summarize
from absint.specs import Clause, InputBox, Instance, LinfBall, OutputProperty, Spec, linf_ball, robustness_property
from absint.verify import load_network, verify, verify_instance, verify_robustness
from absint.vnnlib import parse_vnnlib

__version__ = "0.1.0"

__all__ = [
    "AbsintError", "Analysis", "AttackOptions", "BoundResult", "Clause", "Graph", "InputBox", "Instance",
    "LinfBall", "ModelError", "OutputProperty", "Result", "Spec", "SpecError", "UnsupportedOpError", "Verdict",
    "VnnlibParseError", "available_analyses", "available_domains", "format_table", "get_analysis",
    "linf_ball", "load_images", "load_network", "parse_vnnlib", "pgd_attack", "propagate", "register_analysis",
    "register_domain", "results_to_csv", "results_to_json", "robustness_property", "summarize", "verify",
    "verify_instance", "verify_robustness",
]
