"""Write a tiny random Voxtral TTS checkpoint with the real file layout, key names and params.json schema.

    python scripts/make_tiny_voxtral.py OUT_DIR [--seed N]

The folder gets params.json, consolidated.safetensors, tekken.json (a byte-level tekken
tokenizer built in process, as mistral-common's own tests build theirs) and
voice_embedding/<voice>.pt. Key names are written out here from the released
checkpoint's naming, independently of the loader, so loading this folder tests the
loader's mapping. `real_params()` gives the released model's dimensions.
"""

from __future__ import annotations

import argparse
import base64
import json
from pathlib import Path

TINY_VOICES = {"casual_female": 6, "neutral_male": 4}  # name -> number of [AUDIO] rows
AUDIO_SPECIAL_IDS = {24: "[AUDIO]", 25: "[BEGIN_AUDIO]", 35: "[REPEAT_AUDIO_TEXT]", 36: "[NEXT_AUDIO_TEXT]"}
NUM_SPECIAL = 100


def params(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, hidden_dim=128, vocab_size=NUM_SPECIAL + 256,
           semantic_codebook_size=64, acoustic=None, codec=None, voices=None) -> dict:
    """params.json in the released schema; defaults are tiny."""
    acoustic = acoustic or dict(input_dim=dim, dim=dim, n_layers=3, head_dim=head_dim, hidden_dim=hidden_dim,
                                n_heads=n_heads, n_kv_heads=n_kv_heads)
    codec = codec or dict(dim=32, hidden_dim=64, head_dim=16, n_heads=2, n_kv_heads=2, semantic_dim=16)
    voices = voices or TINY_VOICES
    return {
        "dim": dim, "n_layers": n_layers, "head_dim": head_dim, "hidden_dim": hidden_dim,
        "n_heads": n_heads, "n_kv_heads": n_kv_heads, "vocab_size": vocab_size,
        "rope_theta": 1000000.0, "norm_eps": 1e-05, "tied_embeddings": True, "causal": True,
        "max_seq_len": 65536, "model_type": "voxtral_tts",
        "multimodal": {
            "bos_token_id": 1,
            "audio_model_args": {
                "semantic_codebook_size": semantic_codebook_size, "acoustic_codebook_size": 21,
                "n_acoustic_codebook": 36,
                "audio_encoding_args": {"codebook_pattern": "parallel", "num_codebooks": 37,
                                        "sampling_rate": 24000, "frame_rate": 12.5},
                "audio_token_id": 24, "begin_audio_token_id": 25, "input_embedding_concat_type": "sum",
                "acoustic_transformer_args": {**acoustic, "use_biases": False, "rope_theta": 10000.0,
                                              "sigma": 1e-05, "sigma_max": 1.0},
                "p_uncond": 0.0, "condition_dropped_token_id": 42,
            },
            "audio_tokenizer_args": {
                "channels": 1, "sampling_rate": 24000, "pretransform_patch_size": 240, "patch_proj_kernel_size": 7,
                "semantic_codebook_size": semantic_codebook_size, "acoustic_codebook_size": 21, "acoustic_dim": 36,
                "conv_weight_norm": True, "causal": True, "attn_sliding_window_size": 16,
                "half_attn_window_upon_downsampling": True, "qk_norm_eps": 1e-06, "qk_norm": True,
                "use_biases": False, "norm_eps": 0.01, "layer_scale": True, "layer_scale_init": 0.01,
                "decoder_transformer_lengths_str": "2,2,2,2", "decoder_convs_kernels_str": "3,4,4,4",
                "decoder_convs_strides_str": "1,2,2,2", **codec,
                "voice": {name: index for index, name in enumerate(voices)},
            },
        },
    }


def real_params() -> dict:
    """The released Voxtral-4B-TTS-2603 dimensions (backbone 3.4B, acoustic head 0.39B, codec decoder)."""
    return params(dim=3072, n_layers=26, n_heads=32, n_kv_heads=8, head_dim=128, hidden_dim=9216,
                  vocab_size=131072, semantic_codebook_size=8192,
                  codec=dict(dim=1024, hidden_dim=4096, head_dim=128, n_heads=8, n_kv_heads=8, semantic_dim=256),
                  voices={"casual_female": 147, "neutral_male": 147})


