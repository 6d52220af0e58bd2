"""The TurboQuant / int4 checkpoint: save, load through transformers, validation of damaged folders."""

import json
import shutil

import pytest
import torch

from localai.errors import LocalaiError
from localai.quant import baselines, calibrate, checkpoint


def _load_fp(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval(),
            AutoTokenizer.from_pretrained(folder))


def _from_pretrained(folder):
    import localai  # noqa: F401  (registers the formats with transformers)
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def quantized(tiny_llama, tmp_path_factory):
    """A data-free TurboQuant checkpoint of the tiny Llama, everything else stored in fp32."""
    model, tokenizer = _load_fp(tiny_llama)
    spec = calibrate.QuantSpec(group_size=32, seed=11)
    result = calibrate.quantize_data_free(model, spec)
    out = tmp_path_factory.mktemp("ckpt") / "tq"
    checkpoint.save_quantized(model, tokenizer, result.packed, spec, out, dtype=torch.float32)
    return out, model, result.packed, spec


def _in_memory_turbo(model, packed, spec):
    """The same model with its linears swapped for TurboLinear built from the packed tensors."""
    from localai.quant.linear import TurboLinear

    for name, weight in packed.items():
        linear = model.get_submodule(name)
        parent, _, child = name.rpartition(".")
        layer = TurboLinear.from_packed(weight.codes, weight.gains, linear.in_features, spec.group_size,
                                        spec.seed, block=weight.layout.block)
        setattr(model.get_submodule(parent), child, layer)
    return model


def test_save_writes_the_format(quantized):
    out, _, packed, _ = quantized
    config = json.loads((out / "config.json").read_text())
    qc = config["quantization_config"]
    assert qc["quant_method"] == "turboquant" and qc["bits"] == 4 and qc["rotation"] == "hadamard"
    assert qc["group_size"] == 32 and qc["rotation_seed"] == 11 and qc["max_block"] == 128
    assert qc["modules_to_convert"] == sorted(packed) and qc["modules_not_converted"] == ["lm_head"]
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("model.layers.0.mlp.down_proj.codes").dtype == torch.uint8
        assert f.get_tensor("model.layers.0.mlp.down_proj.gains").dtype == torch.float16
    assert "model.layers.0.mlp.down_proj.weight" not in keys and "lm_head.weight" in keys
    assert (out / "tokenizer.json").is_file()
    assert not list(out.parent.glob(".*partial*"))


