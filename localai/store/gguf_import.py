"""Convert a .gguf file once into a safetensors model folder (float32, tokenizer included)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from localai.errors import LocalaiError, first_line
from localai.store.home import (METADATA_FILE, find_imported, model_dir, read_metadata, safe_name,
                                staged_model_dir, writable_models_dir, write_metadata)
from localai.store.locking import store_lock

GGUF_MAGIC = b"GGUF"


def check_gguf(path: Path) -> None:
    """A one-line error unless `path` is a readable file that starts with the GGUF magic bytes."""
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise LocalaiError(f"cannot read {path} ({exc.strerror or exc})", "Check the path") from exc
    if magic != GGUF_MAGIC:
        raise LocalaiError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)",
                           "Pass a .gguf model file, e.g. one exported by llama.cpp")


def gguf_quantization(path: Path) -> str:
    """The file's quantization as llama.cpp names it (e.g. 'Q4_1'); 'unknown' when not recorded.
    Reading it parses every tensor's extent, so a truncated file is found here, before converting."""
    from gguf import GGUFReader, LlamaFileType

    try:
        field = GGUFReader(path).fields.get("general.file_type")
        if field is None:
            return "unknown"
        name = LlamaFileType(int(field.parts[field.data[0]][0])).name
    except (ValueError, KeyError, IndexError, OSError) as exc:  # the reader's words for a short or bad file
        raise LocalaiError(f"{path} is a damaged or truncated GGUF file (the GGUF reader says: {exc})",
                           "Delete it and get a complete copy") from exc
    return name.removeprefix("MOSTLY_")


def _convert(gguf_path: Path, out: Path) -> None:
    """Dequantize the GGUF weights to float32 and save model + tokenizer as a transformers folder."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    options = {}
    if hasattr(transformers, "GgufConfig"):  # newer transformers may keep GGUF blocks packed unless told
        options["quantization_config"] = transformers.GgufConfig(dequantize=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32, **options)
    except (ValueError, KeyError, RuntimeError, OSError) as exc:
        raise LocalaiError(f"transformers cannot convert {gguf_path.name}: {first_line(exc)}",
                           "Use a GGUF of an architecture transformers supports (llama, mistral, qwen2, qwen3, ...)"
                           ) from exc
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def imported_from(name: str, source: str) -> Optional[Path]:
    """The store folder `name` when it holds the model converted from `source`; None when there is
    none; an error when another model has that name."""
    existing = find_imported(name)
    held = read_metadata(existing).get("source", "unknown") if existing is not None else source
    if held != source:
        raise LocalaiError(f"a different model named {existing.name!r} is already in {existing.parent} "
                           f"(from {held})", f"Remove it with `localai rm {existing.name}`, or rename the .gguf file")
    return existing


def file_source(gguf_path: Path) -> str:
    """The recorded source of a local .gguf file: its resolved absolute path."""
    return str(Path(gguf_path).expanduser().resolve())


def _refuse_foreign_folder(name: str) -> None:
    """A folder under the store name without the store's metadata is someone else's: the final
    rename would fail, or replace their files."""
    folder = model_dir(name)
    if folder.exists() and not (folder / METADATA_FILE).exists():
        raise LocalaiError(f"{folder} exists and is not a localai model folder",
                           "move it out of the way, or rename the .gguf file")


def _convert_into_store(gguf_path: Path, name: str, source: str, quantization: str, extra: dict) -> None:
    from localai.console import info
    from localai.loading import quiet_transformers

    with staged_model_dir(name) as staging:
        info(f"converting {gguf_path.name} ({quantization}) to a safetensors model folder...")
        quiet_transformers()
        _convert(gguf_path, staging)
        write_metadata(staging, name=safe_name(name), source=source,
                       format="gguf", gguf_file=gguf_path.name,
                       quantization=f"{quantization} (dequantized to float32)", **extra)


def import_gguf(gguf_path: Path, name: str, source: Optional[str] = None, **extra) -> Path:
    """LOCALAI_HOME/models/<name> converted from `gguf_path`; converted once, then reused.

    Conversions of one name take turns (another process may be converting the same model): the
    second waits, then finds the first one's folder.
    """
    from localai.console import note, verbose

    gguf_path = Path(gguf_path).expanduser().absolute()  # not resolved: a cache link keeps its file name
    source = source or file_source(gguf_path)
    existing = imported_from(name, source)
    if existing is not None:
        return existing
    _refuse_foreign_folder(name)
    check_gguf(gguf_path)
    models = writable_models_dir()
    quantization = gguf_quantization(gguf_path)

    def waiting() -> None:
        note(f"another localai process is converting {safe_name(name)}; waiting for it")

    with store_lock(models, safe_name(name), on_wait=waiting):
        existing = imported_from(name, source)  # finished by the process we waited for
        if existing is None:
            _refuse_foreign_folder(name)
            _convert_into_store(gguf_path, name, source, quantization, extra)
    folder = imported_from(name, source)
    verbose(f"converted model: {folder}")
    return folder
