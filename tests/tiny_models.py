"""Tiny random models with real tokenizers, built from a config: no hub, no download."""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "Local models run on one consumer GPU with four-bit weights.",
    "Hello world! How are you today? I am fine, thank you.",
    "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?'\"()-",
] * 20


def build_tokenizer(vocab_size: int = 320):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(folder: Path, family: str = "llama", hidden: int = 64, layers: int = 2,
                heads: int = 4, kv_heads: int = 2, intermediate: int = 128, seed: int = 0,
                dtype: str = "float32") -> Path:
    """Write a tiny random `family` (llama | qwen3 | mistral, the last with a 4-token sliding
    window) model with a tokenizer into `folder`."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen3Config

    tokenizer = build_tokenizer()
    common = dict(
        vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, intermediate_size=intermediate,
        max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    if family == "llama":
        config = LlamaConfig(**common, tie_word_embeddings=False)
    elif family == "qwen3":
        config = Qwen3Config(**common, head_dim=hidden // heads, tie_word_embeddings=True)
    elif family == "mistral":
        config = MistralConfig(**common, sliding_window=4, tie_word_embeddings=False)
    else:
        raise ValueError(f"unknown family {family}")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).to(getattr(torch, dtype)).eval()
    # random init is tiny (std 0.02); widen it so greedy text differs between prompts
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.5 / p.shape[-1] ** 0.5)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def rewrite_voxtral_weights(folder: Path, edit) -> None:
    """Load a Voxtral folder's consolidated.safetensors, let `edit(tensors)` change the dict, write it back."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / "consolidated.safetensors"))
    edit(tensors)
    save_file(tensors, str(folder / "consolidated.safetensors"))
