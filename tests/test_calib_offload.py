"""Sampling calibration text from a model too large for the GPU's free memory: the fit decision, the
device map, and sampling with part of the weights streamed from CPU memory, run for real on the CPU."""

import pytest
import torch

from localai.engine.sizing import GIB, MIB, ModelShape, tensor_bytes
from localai.loading import load_model, load_tokenizer
from localai.quant import calib_data
from localai.quant.offload import (dispatched, generation_memory, offload_device_map, plan_sampling,
                                   streamed_bytes)


def test_a_model_that_fits_with_room_for_sampling_moves_whole():
    plan = plan_sampling(model_bytes=14 * GIB, generation_bytes=1 * GIB, available_bytes=23 * GIB,
                         total_bytes=24 * GIB)
    assert plan.fits and plan.margin_bytes == int(0.10 * 24 * GIB)
    assert plan.weight_budget == 23 * GIB - 1 * GIB - plan.margin_bytes


def test_an_8b_model_in_bfloat16_does_not_fit_a_16_gb_card():
    plan = plan_sampling(model_bytes=16_060_522_496, generation_bytes=1 * GIB, available_bytes=15_500 * MIB,
                         total_bytes=16 * GIB)
    assert not plan.fits
    assert 0 < plan.weight_budget < plan.model_bytes
    assert plan.streaming_notice(4 * GIB, "cuda:0") == (
        "the model (15,317 MiB) does not fit in the 15,500 MiB free on cuda:0 with room to sample: 4,096 MiB "
        "of it is streamed from CPU memory, so sampling the calibration text is slower")


