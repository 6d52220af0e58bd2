"""Voxtral TTS configuration, parsed from the checkpoint's Mistral-format `params.json`.

Three parts, each with its own block in the file:
  top level                                  the Mistral decoder backbone
  multimodal.audio_model_args                codebooks and the flow-matching acoustic head
  multimodal.audio_tokenizer_args            the codec (only its decoder is released)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from localai.errors import LocalaiError

# The audio codes reserve two ids in front of every codebook.
EMPTY_AUDIO = 0
END_AUDIO = 1
N_AUDIO_SPECIAL = 2
CFG_ALPHA = 1.2  # classifier-free guidance weight used by the reference deployment
DEFAULT_DECODING_STEPS = 7  # Euler steps when params.json does not say


def round_up(n: int, multiple: int) -> int:
    return multiple * -(-n // multiple)


@dataclass(frozen=True)
class BackboneArgs:
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden_dim: int
    vocab_size: int
    rope_theta: float
    norm_eps: float


@dataclass(frozen=True)
class AcousticArgs:
    input_dim: int  # width of the backbone hidden state it reads
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden_dim: int
    norm_eps: float
    n_decoding_steps: int


@dataclass(frozen=True)
class CodecArgs:
    dim: int
    hidden_dim: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    norm_eps: float
    qk_norm_eps: float
    patch_size: int  # samples per codec step
    output_kernel: int
    semantic_codebook_size: int
    semantic_dim: int
    acoustic_levels: int
    acoustic_dim: int
    stage_layers: tuple[int, ...]  # transformer layers per decoder stage
    stage_kernels: tuple[int, ...]  # conv kernel in front of each stage
    stage_strides: tuple[int, ...]  # conv stride (upsampling) in front of each stage
    stage_windows: tuple[int, ...]  # attention sliding window of each stage, in codec steps

    @property
    def latent_dim(self) -> int:
        return self.semantic_dim + self.acoustic_dim

    @property
    def upsampling(self) -> int:
        return math.prod(self.stage_strides)


@dataclass(frozen=True)
class VoxtralConfig:
    backbone: BackboneArgs
    acoustic: AcousticArgs
    codec: CodecArgs
    semantic_codebook_size: int
    acoustic_levels: int
    n_acoustic_codebook: int
    audio_token_id: int
    sampling_rate: int
    voices: dict[str, int] = field(default_factory=dict)

    @property
    def samples_per_frame(self) -> int:
        return self.codec.patch_size * self.codec.upsampling

    @property
    def codebook_sizes(self) -> list[int]:
        """Entries of each codebook in the audio embedding table, the two special ids included."""
        return [self.semantic_codebook_size + N_AUDIO_SPECIAL] + [
            self.acoustic_levels + N_AUDIO_SPECIAL
        ] * self.n_acoustic_codebook

    @property
    def code_offsets(self) -> list[int]:
        """Where each codebook starts in the shared embedding table (unpadded sizes)."""
        offsets, total = [], 0
        for size in self.codebook_sizes:
            offsets.append(total)
            total += size
        return offsets

    @property
    def audio_vocab_size(self) -> int:
        return round_up(sum(self.codebook_sizes), 128)

    @property
    def semantic_output_size(self) -> int:
        return round_up(self.semantic_codebook_size + N_AUDIO_SPECIAL, 128)


class _Reader:
    """Reads nested params.json keys and names the missing one in the error."""

    def __init__(self, data: dict, where: str):
        self.data, self.where = data, where

    def get(self, key: str, default=None, required: bool = True):
        if key in self.data:
            return self.data[key]
        if required and default is None:
            raise LocalaiError(f"params.json has no {self.where}{key}",
                               "the Voxtral checkpoint looks incomplete; download it again")
        return default

    def child(self, key: str) -> "_Reader":
        value = self.get(key)
        if not isinstance(value, dict):
            raise LocalaiError(f"params.json: {self.where}{key} is not an object", "download the checkpoint again")
        return _Reader(value, f"{self.where}{key}.")


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in str(text).split(","))


def _stage_windows(codec: _Reader, strides: tuple[int, ...]) -> tuple[int, ...]:
    """The window starts at the encoder's last size and doubles after each 2x upsampling."""
    window = int(codec.get("attn_sliding_window_size", 16))
    halve = bool(codec.get("half_attn_window_upon_downsampling", True))
    if halve:
        for stride in _int_list(codec.get("encoder_convs_strides_str", "2,2,2,1")):
            window //= stride
    windows = []
    for stride in strides:
        if halve:
            window *= stride
        windows.append(window)
    return tuple(windows)


