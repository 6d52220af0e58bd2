"""A preallocated key/value cache: [layers, slots, kv_heads, max_ctx, head_dim] for keys and for values."""

from __future__ import annotations

import torch


def kv_bytes_per_token(layers: int, kv_heads: int, head_dim: int, dtype_bytes: int) -> int:
    """Cache bytes one token costs: keys and values for every layer."""
    return 2 * layers * kv_heads * head_dim * dtype_bytes


class KVCache:
    """One static cache; a sequence owns one slot, tokens sit at their absolute positions."""

    def __init__(self, layers: int, slots: int, kv_heads: int, max_ctx: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str):
        shape = (layers, slots, kv_heads, max_ctx, head_dim)
        # zeros, not empty: masked positions still enter attention as 0 * value, and NaN garbage would poison it
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.slots = slots
        self.max_ctx = max_ctx
        self.layer_shape = shape[1:]
        # per layer, the rows (slot, head, position) as one axis, for index_copy_ writes: [slots*kv_heads*ctx, D]
        self.flat_keys = [layer.view(-1, head_dim) for layer in self.keys.unbind(0)]
        self.flat_values = [layer.view(-1, head_dim) for layer in self.values.unbind(0)]

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.values.nbytes

    def write_read(self, layer: int, write_index: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   slot0: int, batch: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v: [B, kv_heads, T, head_dim] at the flattened rows write_index: [B*kv_heads*T];
        return views of the first `length` positions of slots slot0..slot0+B-1: two [B, kv_heads, length, D].

        Reads go through the same per-layer tensors as the writes, never through `keys` / `values`:
        a compiled step whose inputs overlap in memory (the whole cache beside a view of one layer)
        and are written gets "synthetic base" inputs from torch.compile, which drops every input's
        static address, and CUDA graphs are then skipped (mutated non-static inputs)."""
        keys, values = self.flat_keys[layer], self.flat_values[layer]
        keys.index_copy_(0, write_index, k.reshape(-1, k.shape[-1]))
        values.index_copy_(0, write_index, v.reshape(-1, v.shape[-1]))
        return (keys.view(self.layer_shape)[slot0:slot0 + batch, :, :length],
                values.view(self.layer_shape)[slot0:slot0 + batch, :, :length])

    def tensors(self) -> list[torch.Tensor]:
        """The tensors a forward reads and writes (one pair per layer, no two of them overlapping)."""
        return self.flat_keys + self.flat_values

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` positions of slot src into slot dst (all layers)."""
        self.keys[:, dst, :, :length] = self.keys[:, src, :, :length]
        self.values[:, dst, :, :length] = self.values[:, src, :, :length]
