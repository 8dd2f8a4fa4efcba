"""The KV cache: a full buffer on global layers, a ring buffer of `sliding_window` slots on local ones.

    global layer:  slot p holds position p                 [0 1 2 3 4 5 6 7 8 9 ...]  grows with the context
    local layer:   slot p % window holds position p        [8 9 2 3 4 5 6 7]          window = 8: fixed size

A local layer never looks further back than its window, so its cache can overwrite the oldest
slot. With 5 local layers to each global one, most of the cache stays a fixed size however long
the context grows (the 5:1 pattern: Gemma 3 report, section 2; Figures 5-6 in section 5.2
measure the saving). Both write position p to slot p % slots (a global layer has a slot for every
position); every slot remembers the position it holds (-1 when empty), and masks are built from those.
"""

from __future__ import annotations

import torch

from .checks import check_cache_len, check_cache_room
from .config import LOCAL, Gemma3Config


class LayerCache:
    """Keys and values of one layer, [batch, kv_heads, slots, head_dim] each, and the position in each slot."""

    def __init__(self, batch_size: int, kv_heads: int, slots: int, head_dim: int, ring: bool,
                 dtype: torch.dtype, device: torch.device | str):
        self.slots, self.ring = slots, ring
        self.k = torch.zeros(batch_size, kv_heads, slots, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.pos = torch.full((slots,), -1, dtype=torch.long, device=device)  # -1: empty
        self.image_ids = torch.full((batch_size, slots), -1, dtype=torch.long, device=device)  # -1: text

    def update(self, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, image_ids: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Store k, v [B, K, T, D] at `positions` [T]; return the (keys, values, positions, image ids) to attend to:
        a global layer's filled slots, a ring's slots, or for T > 1 a ring's old slots and the new keys side by
        side (the first queries of the chunk still need keys that its last ones overwrite)."""
        if self.ring and k.shape[2] > 1:
            seen = (torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2), torch.cat([self.pos, positions]),
                    None if image_ids is None else torch.cat([self.image_ids, image_ids], dim=1))
            self.write(k, v, positions, image_ids)
            return seen
        self.write(k, v, positions, image_ids)
        n = self.slots if self.ring else int(positions[-1]) + 1  # a global layer is filled up to the last position
        return self.k[:, :, :n], self.v[:, :, :n], self.pos[:n], None if image_ids is None else self.image_ids[:, :n]

    def write(self, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
              image_ids: torch.Tensor | None = None) -> None:
        """Position p goes to slot p % slots; of more positions than slots, only the last `slots` are kept."""
        keep = min(k.shape[2], self.slots)
        slot = positions[-keep:] % self.slots
        self.k.index_copy_(2, slot, k[:, :, -keep:])
        self.v.index_copy_(2, slot, v[:, :, -keep:])
        self.pos.index_copy_(0, slot, positions[-keep:])
        if image_ids is not None:
            self.image_ids[:, slot] = image_ids[:, -keep:]


class KVCache:
    """One LayerCache per layer for `max_len` positions; `length` counts the positions written so far.
    With `sliding=False` every layer keeps a full buffer (the all-global layout, for comparison)."""

    def __init__(self, cfg: Gemma3Config, batch_size: int, max_len: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu", sliding: bool = True):
        check_cache_len(cfg, max_len)
        self.max_len = max_len
        self.length = 0  # the next token's position
        self.layers = []
        for kind in cfg.layer_types:
            ring = sliding and kind == LOCAL
            slots = min(cfg.sliding_window, max_len) if ring else max_len
            self.layers.append(LayerCache(batch_size, cfg.num_key_value_heads, slots, cfg.head_dim, ring, dtype,
                                          device))

    def advance(self, T: int) -> None:
        """Count T new positions (refused past `max_len`)."""
        check_cache_room(self.length + T, self.max_len)
        self.length += T

    def __getitem__(self, layer_idx: int) -> LayerCache:
        return self.layers[layer_idx]

    @property
    def nbytes(self) -> int:
        """Bytes of all keys and values: what `memory.kv_cache_bytes` computes from the config."""
        return sum(layer.k.nbytes + layer.v.nbytes for layer in self.layers)