def _check_supported(codec: _Reader) -> None:
    expected = {"causal": True, "conv_weight_norm": True, "qk_norm": True, "layer_scale": True,
                "use_biases": False, "channels": 1}
    for key, value in expected.items():
        if codec.get(key, value) != value:
            raise LocalaiError(f"unsupported Voxtral codec setting {key}={codec.get(key)!r}",
                               "only the released Voxtral-4B-TTS architecture is supported")


def _parse_codec(codec: _Reader) -> CodecArgs:
    _check_supported(codec)
    strides = _int_list(codec.get("decoder_convs_strides_str", "1,2,2,2"))
    n_heads = int(codec.get("n_heads"))
    return CodecArgs(
        dim=int(codec.get("dim")), hidden_dim=int(codec.get("hidden_dim")), n_heads=n_heads,
        n_kv_heads=int(codec.get("n_kv_heads", n_heads)), head_dim=int(codec.get("head_dim")),
        norm_eps=float(codec.get("norm_eps", 1e-2)), qk_norm_eps=float(codec.get("qk_norm_eps", 1e-6)),
        patch_size=int(codec.get("pretransform_patch_size", 240)),
        output_kernel=int(codec.get("patch_proj_kernel_size", 7)),
        semantic_codebook_size=int(codec.get("semantic_codebook_size")),
        semantic_dim=int(codec.get("semantic_dim")),
        acoustic_levels=int(codec.get("acoustic_codebook_size")),
        acoustic_dim=int(codec.get("acoustic_dim")),
        stage_layers=_int_list(codec.get("decoder_transformer_lengths_str", "2,2,2,2")),
        stage_kernels=_int_list(codec.get("decoder_convs_kernels_str", "3,4,4,4")),
        stage_strides=strides,
        stage_windows=_stage_windows(codec, strides),
    )


def _parse_acoustic(args: _Reader, backbone_dim: int, norm_eps: float) -> AcousticArgs:
    n_heads = int(args.get("n_heads"))
    steps = args.get("n_decoding_steps", required=False) or DEFAULT_DECODING_STEPS
    return AcousticArgs(
        input_dim=int(args.get("input_dim", backbone_dim)), dim=int(args.get("dim")),
        n_layers=int(args.get("n_layers")), n_heads=n_heads, n_kv_heads=int(args.get("n_kv_heads", n_heads)),
        head_dim=int(args.get("head_dim")), hidden_dim=int(args.get("hidden_dim")),
        norm_eps=float(args.get("norm_eps", norm_eps)), n_decoding_steps=int(steps),
    )


def _codebook_sizes(audio: _Reader) -> tuple[int, int, int]:
    """(semantic size, acoustic levels, acoustic codebooks); params.json may give a comma list instead."""
    if "codebook_sizes" in audio.data:
        sizes = _int_list(audio.get("codebook_sizes"))
        return sizes[0], sizes[1], len(sizes) - 1
    return (int(audio.get("semantic_codebook_size")), int(audio.get("acoustic_codebook_size")),
            int(audio.get("n_acoustic_codebook")))


def config_from_params(params: dict) -> VoxtralConfig:
    top = _Reader(params, "")
    multimodal = top.child("multimodal")
    audio = multimodal.child("audio_model_args")
    codec_reader = multimodal.child("audio_tokenizer_args")
    backbone = BackboneArgs(
        dim=int(top.get("dim")), n_layers=int(top.get("n_layers")), n_heads=int(top.get("n_heads")),
        n_kv_heads=int(top.get("n_kv_heads")), head_dim=int(top.get("head_dim")),
        hidden_dim=int(top.get("hidden_dim")), vocab_size=int(top.get("vocab_size")),
        rope_theta=float(top.get("rope_theta", 1e6)), norm_eps=float(top.get("norm_eps", 1e-5)),
    )
    semantic, levels, n_acoustic = _codebook_sizes(audio)
    encoding = audio.get("audio_encoding_args", {}, required=False)
    return VoxtralConfig(
        backbone=backbone,
        acoustic=_parse_acoustic(audio.child("acoustic_transformer_args"), backbone.dim, 1e-5),
        codec=_parse_codec(codec_reader),
        semantic_codebook_size=semantic, acoustic_levels=levels, n_acoustic_codebook=n_acoustic,
        audio_token_id=int(audio.get("audio_token_id", 24)),
        sampling_rate=int(encoding.get("sampling_rate", codec_reader.get("sampling_rate", 24000))),
        voices=dict(codec_reader.get("voice", {}, required=False)),
    )


def load_config(folder: Path) -> VoxtralConfig:
    path = Path(folder) / "params.json"
    try:
        params = json.loads(path.read_text())
    except FileNotFoundError:
        raise LocalaiError(f"{path} does not exist", "download the model with `localai download voxtral-tts`") from None
    except json.JSONDecodeError as exc:
        raise LocalaiError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})",
                           "download the model again") from None
    return config_from_params(params)
