"""Frontends: lower network files and torch modules to the absint IR."""
from absint.frontends.onnx_loader import load_onnx

__all__ = ["load_onnx"]
