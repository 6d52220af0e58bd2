"""Voxtral TTS on a tiny random checkpoint with the real layout: loading, RoPE, generation, streaming decode."""

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from make_tiny_voxtral import TINY_VOICES  # noqa: E402
from tiny_models import rewrite_voxtral_weights  # noqa: E402

from localai.errors import LocalaiError  # noqa: E402
from localai.tts.voxtral.backbone import apply_rope, rope_table  # noqa: E402
from localai.tts.voxtral.config import load_config  # noqa: E402
from localai.tts.voxtral.generate import VoxtralSynthesizer  # noqa: E402
from localai.tts.voxtral.loader import load_model, load_tokenizer, load_voice  # noqa: E402
from localai.tts.voxtral.streaming import StreamingDecoder, decode_frames  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def synthesizer(tiny_voxtral):
    model = load_model(tiny_voxtral, dtype=torch.float32)
    return VoxtralSynthesizer(model, load_tokenizer(tiny_voxtral), tiny_voxtral, max_frames=12)


def copy_checkpoint(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_renamed_key_fails_with_its_name(tiny_voxtral, tmp_path):
    folder = copy_checkpoint(tiny_voxtral, tmp_path / "renamed")
    key = "layers.1.attention.wq.weight"
    rewrite_voxtral_weights(folder, lambda t: t.__setitem__(key + "s", t.pop(key)))
    with pytest.raises(LocalaiError, match=r"unexpected key layers\.1\.attention\.wq\.weights"):
        load_model(folder, dtype=torch.float32)


def test_missing_key_fails_with_its_name(tiny_voxtral, tmp_path):
    folder = copy_checkpoint(tiny_voxtral, tmp_path / "missing")
    key = "audio_tokenizer.decoder_blocks.2.conv.parametrizations.weight.original1"
    rewrite_voxtral_weights(folder, lambda t: t.pop(key))
    with pytest.raises(LocalaiError, match=f"missing key {key}"):
        load_model(folder, dtype=torch.float32)


def test_wrong_shape_fails_with_its_name(tiny_voxtral, tmp_path):
    folder = copy_checkpoint(tiny_voxtral, tmp_path / "shape")
    rewrite_voxtral_weights(folder, lambda t: t.__setitem__("norm.weight", torch.ones(3)))
    with pytest.raises(LocalaiError, match=r"norm\.weight has shape \[3\]"):
        load_model(folder, dtype=torch.float32)


def test_pickled_weights_are_refused(tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    torch.save({"norm.weight": torch.ones(3)}, folder / "consolidated.pth")
    with pytest.raises(LocalaiError, match="pickled weights are never loaded"):
        load_model(folder)


def test_voice_file_must_hold_a_plain_tensor(tiny_voxtral, tmp_path):
    folder = copy_checkpoint(tiny_voxtral, tmp_path / "voice")
    config = load_config(folder)
    torch.save({"rows": torch.ones(2, 64)}, folder / "voice_embedding" / "casual_female.pt")
    with pytest.raises(LocalaiError, match="expected a"):
        load_voice(folder, "casual_female", config)
    torch.save(torch.ones(2, 5), folder / "voice_embedding" / "casual_female.pt")
    with pytest.raises(LocalaiError, match=r"\[2, 5\]"):
        load_voice(folder, "casual_female", config)


def test_params_missing_field_is_named(tiny_voxtral, tmp_path):
    folder = copy_checkpoint(tiny_voxtral, tmp_path / "params")
    params = json.loads((folder / "params.json").read_text())
    del params["multimodal"]["audio_tokenizer_args"]["semantic_dim"]
    (folder / "params.json").write_text(json.dumps(params))
    with pytest.raises(LocalaiError, match="multimodal.audio_tokenizer_args.semantic_dim"):
        load_config(folder)


def test_semantic_codebook_sums_stay_float32_in_a_bf16_model(tiny_voxtral):
    """The codebook entry is sum / usage: divided in float32, not after rounding both to bf16."""
    model = load_model(tiny_voxtral, dtype=torch.bfloat16)
    codebook = model.codec.quantizer.semantic_codebook
    assert codebook.embedding_sum.dtype == codebook.cluster_usage.dtype == torch.float32
    assert model.codec.output_proj.conv.weight.dtype == torch.bfloat16


def test_config_derived_sizes_follow_the_reference(tiny_voxtral):
    config = load_config(tiny_voxtral)
    assert config.samples_per_frame == 1920
    assert config.codec.stage_windows == (2, 4, 8, 16)
    assert config.codebook_sizes[:2] == [64 + 2, 21 + 2]
    assert config.code_offsets[:3] == [0, 66, 89]
    assert config.audio_vocab_size % 128 == 0


def test_rope_is_the_interleaved_complex_rotation():
    head_dim, length = 16, 7
    x = torch.randn(1, 2, length, head_dim, dtype=torch.float64)
    freqs = 1e6 ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.arange(length, dtype=torch.float64)[:, None] * freqs[None]
    # direct computation: pair (x[2j], x[2j+1]) is the complex x[2j] + i x[2j+1], times e^(i angle)
    real, imag = x[..., 0::2], x[..., 1::2]
    expected = torch.empty_like(x)
    expected[..., 0::2] = real * angles.cos() - imag * angles.sin()
    expected[..., 1::2] = real * angles.sin() + imag * angles.cos()
    rotated = apply_rope(x, rope_table(head_dim, length, theta=1e6))
    torch.testing.assert_close(rotated, expected, rtol=1e-5, atol=1e-5)
    # the "rotate_half" convention pairs (j, j + D/2) instead and must differ
    cos, sin = torch.cat((angles.cos(), angles.cos()), -1), torch.cat((angles.sin(), angles.sin()), -1)
    rotate_half = x * cos + torch.cat((-x[..., head_dim // 2:], x[..., :head_dim // 2]), dim=-1) * sin
    assert not torch.allclose(rotate_half, expected, atol=1e-3)


def test_prompt_puts_voice_rows_between_the_audio_markers(synthesizer):
    ids = synthesizer.prompt_ids("Hi", "neutral_male")
    rows = TINY_VOICES["neutral_male"]
    assert ids[:2 + rows] == [1, 25] + [24] * rows
    assert ids[2 + rows] == 36 and ids[-2:] == [35, 25]


def test_pipeline_yields_24khz_audio_of_whole_frames(synthesizer):
    frames = list(synthesizer.frames("Hello from localai.", "casual_female"))
    assert 1 <= len(frames) <= 12
    assert all(f.shape == (37,) and 2 <= int(f[0]) < 2 + 64 and int(f[1:].min()) >= 2 for f in frames)
    audio = torch.cat(list(synthesizer.stream("Hello from localai.", "casual_female")))
    assert synthesizer.sample_rate == 24000
    assert audio.shape == (len(frames) * 1920,)
    assert torch.isfinite(audio).all() and audio.abs().max() > 0


def test_speech_cut_by_the_frame_limit_says_so(tiny_voxtral, synthesizer, capsys):
    short = VoxtralSynthesizer(synthesizer.model, synthesizer.tokenizer, tiny_voxtral, max_frames=3)
    assert len(list(short.frames("Hello from localai.", "casual_female"))) == 3  # random weights never end
    assert "reached its limit of 3 frames (0.2 s) before the model ended it" in " ".join(capsys.readouterr().err.split())


def test_generation_is_reproducible_for_a_seed(synthesizer):
    a = torch.stack(list(synthesizer.frames("Same text.", "casual_female", seed=3)))
    b = torch.stack(list(synthesizer.frames("Same text.", "casual_female", seed=3)))
    assert torch.equal(a, b)


def test_end_of_audio_code_stops_generation(tiny_voxtral):
    model = load_model(tiny_voxtral, dtype=torch.float32)
    with torch.no_grad():
        model.acoustic.semantic_codebook_output.weight.zero_()  # all logits tie: id 1 (end) is the first allowed
    synthesizer = VoxtralSynthesizer(model, load_tokenizer(tiny_voxtral), tiny_voxtral, max_frames=12)
    assert list(synthesizer.frames("Nothing to say.", "casual_female")) == []
    assert list(synthesizer.stream("Nothing to say.", "casual_female")) == []


def test_fixed_shape_frames_match_eager_frames(tiny_voxtral, monkeypatch):
    """What a CUDA graph replays (position as a tensor, a persistent cache attended under a mask)
    gives the eager frames: over sentences of different lengths, with the cache reused, its stale
    tail from a longer sentence, and grown."""
    from localai.tts.voxtral import frame_steps

    monkeypatch.setattr(frame_steps, "CACHE_ROUNDING", 16)
    model = load_model(tiny_voxtral, dtype=torch.float32)
    tokenizer = load_tokenizer(tiny_voxtral)
    eager = VoxtralSynthesizer(model, tokenizer, tiny_voxtral, max_frames=12)
    fixed = VoxtralSynthesizer(model, tokenizer, tiny_voxtral, max_frames=12, decode_mode="fixed-shape")
    assert eager.decode_mode == "eager"  # the CPU's default
    sizes = []
    texts = ["A longer sentence to begin with.", "Short.",
             "And a much longer one, long enough to make the persistent cache grow past its size."]
    for seed, text in enumerate(texts):
        expected = torch.stack(list(eager.frames(text, "casual_female", seed=seed)))
        got = torch.stack(list(fixed.frames(text, "casual_female", seed=seed)))
        assert torch.equal(got, expected), text
        sizes.append(fixed.frame_steps.cache.max_len)
    assert sizes[0] == sizes[1] < sizes[2] and all(size % 16 == 0 for size in sizes)


def test_a_failed_graph_capture_falls_back_to_eager_frames(tiny_voxtral, synthesizer, capsys):
    from localai.tts.voxtral.frame_steps import GraphFrames

    fallback = VoxtralSynthesizer(synthesizer.model, synthesizer.tokenizer, tiny_voxtral, max_frames=12)
    fallback.decode_mode, fallback.frame_steps = "graphs", GraphFrames(fallback.model)  # no CUDA: capture fails
    fallback.prepare()
    assert fallback.decode_mode == "eager" and "could not capture the Voxtral frame step" in capsys.readouterr().err
    expected = torch.stack(list(synthesizer.frames("Hi there.", "casual_female")))
    assert torch.equal(torch.stack(list(fallback.frames("Hi there.", "casual_female"))), expected)


def test_unknown_or_unusable_decode_mode_is_an_error(tiny_voxtral, synthesizer):
    with pytest.raises(LocalaiError, match="unknown decode mode 'fast'"):
        VoxtralSynthesizer(synthesizer.model, None, tiny_voxtral, decode_mode="fast")
    with pytest.raises(LocalaiError, match="CUDA graphs need"):
        VoxtralSynthesizer(synthesizer.model, None, tiny_voxtral, decode_mode="graphs")


def test_unknown_voice_is_an_error(synthesizer):
    with pytest.raises(LocalaiError, match="unknown voice 'robot'"):
        list(synthesizer.frames("Hi", "robot"))


def test_streaming_decode_equals_one_shot_decode(tiny_voxtral):
    model = load_model(tiny_voxtral, dtype=torch.float64)
    generator = torch.Generator().manual_seed(1)
    semantic = torch.randint(2, 2 + 64, (80, 1), generator=generator)
    acoustic = torch.randint(2, 2 + 21, (80, 36), generator=generator)
    frames = torch.cat((semantic, acoustic), dim=1)  # [80, 37] model ids
    with torch.inference_mode():
        whole = decode_frames(model.codec, frames)
        decoder = StreamingDecoder(model.codec, 1920)
        chunks = [c for c in (decoder.push(f) for f in frames) if c is not None]
        chunks.append(decoder.flush())
    assert [c.numel() // 1920 for c in chunks] == [5, 5, 5, 5, 5, 25, 25, 5]
    streamed = torch.cat(chunks)
    assert streamed.shape == whole.shape == (80 * 1920,)
    torch.testing.assert_close(streamed, whole, rtol=0, atol=1e-9)


def test_quantize_puts_backbone_and_head_linears_in_4_bit(tiny_voxtral):
    from localai.quant.linear import TurboLinear
    from localai.tts.voxtral.quantize import quantize_voxtral

    reference = load_model(tiny_voxtral, dtype=torch.float32)
    model = load_model(tiny_voxtral, dtype=torch.float32)
    count = quantize_voxtral(model, device="cpu")
    assert isinstance(model.backbone.layers[1].feed_forward.w2, TurboLinear)
    assert isinstance(model.acoustic.layers[2].attention.wq, TurboLinear)
    assert isinstance(model.acoustic.llm_projection, TurboLinear)
    assert isinstance(model.acoustic.semantic_codebook_output, torch.nn.Linear)  # output heads stay 16-bit
    assert not any(isinstance(m, TurboLinear) for m in model.codec.modules())
    linears = [m for part in (reference.backbone, reference.acoustic) for m in part.modules()
               if isinstance(m, torch.nn.Linear)]
    assert count == sum(m.weight.numel() for m in linears) - sum(
        m.weight.numel() for m in (reference.acoustic.input_projection, reference.acoustic.semantic_codebook_output,
                                   reference.acoustic.acoustic_codebook_output))
    x = torch.randn(1, 20, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        exact = reference.backbone(x, reference.backbone.new_cache(32), 0)
        approx = model.backbone(x, model.backbone.new_cache(32), 0)
    assert 0 < ((exact - approx).norm() / exact.norm()).item() < 0.3
    synthesizer = VoxtralSynthesizer(model, load_tokenizer(tiny_voxtral), tiny_voxtral, max_frames=6)
    frames = list(synthesizer.frames("Four bits.", "neutral_male"))
    assert torch.cat(list(synthesizer.stream("Four bits.", "neutral_male"))).shape == (len(frames) * 1920,)
