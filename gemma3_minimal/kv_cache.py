"""The KV cache: a full buffer on global layers, a ring buffer of `sliding_window` slots on local ones.

    global layer:  slot p holds position p                 [0 1 2 3 4 5 6 7 8 9 ...]  grows with the context
    local layer:   slot p % window holds position p        [8 9 2 3 4 5 6 7]          window = 8: fixed size

A local layer never looks further back than its window, so its cache can overwrite the oldest
slot. With 5 local layers to each global one, most of the cache stays a fixed size however long
the context grows (the 5:1 pattern: Gemma 3 report, section 2; Figures 5-6 in section 5.2
measure the saving).
Every slot remembers the position it holds (-1 when empty); masks are built from those positions.
"""

from __future__ import annotations

from typing import Optional

import torch

from .config import LOCAL, Gemma3Config


class LayerCache:
    """Keys and values of one layer: [batch, kv_heads, slots, head_dim] each, plus slot positions."""

    def __init__(self, batch_size: int, kv_heads: int, slots: int, head_dim: int, ring: bool,
                 dtype: torch.dtype, device):
        shape = (batch_size, kv_heads, slots, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.pos = torch.full((slots,), -1, dtype=torch.long, device=device)  # position held by each slot
        self.image_ids = torch.full((batch_size, slots), -1, dtype=torch.long, device=device)  # -1: text
        self.ring = ring

    @property
    def slots(self) -> int:
        return self.k.shape[2]

    @property
    def nbytes(self) -> int:
        """Bytes of the key and value buffers."""
        return self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size()

    def update(self, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
               image_ids: Optional[torch.Tensor] = None):
        """Store new keys/values k, v [B, K, T, D] at `positions` [T]; return what the queries attend to.

        Returns (keys, values, key_positions, key_image_ids). A global layer returns its filled prefix.
        A ring returns its slots after writing when T == 1 (the overwritten slot is the one that
        just left the window); for T > 1 it returns old slots and new keys together, since the
        chunk's first queries still need keys that its last ones push out.
        """
        T = k.shape[2]
        if self.ring and T > 1:
            keys = torch.cat([self.k, k], dim=2)
            values = torch.cat([self.v, v], dim=2)
            key_pos = torch.cat([self.pos, positions])
            key_image_ids = None if image_ids is None else torch.cat([self.image_ids, image_ids], dim=1)
            self.write(k, v, positions, image_ids)
            return keys, values, key_pos, key_image_ids
        if self.ring:
            self.write(k, v, positions, image_ids)
            return self.k, self.v, self.pos, None if image_ids is None else self.image_ids
        start = int(positions[0])  # a global layer's positions continue its filled prefix
        end = start + T
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        self.pos[start:end] = positions
        if image_ids is not None:
            self.image_ids[:, start:end] = image_ids
        return self.k[:, :, :end], self.v[:, :, :end], self.pos[:end], None if image_ids is None else self.image_ids[:, :end]

    def write(self, k, v, positions, image_ids=None) -> None:
        """Ring write: position p goes to slot p % slots; only the last `slots` positions are kept."""
        keep = min(k.shape[2], self.slots)  # only the last `slots` positions can still be seen
        k, v, positions = k[:, :, -keep:], v[:, :, -keep:], positions[-keep:]
        slot = positions % self.slots
        self.k.index_copy_(2, slot, k)
        self.v.index_copy_(2, slot, v)
        self.pos.index_copy_(0, slot, positions)
        if image_ids is not None:
            self.image_ids[:, slot] = image_ids[:, -keep:]


class KVCache:
    """One LayerCache per layer for `max_len` positions; `nbytes` equals `memory.kv_cache_bytes`.

    With `sliding=False` every layer keeps a full buffer (the all-global layout, for comparison).
    """

    def __init__(self, cfg: Gemma3Config, batch_size: int, max_len: int, dtype: torch.dtype = torch.float32,
                 device="cpu", sliding: bool = True):
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        if max_len > cfg.max_position_embeddings:
            raise ValueError(
                f"max_len {max_len} exceeds the context of {cfg.name} ({cfg.max_position_embeddings} positions)"
            )
        self.max_len = max_len
        self.length = 0  # positions written so far: the next token's position
        self.layers = []
        for kind in cfg.layer_types:
            ring = sliding and kind == LOCAL
            slots = min(cfg.sliding_window, max_len) if ring else max_len
            self.layers.append(LayerCache(batch_size, cfg.num_key_value_heads, slots, cfg.head_dim, ring, dtype, device))

    def advance(self, T: int) -> None:
        """Count T new positions, refusing more than the cache was built for."""
        if self.length + T > self.max_len:
            raise ValueError(
                f"KV cache full: it was built for {self.max_len} positions and {self.length + T} were asked for; "
                "build the cache with a larger max_len"
            )
        self.length += T

    def __getitem__(self, layer_idx: int) -> LayerCache:
        return self.layers[layer_idx]

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def nbytes(self) -> int:
        return sum(layer.nbytes for layer in self.layers)
