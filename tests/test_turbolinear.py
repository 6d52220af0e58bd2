"""TurboLinear as a drop-in nn.Linear: matches the dense matmul with its dequantized weight,
keeps the packed format through dtype casts and state dicts, and compiles with fullgraph."""

import pytest
import torch
from torch import nn

from localai.quant.linear import TurboLinear
from localai.quant.turboquant import dequantize_weight, quantize_weight


def turbo_from(dense: nn.Linear, group: int = 64, seed: int = 3) -> tuple[TurboLinear, torch.Tensor]:
    """A TurboLinear for `dense` and the dense weight it stands for (dequantized, original basis)."""
    p = quantize_weight(dense.weight.data, group, seed=seed)
    bias = dense.bias.data if dense.bias is not None else None
    layer = TurboLinear.from_packed(p.codes, p.gains, dense.in_features, group, seed, bias=bias)
    return layer, dequantize_weight(p, seed)


def rel_err(got, ref):
    return ((got.float() - ref.float()).norm() / ref.float().norm()).item()


@pytest.mark.parametrize("in_features,out_features,group", [(576, 1536, 64), (1536, 576, 64), (100, 33, 32)])
@pytest.mark.parametrize("batch", [1, 17])
def test_matches_dense_matmul_with_the_dequantized_weight(in_features, out_features, group, batch):
    torch.manual_seed(0)
    dense = nn.Linear(in_features, out_features)
    layer, w = turbo_from(dense, group)
    x = torch.randn(2, batch, in_features)  # any leading dims
    y = layer(x)
    assert y.shape == (2, batch, out_features) and y.dtype == torch.float32
    assert rel_err(y, x @ w.T + dense.bias) < 1e-5


def test_output_dtype_follows_the_input():
    torch.manual_seed(0)
    layer, w = turbo_from(nn.Linear(576, 192, bias=False))
    x = torch.randn(5, 576)
    y = layer(x.bfloat16())
    assert y.dtype == torch.bfloat16
    assert rel_err(y, x.bfloat16().float() @ w.T) < 1e-2


def test_quantized_layer_is_close_to_the_original():
    torch.manual_seed(0)
    dense = nn.Linear(576, 576)
    layer, _ = turbo_from(dense)
    x = torch.randn(8, 576)
    assert rel_err(layer(x), dense(x)) < 0.15  # 4-bit error, not a bug-sized one


def test_dtype_casts_keep_the_packed_format():
    torch.manual_seed(0)
    layer, _ = turbo_from(nn.Linear(576, 192))
    x = torch.randn(3, 576)
    before = layer(x)
    layer = layer.to(torch.bfloat16)
    assert layer.gains.dtype == torch.float16 and layer.codes.dtype == torch.uint8
    assert layer.signs.dtype == torch.float32 and layer.bias.dtype == torch.bfloat16
    layer = layer.float()
    torch.testing.assert_close(layer(x), before, rtol=1e-2, atol=1e-2)  # bias went through bf16


def test_state_dict_round_trip_saves_codes_and_gains_only():
    torch.manual_seed(0)
    layer, _ = turbo_from(nn.Linear(100, 33), group=32)
    state = layer.state_dict()
    assert set(state) == {"codes", "gains", "bias"}
    fresh = TurboLinear(100, 33, group_size=32, seed=3)
    fresh.load_state_dict(state)
    x = torch.randn(4, 100)
    torch.testing.assert_close(fresh(x), layer(x))


@pytest.mark.parametrize("name, value", [("codes", torch.full((33, 64), 300, dtype=torch.int32)),
                                         ("gains", torch.full((33, 4), 1e6))])
def test_state_dict_with_another_dtype_is_refused(name, value):
    layer = TurboLinear(100, 33, group_size=32)
    state = dict(layer.state_dict(), **{name: value})
    with pytest.raises(RuntimeError, match=f"{name} is {value.dtype}; the packed format stores"):
        layer.load_state_dict(state)


def test_materialized_from_meta_rebuilds_the_signs():
    torch.manual_seed(0)
    layer, _ = turbo_from(nn.Linear(576, 192))
    ghost = TurboLinear(576, 192, seed=3, device="meta")
    ghost = ghost.to_empty(device="cpu")  # buffers are uninitialized memory now
    ghost.load_state_dict(layer.state_dict())
    x = torch.randn(2, 576)
    torch.testing.assert_close(ghost(x), layer(x))
    # codes assigned in place (as a loader does) on a layer still holding meta signs
    lazy = TurboLinear(576, 192, seed=3, device="meta")
    lazy.codes, lazy.gains, lazy.bias = layer.codes, layer.gains, layer.bias
    torch.testing.assert_close(lazy(x), layer(x))


def test_extra_repr_and_attributes():
    layer = TurboLinear(576, 1536, bias=False, group_size=64, seed=7)
    assert (layer.in_features, layer.out_features, layer.block, layer.k_padded) == (576, 1536, 64, 576)
    assert repr(layer) == "TurboLinear(in_features=576, out_features=1536, bias=False, group_size=64, block=64, seed=7)"
    assert TurboLinear(100, 8).k_padded == 128  # 100 inputs pad to one 128 block


@pytest.mark.parametrize("kwargs", [dict(group_size=128), dict(group_size=7), dict(block=96)])
def test_bad_layout_is_rejected(kwargs):
    with pytest.raises(ValueError):
        TurboLinear(576, 64, **kwargs)


def test_from_packed_rejects_mismatched_tensors():
    p = quantize_weight(torch.randn(64, 576), 64, seed=1)
    with pytest.raises(ValueError, match="do not fit"):
        TurboLinear.from_packed(p.codes, p.gains, 1536, 64, 1)
    with pytest.raises(ValueError, match="do not fit"):
        TurboLinear.from_packed(p.codes, p.gains[:, :4], 576, 64, 1)


def test_compiles_with_fullgraph():
    torch.manual_seed(0)
    layer, _ = turbo_from(nn.Linear(576, 192))
    model = nn.Sequential(nn.Linear(64, 576), layer, nn.ReLU())
    x = torch.randn(3, 7, 64)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))