def test_from_pretrained_builds_turbolinear_and_logits_match(quantized):
    out, model, packed, spec = quantized
    loaded = _from_pretrained(out)
    layer = loaded.get_submodule("model.layers.0.self_attn.q_proj")
    assert type(layer).__name__ == "TurboLinear" and not hasattr(layer, "weight")
    assert layer.gains.dtype == torch.float16 and layer.seed == 11 and layer.group_size == 32
    reference = _in_memory_turbo(model, packed, spec)
    ids = torch.tensor([[3, 10, 40, 7, 99, 12, 5]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, reference(ids).logits)


def test_validate_accepts_a_good_checkpoint(quantized):
    out = quantized[0]
    assert checkpoint.validate(out)["quant_method"] == "turboquant"


def _copy(out, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(out, target)
    return target


def _edit_config(folder, edit):
    path = folder / "config.json"
    config = json.loads(path.read_text())
    edit(config["quantization_config"])
    path.write_text(json.dumps(config))


@pytest.mark.parametrize("field", ["group_size", "rotation_seed", "modules_to_convert", "bits"])
def test_missing_field_is_named(quantized, tmp_path, field):
    folder = _copy(quantized[0], tmp_path)
    _edit_config(folder, lambda qc: qc.pop(field))
    with pytest.raises(LocalaiError, match=f"lacks {field}"):
        checkpoint.validate(folder)
    with pytest.raises(LocalaiError, match=f"lacks {field}"):
        _from_pretrained(folder)


def test_wrong_group_size_is_a_shape_error(quantized, tmp_path):
    folder = _copy(quantized[0], tmp_path)
    _edit_config(folder, lambda qc: qc.update(group_size=16))
    with pytest.raises(LocalaiError, match=r"gains in .* has shape \[64, 4\] F16, expected \[64, 8\] F16"):
        checkpoint.validate(folder)


def test_invalid_values_are_named(quantized, tmp_path):
    folder = _copy(quantized[0], tmp_path)
    _edit_config(folder, lambda qc: qc.update(rotation="random"))
    with pytest.raises(LocalaiError, match="rotation='random'"):
        checkpoint.validate(folder)
    _edit_config(folder, lambda qc: qc.update(rotation="hadamard", modules_to_convert=["model.norm"]))
    with pytest.raises(LocalaiError, match="'model.norm', which is not a linear layer"):
        checkpoint.validate(folder)


@pytest.mark.parametrize("value, message", [([1], "quantization_config in config.json is not an object"),
                                            ({"bits": 4}, "quantization_config in config.json has no quant_method")])
def test_malformed_quantization_config_is_one_line(quantized, tmp_path, value, message):
    from localai.loading import load_model

    folder = _copy(quantized[0], tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(LocalaiError, match=message):
        checkpoint.validate(folder)
    with pytest.raises(LocalaiError, match=message):
        load_model(folder, device="cpu")


def test_config_transformers_cannot_read_is_one_line(quantized, tmp_path):
    folder = _copy(quantized[0], tmp_path)
    config = json.loads((folder / "config.json").read_text())
    del config["model_type"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(LocalaiError, match="transformers cannot read .*config.json: Unrecognized model"):
        checkpoint.validate(folder)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_weights_are_reported(quantized, tmp_path, damage):
    folder = _copy(quantized[0], tmp_path)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(b"\x13" * 64 if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(LocalaiError, match="model.safetensors is truncated or corrupt"):
        checkpoint.validate(folder)


def test_missing_tensor_is_named(quantized, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _copy(quantized[0], tmp_path)
    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.codes"]
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(LocalaiError, match="lacks the tensor model.layers.1.mlp.up_proj.codes"):
        checkpoint.validate(folder)


def _edit_tensors(folder, edit):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


UP = "model.layers.1.mlp.up_proj"


@pytest.mark.parametrize("damage, message", [
    (lambda t: t.pop(f"{UP}.codes"), f"lacks the tensor {UP}.codes"),
    (lambda t: t.update({f"{UP}.codes": t[f"{UP}.codes"].int()}), rf"{UP}.codes in .* I32, expected .* U8"),
    (lambda t: t.update({f"{UP}.gains": t[f"{UP}.gains"].float()}), rf"{UP}.gains in .* F32, expected .* F16"),
    (lambda t: t[f"{UP}.gains"].view(-1)[5:7].fill_(float("nan")), f"{UP}.gains in .* holds NaN or infinite"),
    (lambda t: t[f"{UP}.gains"].view(-1)[0:1].fill_(float("inf")), f"{UP}.gains in .* holds NaN or infinite"),
    (lambda t: t.update({"model.norm.weight": t["model.norm.weight"][:32].clone()}),
     r"model.norm.weight in .* has shape \[32\], expected \[64\]"),
], ids=["missing codes", "int32 codes", "float32 gains", "nan gains", "inf gains", "norm shape"])
def test_damaged_tensors_are_named_by_validate_and_from_pretrained(quantized, tmp_path, damage, message):
    folder = _copy(quantized[0], tmp_path)
    _edit_tensors(folder, damage)
    with pytest.raises(LocalaiError, match=message):
        checkpoint.validate(folder)
    with pytest.raises(LocalaiError, match=message):  # plain transformers loaded garbage for these
        _from_pretrained(folder)


def test_existing_output_is_refused_and_failures_leave_nothing(quantized, tmp_path):
    out, model, packed, spec = quantized
    with pytest.raises(LocalaiError, match="already exists"):
        checkpoint.output_staging(out)

    class BrokenTokenizer:
        def save_pretrained(self, folder):
            raise OSError("disk went away")

    target = tmp_path / "never"
    with pytest.raises(OSError):
        checkpoint.save_quantized(model, BrokenTokenizer(), packed, spec, target)
    assert list(tmp_path.iterdir()) == []


def test_int4_checkpoint_round_trip(tiny_qwen3, tmp_path):
    model, tokenizer = _load_fp(tiny_qwen3)
    targets = calibrate.target_linears(model, quantize_head=False)
    out = baselines.quantize_int4(model, tokenizer, targets, 32, tmp_path / "int4")
    assert checkpoint.validate(out)["quant_method"] == "int4_rtn"
    loaded = _from_pretrained(out)
    layer = loaded.get_submodule("model.layers.0.mlp.down_proj")
    assert type(layer).__name__ == "Int4Linear"
    # same layer, computed from the stored int4 values directly
    parts = {k: getattr(layer, k) for k in ("qweight", "scales", "zeros")}
    x = torch.randn(3, layer.in_features)
    ref = x @ baselines.int4_dequantize(parts, 32).T  # torch's int4 kernel takes bfloat16 activations
    assert float((layer(x) - ref).abs().max()) <= 2 ** -7 * float(ref.abs().max())
    ids = torch.tensor([[3, 10, 40, 7]])
    with torch.no_grad():
        fp, q = model(ids).logits, loaded(ids).logits
    assert (q - fp).abs().max() < 0.2 * fp.abs().max()


def test_tied_head_is_untied_when_quantized(tiny_qwen3, tmp_path):
    model, tokenizer = _load_fp(tiny_qwen3)
    spec = calibrate.QuantSpec(quantize_head=True)
    result = calibrate.quantize_data_free(model, spec)
    out = checkpoint.save_quantized(model, tokenizer, result.packed, spec, tmp_path / "tq-head")
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    loaded = _from_pretrained(out)
    assert type(loaded.lm_head).__name__ == "TurboLinear"
    assert loaded.model.embed_tokens.weight.dtype == torch.float32


def test_a_tied_head_is_recognised_from_the_config_where_transformers_lists_no_tied_keys(tiny_qwen3):
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_qwen3))
    model.__dict__["all_tied_weights_keys"] = {}  # as transformers 4 models have it: no such list
    tied = checkpoint.tied_names(model)
    assert tied["lm_head.weight"] == ["model.embed_tokens.weight"]
    assert tied["model.embed_tokens.weight"] == ["lm_head.weight"]
    assert "model.norm.weight" not in tied
