"""`localai quantize` on a Voxtral TTS folder: the 4-bit checkpoint, loading it back, speaking with it."""

import json
import shutil

import pytest
import soundfile
import torch

from cli_helpers import invoke_on_cpu, one_error_line
from tiny_models import rewrite_voxtral_weights
from localai.errors import LocalaiError
from localai.quant.linear import TurboLinear
from localai.tts.voxtral.generate import VoxtralSynthesizer
from localai.tts.voxtral.loader import load_model, load_tokenizer
from localai.tts.voxtral.quantize import quantize_voxtral

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def quantized(tiny_voxtral, tmp_path_factory):
    out = tmp_path_factory.mktemp("voxtral-quant") / "tiny-voxtral-tq4"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    result = invoke_on_cpu("-v", "quantize", tiny_voxtral, "-o", out, "--json")
    torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    return out, result


def test_quantize_writes_a_4_bit_voxtral_folder(quantized):
    from safetensors import safe_open

    out, result = quantized
    assert sorted(p.name for p in out.iterdir()) == ["consolidated.safetensors", "params.json",
                                                     "quantization.json", "tekken.json", "voice_embedding"]
    assert sorted(p.name for p in (out / "voice_embedding").iterdir()) == ["casual_female.pt", "neutral_male.pt"]
    record = json.loads((out / "quantization.json").read_text())
    # the fields of a TurboQuant transformers checkpoint's quantization_config
    modules = record.pop("modules_to_convert")
    kept = record.pop("modules_not_converted")
    assert record == {"quant_method": "turboquant", "bits": 4, "group_size": 64, "rotation": "hadamard",
                      "rotation_seed": 0, "max_block": 128}
    assert modules == sorted(modules) and len(modules) == 2 * 7 + 3 * 7 + 2
    assert "layers.0.attention.wq" in modules and "acoustic_transformer.llm_projection" in modules
    assert "acoustic_transformer.input_projection" in kept and not set(kept) & set(modules)
    with safe_open(str(out / "consolidated.safetensors"), framework="pt") as file:
        keys = set(file.keys())
        assert file.get_slice("layers.0.attention.wq.codes").get_dtype() == "U8"
        assert file.get_slice("layers.0.attention.wq.gains").get_dtype() == "F16"
        assert file.get_slice("audio_tokenizer.output_proj.conv.parametrizations.weight.original1").get_dtype() == "BF16"
    assert not any(f"{m}.weight" in keys for m in modules)
    assert "acoustic_transformer.semantic_codebook_output.weight" in keys  # output heads stay 16-bit
    summary = json.loads(result.stdout)
    assert summary["method"] == "turboquant" and summary["calibration"] == "none (data-free)"
    assert summary["layers"] == len(modules) and summary["bits_per_weight"] == pytest.approx(4.25)
    assert summary["size_after"] < summary["size_before"] and summary["linear_compression_vs_bf16"] > 3.7
    assert "quantized data-free" in result.stderr and "quantized layers.0.attention.wq [64x64]" in result.stderr
    assert not list(out.parent.glob(".*partial*"))


def test_plain_summary_prints_the_folder(tiny_voxtral, tmp_path):
    out = tmp_path / "tq4"
    result = invoke_on_cpu("quantize", tiny_voxtral, "-o", out, "--group-size", 32)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    assert "bits/weight" in result.stderr and "checkpoint" in result.stderr
    assert json.loads((out / "quantization.json").read_text())["group_size"] == 32


def test_loaded_checkpoint_equals_in_memory_quantization(tiny_voxtral, quantized):
    out, _ = quantized
    reference = load_model(tiny_voxtral, dtype=torch.float32)
    quantize_voxtral(reference, device="cpu")
    loaded = load_model(out, dtype=torch.float32)
    expected = {n: m for n, m in reference.named_modules() if isinstance(m, TurboLinear)}
    layers = {n: m for n, m in loaded.named_modules() if isinstance(m, TurboLinear)}
    assert sorted(layers) == sorted(expected) and len(layers) == 37
    for name, layer in layers.items():
        assert layer.codes.dtype == torch.uint8 and layer.gains.dtype == torch.float16
        assert torch.equal(layer.codes, expected[name].codes) and torch.equal(layer.gains, expected[name].gains)
        assert torch.equal(layer.signs, expected[name].signs) and layer.signs.device.type == "cpu"
    texts = [VoxtralSynthesizer(m, load_tokenizer(f), f, max_frames=6) for m, f in ((reference, tiny_voxtral),
                                                                                     (loaded, out))]
    frames = list(texts[1].frames("Four bits.", "neutral_male", seed=2))
    audio = [torch.cat(list(s.stream("Four bits.", "neutral_male", seed=2))) for s in texts]
    assert audio[1].shape == (len(frames) * 1920,) and len(frames) > 0
    assert torch.equal(audio[0], audio[1])


