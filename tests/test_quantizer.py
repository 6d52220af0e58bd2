"""The TurboQuant quantizer: data-free fit, GPTQ in the rotated basis, layer-by-layer calibration, int4."""

import subprocess
import sys

import pytest
import torch

from localai.errors import LocalaiError
from localai.kernels import reference
from localai.quant import baselines, calib_data, calibrate, gptq, turboquant as tq
from localai.quant.codebook import codebook
from localai.quant.hadamard import random_signs, rotate


def _rel_error(a, b):
    return float((a - b).pow(2).sum() / b.pow(2).sum())


def _close_in_bfloat16(y, ref):
    """torch's int4 kernels take bfloat16 activations: agreement to a few bfloat16 steps of the largest output."""
    return float((y - ref).abs().max()) <= 2 ** -7 * float(ref.abs().max())


@pytest.mark.parametrize("n,k,block,k_padded", [(64, 576, 64, 576), (48, 1536, 128, 1536), (32, 100, 128, 128)])
def test_quantize_weight_shapes_and_error(n, k, block, k_padded):
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(1))
    packed = tq.quantize_weight(w, group_size=64, seed=3)
    assert packed.layout.block == block and packed.layout.k_padded == k_padded
    assert packed.codes.dtype == torch.uint8 and tuple(packed.codes.shape) == (n, k_padded // 2)
    assert packed.gains.dtype == torch.float16 and tuple(packed.gains.shape) == (n, k_padded // 64)
    # Gaussian Lloyd-Max MSE is 0.0095; the per-group scale search must do better
    assert _rel_error(tq.dequantize_weight(packed, seed=3), w) < 0.0092


def test_dequantize_matches_the_kernel_reference():
    w = torch.randn(40, 576)
    packed = tq.quantize_weight(w, group_size=32, seed=7)
    expected = reference.dequantize(packed.codes, packed.gains, 32)
    assert torch.equal(tq.dequantize_rotated(packed), expected)


def test_rotation_round_trip_and_orthogonality():
    w = torch.randn(8, 100)
    layout = tq.make_layout(100)
    w_rot = tq.rotate_weight(w, layout, seed=5)
    assert torch.allclose(tq.unrotate_weight(w_rot, layout, seed=5), w, atol=1e-5)
    x = torch.randn(3, 100)
    x_rot = rotate(x, random_signs(layout.k_padded, 5), layout.block)
    assert torch.allclose(x_rot @ w_rot.T, x @ w.T, atol=1e-4)


def test_fit_group_gain_is_least_squares_and_search_helps():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(500, 64, generator=g) * torch.rand(500, 1, generator=g)
    codes, gains = tq.fit_group(y)
    q = codebook()[codes.long()]
    assert torch.allclose(gains, tq.least_squares_gain(y, q), rtol=1e-5)
    plain_codes = tq._codes_for(y, y.pow(2).mean(-1).sqrt())
    plain_q = codebook()[plain_codes.long()]
    plain_err = (y - tq.least_squares_gain(y, plain_q).unsqueeze(-1) * plain_q).pow(2).sum(-1)
    err = (y - gains.unsqueeze(-1) * q).pow(2).sum(-1)
    assert (err <= plain_err + 1e-6).all() and err.sum() < 0.9 * plain_err.sum()


def test_quantize_weight_in_row_chunks_equals_the_whole_weight(monkeypatch):
    w = torch.randn(23, 96, generator=torch.Generator().manual_seed(4))
    whole = tq.quantize_weight(w, group_size=32, seed=2)
    monkeypatch.setattr(tq, "ROW_CHUNK_BYTES", 5 * 4 * 128)  # 5 rows of 128 padded inputs: a short tail
    chunked = tq.quantize_weight(w, group_size=32, seed=2)
    assert torch.equal(chunked.codes, whole.codes) and torch.equal(chunked.gains, whole.gains)


@pytest.mark.parametrize("value,message", [(float("nan"), "holds NaN or infinite weights"),
                                           (1e9, "has a group of weights too large for float16")])
def test_quantize_weight_names_the_layer_it_cannot_store(value, message):
    w = torch.randn(8, 64)
    w[5, 3] = value
    with pytest.raises(LocalaiError, match=f"^layers.3.ffn.w1 {message}"):
        tq.quantize_weight(w, 64, name="layers.3.ffn.w1")


def test_group_size_that_does_not_divide_is_a_one_line_error():
    with pytest.raises(LocalaiError, match="group size 128 does not divide the padded input size 576"):
        tq.quantize_weight(torch.randn(4, 576), group_size=128)


def _correlated_inputs(tokens, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=g) / k ** 0.5 + torch.eye(k) * 0.3
    return torch.randn(tokens, k, generator=g) @ mix * torch.linspace(0.2, 3.0, k)


def test_float16_rotation_does_not_overflow_on_large_inputs():
    from localai.quant.hadamard import random_signs, rotate

    signs = random_signs(128, 0)
    x = (600 * signs)[None].half()  # every element adds up in the first output: 600 * 128 before the scale
    y = rotate(x, signs, 128)
    assert y.dtype == torch.float16 and torch.isfinite(y).all()
    assert float(y[0, 0]) == pytest.approx(600 * 128 ** 0.5, rel=1e-3)


@pytest.mark.parametrize("bad, message", [(float("nan"), "holds NaN or infinite weights"),
                                          (1e6, "too large for float16"),
                                          (4e4, "too large for float16")])  # a float16 gain, but level x gain is not
def test_weights_that_cannot_be_stored_name_their_layer(tiny_llama, bad, message):
    from localai.errors import LocalaiError

    model, _ = _load(tiny_llama)
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[3, :] = bad
    with pytest.raises(LocalaiError, match=rf"^model\.layers\.1\.mlp\.up_proj .*{message}"):
        calibrate.quantize_data_free(model, calibrate.QuantSpec())


def test_a_hessian_that_cannot_be_factored_names_the_layer():
    from localai.errors import LocalaiError

    linear = torch.nn.Linear(64, 32, bias=False)
    hessian = torch.full((64, 64), float("nan"))
    with pytest.raises(LocalaiError, match="^model.layers.0.mlp.up_proj: the calibration Hessian is not positive"):
        calibrate._quantize_calibrated("model.layers.0.mlp.up_proj", linear, hessian, calibrate.QuantSpec())


def test_rotate_hessian_equals_hessian_of_rotated_inputs():
    x = _correlated_inputs(256, 100)
    layout = tq.make_layout(100)
    signs = random_signs(layout.k_padded, 0)
    x_rot = rotate(x, signs, layout.block)
    assert torch.allclose(gptq.rotate_hessian(x.T @ x, signs, layout.block), x_rot.T @ x_rot, rtol=1e-3, atol=1e-2)


def test_gptq_beats_data_free_on_the_output_error_and_refit_helps():
    k, n = 128, 96
    x = _correlated_inputs(2048, k)
    w = torch.randn(n, k)
    layout = tq.make_layout(k)
    signs = random_signs(layout.k_padded, 0)
    x_rot = rotate(x, signs, layout.block)
    h = x_rot.T @ x_rot
    w_rot = tq.rotate_weight(w, layout, 0)
    codes_df, gains_df = tq.quantize_rotated(w_rot, 64)

    def rebuild(codes, gains):
        return (codebook()[codes.long()].reshape(n, -1, 64) * gains.unsqueeze(-1)).reshape(n, -1)

    err_df = gptq.output_error(w_rot, rebuild(codes_df, gains_df), h)
    codes, gains = gptq.gptq_codes(w_rot, h, 64)
    err_gptq = gptq.output_error(w_rot, rebuild(codes, gains), h)
    refit = gptq.refit_gains(w_rot, h, codes, 64, damp=0.0)
    err_refit = gptq.output_error(w_rot, rebuild(codes, refit), h)
    assert err_gptq < 0.8 * err_df
    assert err_refit <= err_gptq
    refined = gptq.refine_codes(w_rot, h, codes, refit, 64, damp=0.0)
    assert gptq.output_error(w_rot, rebuild(refined, refit), h) < err_refit
    # the refit is the least-squares optimum in the H metric: the gradient vanishes
    q = codebook()[codes.long()].reshape(n, -1, 64)
    grad = ((rebuild(codes, refit) - w_rot) @ h).reshape(n, -1, 64).mul(q).sum(-1)
    assert grad.abs().max() < 1e-3 * (w_rot @ h).abs().max()


def _load(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(folder)


def test_the_gptq_column_loop_builds_no_tensors_from_python_numbers():
    """On a GPU a tensor made from Python numbers is a blocking host-to-device copy: the loops over
    thousands of columns must reuse their constant tables, not rebuild them per column or group."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountNewTensors(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten.lift_fresh.default:  # torch.tensor(python data)
                self.count += 1
            return func(*args, **(kwargs or {}))

    counts = []
    for k in (64, 128, 512):  # the first fills what is built once per device
        w, x = torch.randn(8, k), torch.randn(256, k)
        with CountNewTensors() as counter:
            codes, gains = gptq.gptq_codes(w, x.T @ x, 32)
            gptq.refine_codes(w, x.T @ x, codes, gains, 32)
        counts.append(counter.count)
    assert counts[1] == counts[2] <= 2


def test_input_groups_follow_the_llama_block(tiny_llama):
    model, tokenizer = _load(tiny_llama)
    layers = calibrate.decoder_layers(model)
    ids = torch.randint(3, len(tokenizer), (4, 256), generator=torch.Generator().manual_seed(0))
    linears = {n: m for n, m in layers[0].named_modules() if isinstance(m, torch.nn.Linear)}
    expected = [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
                ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]
    with torch.no_grad():  # as in calibration: intermediate tensors are freed as soon as they are used
        inputs = [(hidden, calls[0]) for hidden, calls in calibrate.capture_layer_inputs(model, layers, ids, "cpu")]
        # every time: o_proj's freed input must not pass for gate/up's when its memory is reused
        for _ in range(40):
            assert calibrate._input_groups(layers[0], linears, inputs[0]) == expected


def test_calibrated_quantization_is_sequential_and_writes_back(tiny_llama):
    model, tokenizer = _load(tiny_llama)
    ids = torch.randint(3, len(tokenizer), (6, 32), generator=torch.Generator().manual_seed(0))
    spec = calibrate.QuantSpec()
    result = calibrate.quantize_calibrated(model, ids, spec)
    names = [r.name for r in result.reports]
    assert names[0] == "model.layers.0.self_attn.q_proj" and names[-1] == "model.layers.1.mlp.down_proj"
    assert len(result.packed) == 14 and "lm_head" not in result.packed
    linear = model.get_submodule("model.layers.1.mlp.up_proj")
    expected = tq.dequantize_weight(result.packed["model.layers.1.mlp.up_proj"], spec.seed)
    assert torch.allclose(linear.weight, expected)
    assert all(0 < r.rel_error < 0.05 for r in result.reports)


def _sliding_qwen3(folder):
    """A tiny Qwen3 whose second layer uses a 4-token sliding window and the first full attention."""
    import json

    from tiny_models import build_model

    build_model(folder, family="qwen3")
    config = json.loads((folder / "config.json").read_text())
    config.update(use_sliding_window=True, sliding_window=4, max_window_layers=1)
    config.pop("layer_types", None)  # derived again from the fields above
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_calibration_gives_every_layer_its_own_attention_mask(tmp_path, monkeypatch):
    model, _ = _load(_sliding_qwen3(tmp_path / "qwen3-sliding"))
    assert model.config.layer_types == ["full_attention", "sliding_attention"]
    ids = torch.randint(3, 300, (3, 24), generator=torch.Generator().manual_seed(0))
    targets = calibrate.target_linears(model, quantize_head=False)
    expected = {}

    def record(name):
        def hook(_module, args):
            x = args[0].reshape(-1, args[0].shape[-1]).float()
            expected[name] = x.T @ x
        return hook

    handles = [m.register_forward_pre_hook(record(n)) for n, m in targets.items()]
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    for handle in handles:
        handle.remove()
    seen = {}

    def keep_weights(name, linear, hessian, spec):  # quantizes nothing: every input stays the model's own
        seen[name] = hessian
        return None, calibrate.LayerReport(name, tuple(linear.weight.shape), 0.0, 0.0)

    monkeypatch.setattr(calibrate, "_quantize_calibrated", keep_weights)
    calibrate.quantize_calibrated(model, ids, calibrate.QuantSpec())
    assert seen.keys() == expected.keys()
    for name, hessian in expected.items():  # the sliding layer's o_proj sees its own mask's output
        torch.testing.assert_close(seen[name], hessian, rtol=1e-4, atol=1e-4, msg=name)


def test_quantize_head_adds_lm_head(tiny_llama):
    model, _ = _load(tiny_llama)
    result = calibrate.quantize_data_free(model, calibrate.QuantSpec(quantize_head=True))
    assert "lm_head" in result.packed and len(result.packed) == 15


def test_data_free_in_row_chunks_equals_the_whole_weight(tiny_llama, monkeypatch):
    model, _ = _load(tiny_llama)
    spec = calibrate.QuantSpec(quantize_head=True)
    whole = calibrate.quantize_data_free(model, spec)
    monkeypatch.setattr(tq, "ROW_CHUNK_BYTES", 7 * 4 * 64)  # 7 rows of 64 inputs: chunks with a short tail
    chunked = calibrate.quantize_data_free(model, spec)
    assert chunked.packed.keys() == whole.packed.keys()
    for name, packed in whole.packed.items():
        assert torch.equal(chunked.packed[name].codes, packed.codes), name
        assert torch.equal(chunked.packed[name].gains, packed.gains), name
    for a, b in zip(chunked.reports, whole.reports):
        assert a.rel_error == pytest.approx(b.rel_error, rel=1e-4) and a.shape == b.shape


def test_int4_round_to_nearest_runs_on_the_int4_kernel():
    w = torch.randn(48, 128)
    parts = baselines.int4_quantize(w, 64)
    w_hat = baselines.int4_dequantize(parts, 64)
    assert _rel_error(w_hat, w) < 0.02
    layer = baselines.Int4Linear(128, 48, 64, bias=True)
    for name, value in parts.items():
        getattr(layer, name).copy_(value)
    layer.bias.data.normal_()
    x = torch.randn(2, 5, 128)
    assert _close_in_bfloat16(layer(x), x @ w_hat.T + layer.bias)
    rows = baselines.CPU_INT4_KERNEL_MAX_ROWS + 1  # past the kernel's batch sizes: dequantize + float32 BLAS
    x = torch.randn(rows, 128)
    assert torch.allclose(layer(x), x @ w_hat.T + layer.bias, atol=1e-3)
    assert _close_in_bfloat16(layer(x[:3]), layer(x)[:3])  # the two paths agree
    with pytest.raises(LocalaiError, match="does not divide"):
        baselines.int4_quantize(torch.randn(4, 96), 64)


@pytest.mark.parametrize("capability, out_features, in_features, fits", [
    ((8, 6), 1536, 576, True),  # RTX 30xx, SmolLM2's up projection
    ((7, 5), 1536, 576, False),  # RTX 20xx: the kernel is built for sm_80 and newer
    ((8, 9), 1540, 576, False),  # N % 8
    ((9, 0), 1536, 592, False),  # K % 32
])
def test_the_cuda_int4_kernel_is_used_only_where_it_runs(capability, out_features, in_features, fits):
    assert baselines.cuda_int4_kernel_fits(capability, out_features, in_features) is fits


def test_int4_layer_follows_new_weights_and_keeps_its_format_through_casts():
    parts = [baselines.int4_quantize(torch.randn(48, 128), 64) for _ in range(2)]
    layer = baselines.Int4Linear(128, 48, 64)
    layer.load_state_dict(parts[0])
    x = torch.randn(3, 128)
    layer(x)  # builds the kernel operands from the first weights
    layer.load_state_dict(parts[1])
    assert _close_in_bfloat16(layer(x), x @ baselines.int4_dequantize(parts[1], 64).T)
    layer.to(torch.bfloat16).float()
    assert layer.scales.dtype == layer.zeros.dtype == torch.float16
    assert torch.equal(layer.scales, parts[1]["scales"]) and torch.equal(layer.zeros, parts[1]["zeros"])


@pytest.mark.parametrize("name, dtype", [("qweight", torch.int32), ("scales", torch.float32), ("zeros", torch.bfloat16)])
def test_int4_state_dict_with_another_dtype_is_refused(name, dtype):
    state = baselines.int4_quantize(torch.randn(48, 128), 64)
    state[name] = state[name].to(dtype)
    with pytest.raises(RuntimeError, match=f"{name} is {dtype}; the packed format stores"):
        baselines.Int4Linear(128, 48, 64).load_state_dict(state)


def test_calibration_from_text_file(tmp_path, tiny_llama):
    _, tokenizer = _load(tiny_llama)
    text = tmp_path / "calib.txt"
    text.write_text("The capital of France is Paris. " * 200)
    ids = calib_data.from_text_file(text, tokenizer, tokens=256, seq_len=64)
    assert tuple(ids.shape) == (4, 64)
    (tmp_path / "short.txt").write_text("Paris.")
    with pytest.raises(LocalaiError, match="fewer than 64 tokens"):
        calib_data.from_text_file(tmp_path / "short.txt", tokenizer, tokens=256, seq_len=64)
    with pytest.raises(LocalaiError, match="no such file"):
        calib_data.from_text_file(tmp_path / "absent.txt", tokenizer)


def test_self_generated_calibration(tiny_llama):
    model, tokenizer = _load(tiny_llama)
    ids = calib_data.self_generated(model, tokenizer, tokens=96, seq_len=48, seed=1)
    assert tuple(ids.shape) == (2, 48)
    assert not set(ids[:, 0].tolist()) & set(tokenizer.all_special_ids)
    again = calib_data.self_generated(model, tokenizer, tokens=96, seq_len=48, seed=1)
    assert torch.equal(ids, again)


def test_import_localai_stays_light_and_registers_with_transformers():
    code = ("import sys, localai; assert 'torch' not in sys.modules and 'transformers' not in sys.modules; "
            "from transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING as Q, "
            "AUTO_QUANTIZATION_CONFIG_MAPPING as C; "
            "assert {'turboquant', 'int4_rtn'} <= set(Q) and {'turboquant', 'int4_rtn'} <= set(C); print('ok')")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "ok"

