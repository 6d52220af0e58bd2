"""Load a model folder and its tokenizer with transformers, with one-line errors for broken folders.

Quantized checkpoints (bitsandbytes, TurboQuant) carry a `quantization_config` in config.json
and load through the same `from_pretrained` call: transformers picks the quantizer from it.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from localai.errors import LocalaiError, first_line

DOWNLOAD_HINT = "Download the model again with `localai download MODEL`"


def read_config(folder: Path) -> dict:
    """config.json of a transformers model folder, or one line saying what the folder is instead."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LocalaiError(f"{folder} is not a folder", "Pass a model folder, alias or hub id")
    config_file = folder / "config.json"
    if not config_file.is_file():
        from localai.tts.voxtral.loader import is_voxtral_folder

        if is_voxtral_folder(folder):
            raise LocalaiError(f"{folder} is a Voxtral TTS checkpoint, not a text-generation model",
                               f"speak with it: `localai speak --tts-model {folder}`")
        raise LocalaiError(f"{folder} has no config.json, so it is not a transformers model folder",
                           "Pass the folder that holds config.json and the weights")
    try:
        return json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise LocalaiError(f"{config_file} is not valid JSON ({exc})", DOWNLOAD_HINT) from exc


def _check_weights(folder: Path) -> None:
    """Every weight file present (store.model_folder, the one definition of a complete folder), and
    every .safetensors header readable: truncated or corrupt files fail here, named, before loading."""
    from safetensors import safe_open

    from localai.store.model_folder import check_model_folder

    check_model_folder(folder)
    for file in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except Exception as exc:  # safetensors raises its own SafetensorError, not an OSError
            raise LocalaiError(f"{file} is truncated or corrupt ({exc})", DOWNLOAD_HINT) from exc


DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
               "half": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16"}


def check_dtype_name(dtype: str, error=LocalaiError) -> None:
    """A --dtype value that is no dtype, refused before anything loads (`error`: the class to raise)."""
    if dtype != "auto" and dtype not in DTYPE_NAMES:
        raise error(f"unknown dtype {dtype!r}", f"Use one of: auto, {', '.join(DTYPE_NAMES)}")


def pick_dtype(device: str, dtype: Optional[str] = None):
    """torch dtype from a name ('auto', 'float32', 'bf16', ...): auto = bf16/fp16 on CUDA, fp32 on CPU."""
    import torch

    if dtype in (None, "auto"):
        if device.startswith("cuda"):
            # native bf16 only (compute capability 8.0+): torch reports a Turing card (RTX 20xx) as
            # supporting bf16 through emulation, which has no tensor cores and no bf16 Triton dots
            return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    check_dtype_name(dtype)
    return getattr(torch, DTYPE_NAMES[dtype])


def read_auto_config(folder: Path, hint: str):
    """transformers' config for the model in `folder`; one line naming config.json when it cannot be read."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(folder, trust_remote_code=False)
    except (ValueError, KeyError, OSError) as exc:
        raise LocalaiError(f"transformers cannot read {Path(folder) / 'config.json'}: {first_line(exc)}", hint) from None


def load_model(path, device: Optional[str] = None, dtype=None):
    """A transformers causal LM from a local folder, in eval mode on `device` (default: --device)."""
    from localai.device import resolve_device

    from localai.quant.checkpoint import quantization_config_of

    folder = Path(path)
    config = read_config(folder)
    quantization_config_of(config)  # a malformed quantization_config: one line, before transformers reads it
    _check_weights(folder)
    device = resolve_device(device)
    torch_dtype = pick_dtype(device, dtype)

    from transformers import AutoModelForCausalLM

    quiet_transformers()
    try:
        with _load_report_held():
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype, device_map=device,
                                                         trust_remote_code=False)
    except RuntimeError as exc:
        if "ignore_mismatched_sizes" not in str(exc):
            raise
        raise LocalaiError(f"the weights in {folder} do not have the shapes its config.json describes",
                           "config.json is damaged or belongs to another model; " + DOWNLOAD_HINT) from exc
    except (ValueError, KeyError) as exc:
        model_type = config.get("model_type", "unknown")
        raise LocalaiError(f"transformers cannot load {folder} (model type {model_type!r}): {first_line(exc)}",
                           "Upgrade transformers, or check that this is a text-generation model") from exc
    except OSError as exc:
        raise LocalaiError(f"cannot read the weights in {folder}: {first_line(exc)}", DOWNLOAD_HINT) from exc
    return model.eval()


@contextmanager
def _load_report_held():
    """Hold transformers' multi-line load report (missing, unexpected, mismatched keys) while loading:
    shown as usual when the load succeeds, dropped when it fails, as the one-line error then says it all."""
    import logging

    held = []

    def hold(record) -> bool:
        if "LOAD REPORT" in str(record.msg):
            held.append(record)
            return False
        return True

    logger = logging.getLogger("transformers.modeling_utils")
    logger.addFilter(hold)
    try:
        yield
    finally:
        logger.removeFilter(hold)
    for record in held:
        logger.handle(record)


def quiet_transformers() -> None:
    """transformers' own progress bars are noise next to ours; they stay on with -v."""
    from localai.settings import settings

    if settings.verbosity < 1:
        from transformers.utils import logging

        logging.disable_progress_bar()
    if settings.verbosity < 0:  # --quiet: also the GGUF reader's bar, which is plain tqdm
        import functools

        from transformers import modeling_gguf_pytorch_utils as gguf_utils

        if hasattr(gguf_utils, "tqdm") and not isinstance(gguf_utils.tqdm, functools.partial):
            gguf_utils.tqdm = functools.partial(gguf_utils.tqdm, disable=True)


# what a saved tokenizer consists of, one of them at least (fast, sentencepiece, BPE/WordPiece, tiktoken)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "*.tiktoken", "vocab.json",
                   "vocab.txt", "spiece.model")
TOKENIZER_HINT = ("The folder needs tokenizer.json (or tokenizer.model) and tokenizer_config.json; "
                  + DOWNLOAD_HINT)


def load_tokenizer(path):
    """The tokenizer saved next to the model (tokenizer.json, tokenizer.model, ...)."""
    from transformers import AutoTokenizer

    folder = Path(path)
    read_config(folder)
    if not any(next(folder.glob(pattern), None) for pattern in TOKENIZER_FILES):
        # transformers 5.0 and 5.3 (not 5.10) build an empty tokenizer from config.json here: garbage answers
        raise LocalaiError(f"cannot load the tokenizer in {folder}: it holds no tokenizer file", TOKENIZER_HINT)
    try:
        return AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    except (ValueError, KeyError, OSError, TypeError) as exc:
        raise LocalaiError(f"cannot load the tokenizer in {folder}: {first_line(exc)}", TOKENIZER_HINT) from exc
