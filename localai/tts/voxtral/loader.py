"""Load a Voxtral TTS checkpoint in Mistral's native layout, strictly.

    params.json                 configuration
    consolidated.safetensors    every weight (bf16); nothing else is ever read as weights
    tekken.json                 tokenizer, including each preset voice's number of [AUDIO] slots
    voice_embedding/<name>.pt   one [N, dim] tensor per preset voice (torch.load, weights_only=True)

Every checkpoint key is mapped to a module key; a missing, unexpected or misshapen key is
an error that names it.
"""

from __future__ import annotations

from pathlib import Path

from localai.errors import LocalaiError
from localai.tts.voxtral.config import VoxtralConfig, load_config

WEIGHTS_FILE = "consolidated.safetensors"
TOKENIZER_FILE = "tekken.json"
VOICE_FOLDER = "voice_embedding"
PICKLED_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")

# checkpoint prefix -> module prefix, first match wins
KEY_PREFIXES = (
    ("mm_audio_embeddings.tok_embeddings.", "text_embeddings."),
    ("mm_audio_embeddings.audio_codebook_embeddings.", "audio_embeddings."),
    ("acoustic_transformer.", "acoustic."),
    ("audio_tokenizer.", "codec."),
    ("layers.", "backbone.layers."),
    ("norm.", "backbone.norm."),
)


def module_key(checkpoint_key: str) -> str | None:
    for source, target in KEY_PREFIXES:
        if checkpoint_key.startswith(source):
            return target + checkpoint_key[len(source):]
    return None


def checkpoint_key(key: str) -> str:
    for source, target in KEY_PREFIXES:
        if key.startswith(target):
            return source + key[len(target):]
    return key


def _bad_checkpoint(what: str, path: Path) -> LocalaiError:
    return LocalaiError(f"{path.name}: {what}", "the file does not match params.json; download the model again")


def map_keys(checkpoint_shapes: dict[str, tuple], expected_shapes: dict[str, tuple], path: Path) -> dict[str, str]:
    """checkpoint key -> module key for every tensor, or an error naming the first key that does not fit."""
    mapping = {}
    for key in sorted(checkpoint_shapes):
        target = module_key(key)
        if target is None or target not in expected_shapes:
            raise _bad_checkpoint(f"unexpected key {key}", path)
        if tuple(checkpoint_shapes[key]) != tuple(expected_shapes[target]):
            raise _bad_checkpoint(f"{key} has shape {list(checkpoint_shapes[key])}, "
                                  f"expected {list(expected_shapes[target])}", path)
        mapping[key] = target
    missing = sorted(set(expected_shapes) - set(mapping.values()))
    if missing:
        raise _bad_checkpoint(f"missing key {checkpoint_key(missing[0])}"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""), path)
    return mapping


def check_folder(folder: Path) -> None:
    folder = Path(folder)
    if not folder.is_dir():
        raise LocalaiError(f"{folder} is not a folder", "point to the downloaded Voxtral TTS model")
    if not (folder / WEIGHTS_FILE).is_file():
        pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLED_SUFFIXES)
        if pickled:
            raise LocalaiError(f"{folder} holds {pickled[0]} but no {WEIGHTS_FILE}; pickled weights are never loaded",
                               "use the original safetensors checkpoint")
        raise LocalaiError(f"{folder} has no {WEIGHTS_FILE}", "download the model again")
    for name in ("params.json", TOKENIZER_FILE):
        if not (folder / name).is_file():
            raise LocalaiError(f"{folder} has no {name}", "download the model again")


def load_model(folder: Path, device="cpu", dtype=None, embed_device="cpu"):
    """Build the model on the meta device and fill it from consolidated.safetensors (strict).

    The text embedding table is read once per sentence, so it stays on `embed_device`
    (the CPU by default) and spares GPU memory.
    """
    import torch
    from safetensors import SafetensorError, safe_open

    from localai.tts.voxtral.model import VoxtralModel

    folder = Path(folder)
    check_folder(folder)
    config = load_config(folder)
    dtype = dtype or torch.bfloat16
    with torch.device("meta"):
        model = VoxtralModel(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    path = folder / WEIGHTS_FILE
    try:
        with safe_open(str(path), framework="pt", device="cpu") as file:
            mapping = map_keys({k: tuple(file.get_slice(k).get_shape()) for k in file.keys()}, expected, path)
            state = {}
            for key, target in mapping.items():
                where = embed_device if target.startswith("text_embeddings.") else device
                state[target] = file.get_tensor(key).to(device=where, dtype=dtype)
    except (OSError, RuntimeError, SafetensorError) as exc:
        raise LocalaiError(f"cannot read {path}: {str(exc).splitlines()[0]}", "download the model again") from None
    model.load_state_dict(state, strict=True, assign=True)
    model.codec.fold_weight_norm()
    return model.eval()


def list_voices(folder: Path) -> list[str]:
    voice_dir = Path(folder) / VOICE_FOLDER
    return sorted(p.stem for p in voice_dir.glob("*.pt")) if voice_dir.is_dir() else []


def load_voice(folder: Path, name: str, config: VoxtralConfig):
    """The voice's [N, dim] tensor. Only a plain tensor is accepted (weights_only=True refuses pickled code)."""
    import pickle

    import torch

    path = Path(folder) / VOICE_FOLDER / f"{name}.pt"
    if not path.is_file():
        names = ", ".join(list_voices(folder)) or "none found"
        raise LocalaiError(f"unknown voice {name!r}", f"choose one of: {names}")
    try:
        voice = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise LocalaiError(f"refusing {path.name}: {str(exc).splitlines()[0]}",
                           "voice files must hold a plain tensor; download the model again") from None
    if not isinstance(voice, torch.Tensor) or voice.dim() != 2 or voice.shape[1] != config.backbone.dim:
        shape = list(voice.shape) if isinstance(voice, torch.Tensor) else type(voice).__name__
        raise LocalaiError(f"{path.name} holds {shape}, expected a [N, {config.backbone.dim}] tensor",
                           "download the model again")
    return voice


def load_tokenizer(folder: Path):
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    path = Path(folder) / TOKENIZER_FILE
    try:
        return MistralTokenizer.from_file(str(path))
    except (OSError, ValueError, KeyError, TypeError, AssertionError) as exc:
        raise LocalaiError(f"cannot load {path.name}: {exc}", "download the model again "
                           "(needs mistral-common >= 1.10)") from None