def test_missing_or_mistyped_codes_fail_naming_the_key(quantized, tmp_path):
    out, _ = quantized
    missing = shutil.copytree(out, tmp_path / "missing")
    rewrite_voxtral_weights(missing, lambda t: t.pop("layers.1.attention.wq.codes"))
    with pytest.raises(LocalaiError, match=r"missing key layers\.1\.attention\.wq\.codes"):
        load_model(missing)
    retyped = shutil.copytree(out, tmp_path / "retyped")
    key = "acoustic_transformer.time_projection.gains"
    rewrite_voxtral_weights(retyped, lambda t: t.__setitem__(key, t[key].float()))
    with pytest.raises(LocalaiError, match=rf"{key} is float32, expected float16"):
        load_model(retyped)


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.update(quant_method="gptq"), "unknown quant_method 'gptq'"),
    (lambda r: r.pop("group_size"), "quantization.json lacks group_size"),
    (lambda r: r.update(rotation_seed=-1), "has rotation_seed=-1, not a non-negative integer"),
    (lambda r: r.update(modules_to_convert=["layers.0.attention_norm"]), "lists layers.0.attention_norm, which is not"),
])
def test_bad_quantization_json_is_one_line(quantized, tmp_path, localai_home, edit, message):
    out, _ = quantized
    broken = shutil.copytree(out, tmp_path / "broken")
    record = json.loads((broken / "quantization.json").read_text())
    edit(record)
    (broken / "quantization.json").write_text(json.dumps(record))
    result = invoke_on_cpu("speak", "--tts", "voxtral", "--tts-model", broken, "--out", tmp_path / "x.wav", "Hi.")
    assert result.exit_code == 1
    line = one_error_line(result.stderr)
    assert message in line and "localai quantize" in line
    assert not (tmp_path / "x.wav").exists()


def test_voxtral_flags_that_do_not_apply_are_usage_errors(tiny_voxtral, tmp_path):
    text = tmp_path / "calib.txt"
    text.write_text("Some text. " * 50)
    for flags in (["--calib", text], ["--method", "int4"], ["--quantize-head"]):
        result = invoke_on_cpu("quantize", tiny_voxtral, "-o", tmp_path / "q", *flags)
        assert result.exit_code == 2, result.output
        assert result.stdout == "" and one_error_line(result.stderr)
    assert "--calib does not apply" in invoke_on_cpu("quantize", tiny_voxtral, "-o", tmp_path / "q", "--calib", text).stderr
    assert not (tmp_path / "q").exists()


def test_existing_output_and_quantized_source_are_refused(tiny_voxtral, quantized, tmp_path):
    out, _ = quantized
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    result = invoke_on_cpu("quantize", tiny_voxtral, "-o", out)
    assert result.exit_code == 1 and "already exists" in one_error_line(result.stderr)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    assert not list(out.parent.glob(".*partial*"))
    again = invoke_on_cpu("quantize", out, "-o", tmp_path / "again")
    assert again.exit_code == 1 and "already quantized" in one_error_line(again.stderr)
    assert not any(tmp_path.iterdir())


def test_speak_loads_the_quantized_folder_as_4_bit(quantized, tmp_path, localai_home):
    out, _ = quantized
    for flags in ([], ["--quantize"]):  # --quantize on a 4-bit folder does not quantize again
        wav = tmp_path / "q.wav"
        result = invoke_on_cpu("speak", "--tts", "voxtral", "--tts-model", out, "--voice", "neutral_male", "--out", wav,
                      *flags, "Hi.")
        assert result.exit_code == 0, result.stderr
        assert "tts: Voxtral 4B TTS (cpu, 4-bit TurboQuant)" in result.stderr
        assert "quantizing the Voxtral backbone" not in result.stderr
        audio, rate = soundfile.read(wav, dtype="float32")
        assert rate == 24000 and len(audio) > 0 and len(audio) % 1920 == 0


def test_the_4_bit_model_at_the_released_dimensions_fits_its_gpu_budget(tiny_voxtral):
    """Built on the meta device at Voxtral-4B-TTS's dimensions: what the 4-bit model keeps on the
    GPU (everything but the text embeddings, which stay on the CPU) plus a full 4096-position
    cache leaves room under the 3.5 GB the 4-bit model is held to, for activations, the codec's
    work and CUDA graphs."""
    from make_tiny_voxtral import real_params  # scripts/, on the path with the tiny_voxtral fixture
    from localai.tts.voxtral.config import config_from_params
    from localai.tts.voxtral.model import VoxtralModel
    from localai.tts.voxtral.quantize import quantized_linears

    config = config_from_params(real_params())
    with torch.device("meta"):
        model = VoxtralModel(config).to(torch.bfloat16)
        for _, parent, name in quantized_linears(model):
            linear = getattr(parent, name)
            setattr(parent, name, TurboLinear(linear.in_features, linear.out_features, bias=linear.bias is not None))
    on_gpu = sum(t.numel() * t.element_size() for name, t in [*model.named_parameters(), *model.named_buffers()]
                 if not name.startswith("text_embeddings."))
    backbone = config.backbone
    cache = 4096 * backbone.n_layers * 2 * backbone.n_kv_heads * backbone.head_dim * 2  # bf16 keys and values
    assert sum(p.numel() for p in model.text_embeddings.parameters()) * 2 > 0.7e9  # 16-bit, on the CPU
    assert on_gpu < 2.4e9 and on_gpu + cache < 3.0e9, (on_gpu / 1e9, cache / 1e9)  # 2.22 and 0.44 GB
