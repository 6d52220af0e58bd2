"""Load a Voxtral TTS checkpoint in Mistral's native layout, strictly.

    params.json                 configuration
    consolidated.safetensors    every weight (bf16); nothing else is ever read as weights
    tekken.json                 tokenizer, including each preset voice's number of [AUDIO] slots
    voice_embedding/<name>.pt   one [N, dim] tensor per preset voice (torch.load, weights_only=True)
    quantization.json           only in a 4-bit checkpoint written by `localai quantize` (see checkpoint.py):
                                its listed linears store `X.codes` and `X.gains` instead of `X.weight`

Every checkpoint key is mapped to a module key; a missing, unexpected or misshapen key is
an error that names it.
"""

from __future__ import annotations

import json
from pathlib import Path

from localai.errors import LocalaiError, first_line
from localai.tts.voxtral.config import VoxtralConfig, load_config

WEIGHTS_FILE = "consolidated.safetensors"
TOKENIZER_FILE = "tekken.json"
VOICE_FOLDER = "voice_embedding"
QUANT_FILE = "quantization.json"
# the semantic codebook is stored as running sums; their quotient is taken in float32 (as the
# reference divides in the stored precision), then cast like any activation
FLOAT32_TENSORS = ("codec.quantizer.semantic_codebook.cluster_usage", "codec.quantizer.semantic_codebook.embedding_sum")
PICKLED_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")
DOWNLOAD_HINT = "the file does not match params.json; download the model again"
REQUANTIZE_HINT = "quantize the model again with `localai quantize voxtral-tts -o FOLDER`"

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


def _bad_checkpoint(what: str, path: Path, hint: str = DOWNLOAD_HINT) -> LocalaiError:
    return LocalaiError(f"{path.name}: {what}", hint)


def map_keys(checkpoint_shapes: dict[str, tuple], expected_shapes: dict[str, tuple], path: Path,
             hint: str = DOWNLOAD_HINT) -> dict[str, str]:
    """checkpoint key -> module key for every tensor, or an error naming the first key that does not fit."""
    mapping = {}
    for key in sorted(checkpoint_shapes):
        target = module_key(key)
        if target is None or target not in expected_shapes:
            raise _bad_checkpoint(f"unexpected key {key}", path, hint)
        if tuple(checkpoint_shapes[key]) != tuple(expected_shapes[target]):
            raise _bad_checkpoint(f"{key} has shape {list(checkpoint_shapes[key])}, "
                                  f"expected {list(expected_shapes[target])}", path, hint)
        mapping[key] = target
    missing = sorted(set(expected_shapes) - set(mapping.values()))
    if missing:
        raise _bad_checkpoint(f"missing key {checkpoint_key(missing[0])}"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""), path, hint)
    return mapping


def is_voxtral_folder(folder: Path) -> bool:
    """Mistral's native layout (params.json + consolidated.safetensors), not a transformers model."""
    folder = Path(folder)
    return ((folder / "params.json").is_file() and (folder / WEIGHTS_FILE).is_file()
            and not (folder / "config.json").exists())


def is_quantized(folder: Path) -> bool:
    return (Path(folder) / QUANT_FILE).is_file()


def _bad_quantization(what: str) -> LocalaiError:
    return LocalaiError(f"{QUANT_FILE} {what}", REQUANTIZE_HINT)


def read_quantization(folder: Path) -> dict | None:
    """The checkpoint's quantization.json (the fields of a TurboQuant `quantization_config`,
    module names as in the checkpoint), checked field by field; None for a 16-bit checkpoint."""
    from localai.quant.checkpoint import QUANT_METHOD, check_fields

    path = Path(folder) / QUANT_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise _bad_quantization(f"cannot be read ({first_line(exc)})") from None
    if not isinstance(record, dict):
        raise _bad_quantization("is not a JSON object")
    if record.get("quant_method") != QUANT_METHOD:
        raise _bad_quantization(f"has unknown quant_method {record.get('quant_method')!r}; only {QUANT_METHOD!r} loads")
    check_fields(record, QUANT_FILE)
    return record


