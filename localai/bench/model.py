"""What the benchmark needs to know about a model, and loading it inside a worker."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class ModelFacts:
    path: str
    architecture: str
    model_type: str
    vocab_size: int
    special_ids: set[int]
    max_positions: int | None
    num_heads: int
    num_kv_heads: int
    quantization: str  # none | turboquant | bitsandbytes | ...

    def describe(self) -> dict:
        return {"path": self.path, "architecture": self.architecture, "quantization": self.quantization,
                "max_positions": self.max_positions, "vocab_size": self.vocab_size}


def model_facts(path: Path) -> ModelFacts:
    """Read config and tokenizer only (no weights) for workload building and checks."""
    from transformers import AutoConfig

    from localai.loading import load_tokenizer

    tokenizer = load_tokenizer(path)  # checks config.json too
    config = AutoConfig.from_pretrained(path)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    quant = getattr(config, "quantization_config", None) or {}
    if not isinstance(quant, dict):
        quant = quant.to_dict()
    return ModelFacts(
        path=str(path),
        architecture=(config.architectures or [config.model_type])[0],
        model_type=text.model_type,
        vocab_size=min(len(tokenizer), text.vocab_size),
        special_ids=set(tokenizer.all_special_ids),
        max_positions=getattr(text, "max_position_embeddings", None),
        num_heads=text.num_attention_heads,
        num_kv_heads=getattr(text, "num_key_value_heads", None) or text.num_attention_heads,
        quantization=quant.get("quant_method", "none"),
    )


def load_for_bench(path: str, device: str, rank: int = 0):
    """The model as `localai` loads it, in eval mode; tensor-parallel rank r goes to cuda:r."""
    from localai.loading import load_model, pick_dtype

    if device != "cuda" or rank == 0:
        return load_model(path, device)
    return load_model(path, "cpu", dtype=pick_dtype("cuda")).to(f"cuda:{rank}")


def locate_model(name: str) -> tuple[Path, str | None]:
    """The local folder for MODEL (downloaded or converted on first use), and the hub repo it stands for."""
    from localai.store import parse_model_ref, resolve_model
    from localai.store.home import read_metadata

    ref = parse_model_ref(name)
    path = resolve_model(name)
    return path, ref.repo_id or read_metadata(path).get("stands_for")
