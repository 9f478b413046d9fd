"""PyTorch frontend: Sequential lowering and the ONNX-export path for other modules."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from absint.errors import UnsupportedOpError
from absint.frontends.torch_loader import load_torch


def test_sequential_with_common_layers_matches_torch():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(4)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), bn, nn.ReLU(), nn.MaxPool2d(2),
                          nn.Sequential(nn.Conv2d(4, 6, 3, stride=1, padding=1), nn.Tanh()), nn.AvgPool2d(2),
                          nn.Flatten(), nn.Dropout(0.5), nn.Linear(24, 16), nn.Sigmoid(), nn.BatchNorm1d(16),
                          nn.Identity(), nn.Linear(16, 5))
    model[-3].running_mean.uniform_(-1, 1)
    graph = load_torch(model, (1, 8, 8))
    x = torch.rand(7, 1, 8, 8, dtype=torch.float64)
    ref = model.eval().double()(x)
    assert torch.allclose(graph.forward(x), ref, atol=1e-10)


def test_module_with_residual_goes_through_onnx():
    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(6, 6)
            self.b = nn.Linear(6, 3)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)) + x)

    torch.manual_seed(1)
    model = Res()
    graph = load_torch(model, (6,))
    x = torch.rand(5, 6)
    assert torch.allclose(graph.forward(x.double()).float(), model(x), atol=1e-5)
    assert any(n.kind == "Add" for n in graph.nodes)


def test_unsupported_layer_is_named():
    model = nn.Sequential(nn.Linear(3, 3), nn.GELU(), nn.LayerNorm(3))
    with pytest.raises(UnsupportedOpError) as exc:
        load_torch(model, (3,))
    assert {op for _, op, _ in exc.value.unsupported} == {"GELU", "LayerNorm"}