def _use_turbo_linears(model, record: dict) -> dict:
    """Swap the linears that quantization.json lists for empty TurboLinear layers (on meta).

    Returns module key -> the dtype its packed tensor must be stored in (codes uint8, gains float16)."""
    import torch

    from localai.quant.hadamard import choose_block
    from localai.quant.linear import TurboLinear

    modules = dict(model.named_modules())
    stored_dtypes = {}
    for name in record["modules_to_convert"]:
        target = module_key(name)
        linear = modules.get(target) if target else None
        if not isinstance(linear, torch.nn.Linear):
            raise _bad_quantization(f"lists {name}, which is not a linear layer of this model")
        try:
            layer = TurboLinear(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                group_size=record["group_size"], seed=record["rotation_seed"],
                                block=choose_block(linear.in_features, record["max_block"]), device="meta")
        except ValueError as exc:
            raise _bad_quantization(f"does not fit {name}: {exc}") from None
        parent, attr = target.rpartition(".")[::2]
        setattr(modules[parent], attr, layer)
        stored_dtypes.update({f"{target}.codes": torch.uint8, f"{target}.gains": torch.float16})
    return stored_dtypes


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

    In a quantized checkpoint the linears listed in quantization.json become TurboLinear
    layers whose codes and gains keep their stored dtypes; the semantic codebook's sums are
    float32 (FLOAT32_TENSORS); every other tensor gets `dtype`.
    The text embedding table is read once per sentence, so it stays on `embed_device`
    (the CPU by default) and spares GPU memory.
    """
    import torch
    from safetensors import SafetensorError, safe_open

    from localai.quant.linear import TurboLinear
    from localai.tts.voxtral.model import VoxtralModel

    folder = Path(folder)
    check_folder(folder)
    config = load_config(folder)
    record = read_quantization(folder)
    hint = DOWNLOAD_HINT if record is None else REQUANTIZE_HINT
    dtype = dtype or torch.bfloat16
    with torch.device("meta"):
        model = VoxtralModel(config)
    stored_dtypes = {} if record is None else _use_turbo_linears(model, record)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    path = folder / WEIGHTS_FILE
    try:
        with safe_open(str(path), framework="pt", device="cpu") as file:
            mapping = map_keys({k: tuple(file.get_slice(k).get_shape()) for k in file.keys()}, expected, path, hint)
            state = {}
            for key, target in mapping.items():
                where = embed_device if target.startswith("text_embeddings.") else device
                tensor = file.get_tensor(key)
                if target in stored_dtypes:
                    if tensor.dtype != stored_dtypes[target]:
                        raise _bad_checkpoint(f"{key} is {str(tensor.dtype).removeprefix('torch.')}, expected "
                                              f"{str(stored_dtypes[target]).removeprefix('torch.')}", path, hint)
                    state[target] = tensor.to(where)
                else:
                    state[target] = tensor.to(device=where, dtype=torch.float32 if target in FLOAT32_TENSORS else dtype)
    except (OSError, RuntimeError, SafetensorError) as exc:
        raise LocalaiError(f"cannot read {path}: {first_line(exc)}", hint) from None
    model.load_state_dict(state, strict=True, assign=True)
    for layer in model.modules():
        if isinstance(layer, TurboLinear):
            layer.reset_signs()  # never saved: rebuilt from the seed next to the loaded codes
    model.codec.fold_weight_norm()
    return model.eval()


def list_voices(folder: Path) -> list[str]:
    voice_dir = Path(folder) / VOICE_FOLDER
    return sorted(p.stem for p in voice_dir.glob("*.pt")) if voice_dir.is_dir() else []


def usable_voices(folder: Path, tokenizer) -> list[str]:
    """The voices that have a file and that the tokenizer knows the length of."""
    counts = tokenizer.instruct_tokenizer.audio_encoder.audio_config.voice_num_audio_tokens or {}
    return [name for name in list_voices(folder) if name in counts]


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
        raise LocalaiError(f"refusing {path.name}: {first_line(exc)}",
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
