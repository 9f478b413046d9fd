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


def test_float64_model_loads_and_is_left_as_given():
    """A float64 Sequential once failed the shape probe (float32 zeros); the model's dtype and
    training flag must not change by loading it."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double().train()
    graph = load_torch(model, (3,))
    x = torch.rand(5, 3, dtype=torch.float64)
    assert torch.allclose(graph.forward(x), model(x), atol=1e-12)
    assert model[0].weight.dtype == torch.float64 and model.training
    other = nn.Sequential(nn.Linear(3, 2)).train()
    load_torch(other, (3,))
    assert other[0].weight.dtype == torch.float32 and other.training


def test_bad_input_shape_and_batch_statistics_are_clear_errors():
    from absint.errors import ModelError

    with pytest.raises(ModelError, match="input_shape"):
        load_torch(nn.Sequential(nn.Linear(3, 2)), (4,))
    for bn in (nn.BatchNorm1d(2, track_running_stats=False),):
        with pytest.raises(UnsupportedOpError, match="running statistics"):
            load_torch(nn.Sequential(nn.Linear(3, 2), bn), (3,))
    with pytest.raises(UnsupportedOpError, match="running statistics"):
        load_torch(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, track_running_stats=False), nn.Flatten()),
                   (1, 5, 5))


@pytest.mark.parametrize("dim, ok", [(1, True), (-1, True), (None, True), (0, False)])
def test_final_softmax_is_dropped_only_over_all_outputs(dim, ok):
    """Over the batch axis every output is 1: dropping that Softmax once proved ``y0 > y1``."""
    model = nn.Sequential(nn.Linear(3, 4), nn.Softmax(dim=dim))
    if ok:
        assert load_torch(model, (3,)).meta["output_softmax"]
    else:
        with pytest.raises(UnsupportedOpError, match="Softmax"):
            load_torch(model, (3,))
    with pytest.raises(UnsupportedOpError, match="several groups"):
        load_torch(nn.Sequential(nn.Linear(3, 4), nn.Unflatten(1, (2, 2)), nn.Softmax(dim=-1)), (3,))