def _round_up(n: int, multiple: int) -> int:
    return multiple * -(-n // multiple)


def _block_shapes(prefix: str, dim: int, hidden: int, n_heads: int, n_kv: int, head_dim: int) -> dict:
    return {
        f"{prefix}.attention.wq.weight": (n_heads * head_dim, dim),
        f"{prefix}.attention.wk.weight": (n_kv * head_dim, dim),
        f"{prefix}.attention.wv.weight": (n_kv * head_dim, dim),
        f"{prefix}.attention.wo.weight": (dim, n_heads * head_dim),
        f"{prefix}.attention_norm.weight": (dim,),
        f"{prefix}.ffn_norm.weight": (dim,),
        f"{prefix}.feed_forward.w1.weight": (hidden, dim),
        f"{prefix}.feed_forward.w2.weight": (dim, hidden),
        f"{prefix}.feed_forward.w3.weight": (hidden, dim),
    }


def _codec_shapes(c: dict, semantic_size: int) -> dict:
    d = c["dim"]
    shapes = {}
    latent = c["semantic_dim"] + c["acoustic_dim"]
    kernels = [int(k) for k in c["decoder_convs_kernels_str"].split(",")]
    lengths = [int(n) for n in c["decoder_transformer_lengths_str"].split(",")]
    block = 0
    for stage, (kernel, n_layers) in enumerate(zip(kernels, lengths)):
        # Conv1d weights are [out, in, k], ConvTranspose1d weights [in, out, k]
        conv = (d, latent, kernel) if stage == 0 else (d, d, kernel)
        shapes[f"audio_tokenizer.decoder_blocks.{block}.conv.parametrizations.weight.original0"] = (d, 1, 1)
        shapes[f"audio_tokenizer.decoder_blocks.{block}.conv.parametrizations.weight.original1"] = conv
        block += 1
        for layer in range(n_layers):
            prefix = f"audio_tokenizer.decoder_blocks.{block}.layers.{layer}"
            shapes.update(_block_shapes(prefix, d, c["hidden_dim"], c["n_heads"], c["n_kv_heads"], c["head_dim"]))
            shapes[f"{prefix}.attention.q_norm.weight"] = (c["n_heads"] * c["head_dim"],)
            shapes[f"{prefix}.attention.k_norm.weight"] = (c["n_kv_heads"] * c["head_dim"],)
            shapes[f"{prefix}.attention_scale"] = (d,)
            shapes[f"{prefix}.ffn_scale"] = (d,)
        block += 1
    patch, kernel = c["pretransform_patch_size"], c["patch_proj_kernel_size"]
    shapes["audio_tokenizer.output_proj.conv.parametrizations.weight.original0"] = (patch, 1, 1)
    shapes["audio_tokenizer.output_proj.conv.parametrizations.weight.original1"] = (patch, d, kernel)
    shapes["audio_tokenizer.quantizer.semantic_codebook.cluster_usage"] = (semantic_size,)
    shapes["audio_tokenizer.quantizer.semantic_codebook.embedding_sum"] = (semantic_size, c["semantic_dim"])
    return shapes


def checkpoint_shapes(p: dict) -> dict[str, tuple]:
    """Every tensor of consolidated.safetensors and its shape, named as in the released checkpoint."""
    audio = p["multimodal"]["audio_model_args"]
    a = audio["acoustic_transformer_args"]
    semantic, levels = audio["semantic_codebook_size"], audio["acoustic_codebook_size"]
    n_acoustic = audio["n_acoustic_codebook"]
    shapes = {
        "mm_audio_embeddings.tok_embeddings.weight": (p["vocab_size"], p["dim"]),
        "mm_audio_embeddings.audio_codebook_embeddings.embeddings.weight":
            (_round_up(semantic + 2 + (levels + 2) * n_acoustic, 128), p["dim"]),
        "norm.weight": (p["dim"],),
        "acoustic_transformer.input_projection.weight": (a["dim"], n_acoustic),
        "acoustic_transformer.time_projection.weight": (a["dim"], a["dim"]),
        "acoustic_transformer.llm_projection.weight": (a["dim"], a["input_dim"]),
        "acoustic_transformer.semantic_codebook_output.weight": (_round_up(semantic + 2, 128), a["input_dim"]),
        "acoustic_transformer.acoustic_codebook_output.weight": (n_acoustic, a["dim"]),
        "acoustic_transformer.norm.weight": (a["dim"],),
    }
    for i in range(p["n_layers"]):
        shapes.update(_block_shapes(f"layers.{i}", p["dim"], p["hidden_dim"], p["n_heads"], p["n_kv_heads"],
                                    p["head_dim"]))
    for i in range(a["n_layers"]):
        shapes.update(_block_shapes(f"acoustic_transformer.layers.{i}", a["dim"], a["hidden_dim"], a["n_heads"],
                                    a["n_kv_heads"], a["head_dim"]))
    shapes.update(_codec_shapes(p["multimodal"]["audio_tokenizer_args"], semantic))
    return shapes


def random_tensor(name: str, shape: tuple, generator):
    import torch

    if name.endswith(("norm.weight", "original0")) or name.endswith("cluster_usage"):
        return torch.ones(shape)
    if name.endswith(("_scale",)):
        return torch.full(shape, 0.5)
    scale = 1.0 if len(shape) == 1 or "embeddings" in name or "embedding_sum" in name else shape[1] ** -0.5
    return torch.randn(shape, generator=generator) * scale


def tekken_json(voices: dict[str, int]) -> dict:
    """A byte-level tekken tokenizer (256 single-byte tokens, no merges) with the audio special tokens."""
    from mistral_common.tokens.tokenizers.base import SpecialTokens

    names = dict(AUDIO_SPECIAL_IDS)
    free = (i for i in range(NUM_SPECIAL) if i not in names)
    for token in SpecialTokens:  # <unk>=0, <s>=1, </s>=2, [INST]=3, ... in mistral-common's order
        if token.value not in names.values():
            names[next(free)] = token.value
    vocab = [{"rank": i, "token_bytes": base64.b64encode(bytes([i])).decode(), "token_str": chr(i)} for i in range(256)]
    special = [{"rank": i, "token_str": names.get(i, f"<SPECIAL_{i}>"), "is_control": True}
               for i in range(NUM_SPECIAL)]
    return {
        "config": {"pattern": r"\s+|\S+", "num_vocab_tokens": 256, "default_vocab_size": NUM_SPECIAL + 256,
                   "default_num_special_tokens": NUM_SPECIAL, "version": "v7"},
        "vocab": vocab, "special_tokens": special, "version": 1, "type": "Tekken",
        "audio": {"sampling_rate": 24000, "frame_rate": 12.5, "voice_num_audio_tokens": dict(voices),
                  "audio_encoding_config": {"num_mel_bins": 128, "hop_length": 160, "window_size": 400}},
    }


def write_tiny_voxtral(folder: Path, seed: int = 0, voices: dict[str, int] | None = None) -> Path:
    """Write the tiny checkpoint into `folder` and return it."""
    import torch
    from safetensors.torch import save_file

    voices = voices or TINY_VOICES
    p = params(voices=voices)
    folder = Path(folder)
    (folder / "voice_embedding").mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    tensors = {name: random_tensor(name, shape, generator).to(torch.bfloat16).contiguous()
               for name, shape in checkpoint_shapes(p).items()}
    save_file(tensors, str(folder / "consolidated.safetensors"))
    (folder / "params.json").write_text(json.dumps(p, indent=2))
    (folder / "tekken.json").write_text(json.dumps(tekken_json(voices)))
    for name, rows in voices.items():
        torch.save(torch.randn(rows, p["dim"], generator=generator).to(torch.bfloat16),
                   folder / "voice_embedding" / f"{name}.pt")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="folder to write (created; files in it are replaced)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args()
    print(write_tiny_voxtral(args.out_dir, seed=args.seed))


if __name__ == "__main__":
    main()