def test_the_margin_decides_at_the_boundary():
    total = 8 * GIB
    margin = int(0.10 * total)
    exact = plan_sampling(model_bytes=5 * GIB, generation_bytes=GIB // 2, available_bytes=5 * GIB + GIB // 2 + margin,
                          total_bytes=total)
    assert exact.fits and exact.weight_budget == exact.model_bytes
    short = plan_sampling(model_bytes=5 * GIB + 1, generation_bytes=GIB // 2,
                          available_bytes=5 * GIB + GIB // 2 + margin, total_bytes=total)
    assert not short.fits
    # the weights alone would fit: what generation needs next to them does not
    assert not plan_sampling(model_bytes=5 * GIB, generation_bytes=2 * GIB, available_bytes=6 * GIB,
                             total_bytes=total).fits
    # a small card keeps at least 256 MiB
    small = plan_sampling(model_bytes=0, generation_bytes=0, available_bytes=GIB, total_bytes=GIB)
    assert small.margin_bytes == 256 * MIB
    # less free memory than the margin and the generation: no weights at all, never a negative budget
    full = plan_sampling(model_bytes=1, generation_bytes=GIB, available_bytes=GIB, total_bytes=2 * GIB)
    assert full.weight_budget == 0 and not full.fits


def test_generation_memory_counts_the_kv_cache_of_every_sequence():
    # Llama 3 8B: 32 layers, 8 KV heads of 128, bfloat16 -> 128 KiB of KV cache per token
    shape = ModelShape(layers=32, kv_heads=8, head_dim=128, hidden=4096, intermediate=14336, vocab=128_256,
                       max_positions=8192, dtype_bytes=2)
    kv = calib_data.GENERATE_BATCH * calib_data.SEQ_LEN * 128 * 1024
    assert kv == GIB
    assert kv < generation_memory(shape) < kv + 64 * MIB


def _load(folder):
    return load_model(folder, device="cpu"), load_tokenizer(folder)


def _layer_bytes(model):
    return sum(p.numel() * p.element_size() for p in model.model.layers[0].parameters())


def _run_map(device_map):
    """The map as the GPU path builds it, with the GPU's modules run by the CPU instead.

    dispatch_model offloads the modules mapped to the string "cpu" (weights left in CPU memory, copied to
    the execution device at each forward) whenever the main device is not the string "cpu": with
    torch.device("cpu") as the main device it streams exactly as it does to a GPU, and the CPU computes."""
    cpu = torch.device("cpu")
    return {name: cpu if where == 0 else where for name, where in device_map.items()}


def test_the_device_map_fills_the_gpu_in_order_and_streams_the_rest(tiny_qwen3):
    model, _ = _load(tiny_qwen3)
    layer = _layer_bytes(model)
    embed = model.model.embed_tokens.weight.numel() * 4
    device_map = offload_device_map(model, 0, budget=embed + 2 * layer)  # room for one layer plus the streamed one
    assert device_map["model.embed_tokens"] == 0 and device_map["lm_head"] == 0  # tied: together
    assert device_map["model.layers.0"] == 0 and device_map["model.layers.1"] == "cpu"
    assert "disk" not in device_map.values()
    assert streamed_bytes(model, device_map) == layer + model.model.norm.weight.numel() * 4 + sum(
        b.numel() * b.element_size() for b in model.model.rotary_emb.buffers())
    assert set(offload_device_map(model, 0, budget=0).values()) == {"cpu"}


def _plain_cpu_tensors(model) -> bool:
    return all(type(t) in (torch.Tensor, torch.nn.Parameter) and t.device.type == "cpu"
               for t in list(model.parameters()) + list(model.buffers()))


def _no_hooks(model) -> bool:
    return not any(hasattr(m, "_hf_hook") or hasattr(m, "_old_forward") or "forward" in m.__dict__
                   for m in model.modules()) and not {"to", "cuda", "hf_device_map"} & model.__dict__.keys()


@pytest.mark.parametrize("family", ["llama", "qwen3"])
@pytest.mark.parametrize("budget_layers", [0, 1])  # everything streamed; the embeddings and a layer kept
def test_streamed_sampling_gives_the_same_text_and_leaves_the_model_as_it_was(request, family, budget_layers):
    model, tokenizer = _load(request.getfixturevalue(f"tiny_{family}"))
    before = {name: t.detach().clone() for name, t in model.state_dict().items()}
    expected = calib_data.self_generated(model, tokenizer, tokens=96, seq_len=48, seed=1)

    ends = tensor_bytes(torch.nn.ModuleList([model.model.embed_tokens, model.lm_head]))  # tied: counted once
    budget = 0 if budget_layers == 0 else ends + (budget_layers + 1) * _layer_bytes(model)
    device_map = offload_device_map(model, 0, budget)
    assert "cpu" in device_map.values() and (0 in device_map.values()) == (budget_layers > 0)
    with dispatched(model, _run_map(device_map), main_device=torch.device("cpu")):
        streamed = [n for n, p in model.named_parameters() if p.is_meta]
        assert streamed, "the weights mapped to the CPU wait in CPU memory, not in the modules"
        ids = calib_data.self_generated(model, tokenizer, tokens=96, seq_len=48, seed=1, device="cpu")

    assert torch.equal(ids, expected)
    assert _no_hooks(model) and _plain_cpu_tensors(model)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    if family == "qwen3":
        assert model.lm_head.weight is model.model.embed_tokens.weight


def test_the_model_is_restored_when_sampling_fails(tiny_llama):
    model, tokenizer = _load(tiny_llama)
    device_map = _run_map(offload_device_map(model, 0, budget=0))
    with pytest.raises(RuntimeError, match="stop"):
        with dispatched(model, device_map, main_device=torch.device("cpu")):
            raise RuntimeError("stop")
    assert _no_hooks(model) and _plain_cpu_tensors(model)
    assert calib_data.self_generated(model, tokenizer, tokens=48, seq_len=48, seed=1).shape == (1, 48)


def test_a_model_that_fails_to_move_to_the_device_is_sent_back(tiny_llama, monkeypatch):
    """Moving the model whole can run out of memory part way: the modules already moved go back too."""
    from localai.quant.offload import placed_for_sampling

    model, _ = _load(tiny_llama)
    moves = []

    def to(device):
        moves.append(str(device))
        if len(moves) == 1:
            raise RuntimeError("out of memory")
        return model

    monkeypatch.setattr(model, "to", to)
    with pytest.raises(RuntimeError, match="out of memory"):
        with placed_for_sampling(model, "meta"):
            pass
    assert moves == ["meta", "cpu"]
