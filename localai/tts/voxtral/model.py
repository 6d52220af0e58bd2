"""The whole Voxtral TTS model: text embeddings, backbone, audio-code embeddings, acoustic head, codec."""

from __future__ import annotations

import torch
from torch import nn

from localai.tts.voxtral.acoustic import AcousticHead
from localai.tts.voxtral.backbone import Backbone
from localai.tts.voxtral.codec import CodecDecoder
from localai.tts.voxtral.config import VoxtralConfig


class AudioCodeEmbedding(nn.Module):
    """One table for all 37 codebooks, each at its own offset; a frame's embedding is the sum of its 37 rows."""

    def __init__(self, config: VoxtralConfig):
        super().__init__()
        self.embeddings = nn.Embedding(config.audio_vocab_size, config.backbone.dim)
        self.offsets = tuple(config.code_offsets)
        self._offsets_on: dict[torch.device, torch.Tensor] = {}

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """codes: [B, 37] model ids -> [B, C]"""
        if codes.device not in self._offsets_on:
            self._offsets_on[codes.device] = torch.tensor(self.offsets, device=codes.device)
        return self.embeddings(codes + self._offsets_on[codes.device]).sum(dim=1)


class VoxtralModel(nn.Module):
    def __init__(self, config: VoxtralConfig):
        super().__init__()
        self.config = config
        # read once per sentence for the prompt; the loader may leave it in CPU memory
        self.text_embeddings = nn.Embedding(config.backbone.vocab_size, config.backbone.dim)
        self.backbone = Backbone(config.backbone)
        self.audio_embeddings = AudioCodeEmbedding(config)
        self.acoustic = AcousticHead(config)
        self.codec = CodecDecoder(config.codec)

    @property
    def device(self) -> torch.device:
        return self.backbone.norm.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.backbone.norm.weight.dtype

    def embed_prompt(self, ids: list[int], voice: torch.Tensor) -> torch.Tensor:
        """Token embeddings with the voice's rows at the [AUDIO] positions: [1, T, C] on the model's device."""
        ids_t = torch.tensor(ids, device=self.text_embeddings.weight.device)
        embeds = self.text_embeddings(ids_t).to(self.device, self.dtype)
        slots = (ids_t == self.config.audio_token_id).to(self.device)
        if int(slots.sum()) != voice.shape[0]:
            raise ValueError(f"the prompt has {int(slots.sum())} [AUDIO] slots but the voice has {voice.shape[0]} rows")
        embeds[slots] = voice.to(self.device, self.dtype)
        return embeds[None]
