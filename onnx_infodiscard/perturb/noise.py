"""Row-local noise: every (image, layer) row draws from its own counter-based stream.

A row's noise depends only on the run's seed, the row's canonical image content and its layer,
and on *which* draw it is (stage, step, round, replicate) — never on the other rows of the run,
their order, the chunk size, an out-of-memory retry or the process. Each draw is made of blocks
of `NOISE_BLOCK` samples, each block from a generator seeded by a hash of (row seed, draw, block),
so a draw split over chunks at block boundaries is the same draw.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

#: Samples per noise block: the unit of generation, so chunking never changes a row's noise.
NOISE_BLOCK = 8
_MASK63 = (1 << 63) - 1


def image_hash(pixels: np.ndarray | torch.Tensor) -> str:
    """sha256 (hex) of an image's canonical float32 pixel bytes, C-contiguous: its identity, not its name."""
    if isinstance(pixels, torch.Tensor):
        pixels = pixels.detach().cpu().numpy()
    return hashlib.sha256(np.ascontiguousarray(pixels, dtype=np.float32).tobytes()).hexdigest()


def seed_of_hash(seed: int, image_sha256: str, layer: str) -> int:
    """`row_seed` from an already computed `image_hash`."""
    text = f"{int(seed)}\0{image_sha256}\0{layer}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") & _MASK63


def row_seed(seed: int, pixels: np.ndarray | torch.Tensor, layer: str) -> int:
    """The 63-bit seed of one (image, layer) row: sha256 of the run seed, the image content and the layer name."""
    return seed_of_hash(seed, image_hash(pixels), layer)


def block_seed(row: int, draw: Sequence[int], block: int) -> int:
    """Seed of one noise block: a hash of (row seed, draw counters, block index), 63 bits."""
    data = struct.pack(f"<{len(draw) + 2}q", row, *draw, block)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") & _MASK63


@dataclass(frozen=True)
class Piece:
    """Samples [start, start + count) of one row's draw; `draw` identifies the draw within the row."""

    row: int  # index into the solver's rows
    draw: tuple[int, ...]
    start: int
    count: int


def row_noise(
    seed: int, draw: Sequence[int], start: int, count: int, shape: Sequence[int], device: torch.device
) -> torch.Tensor:
    """Samples [start, start + count) of the draw `draw` of the row seeded `seed`: (count, *shape)."""
    out = torch.empty((count, *shape), device=device)
    generator = torch.Generator(device=device)
    for block in range(start // NOISE_BLOCK, (start + count - 1) // NOISE_BLOCK + 1):
        generator.manual_seed(block_seed(seed, draw, block))
        low, high = max(start, block * NOISE_BLOCK), min(start + count, (block + 1) * NOISE_BLOCK)
        if low == block * NOISE_BLOCK and high == low + NOISE_BLOCK:
            torch.randn((NOISE_BLOCK, *shape), generator=generator, device=device, out=out[low - start : high - start])
        else:  # a partial block: draw it whole, keep the part asked for
            values = torch.randn((NOISE_BLOCK, *shape), generator=generator, device=device)
            out[low - start : high - start] = values[low - block * NOISE_BLOCK : high - block * NOISE_BLOCK]
    return out


def pack(requests: Sequence[tuple[int, tuple[int, ...], int]], batch: int, split: bool = True) -> Iterator[list[Piece]]:
    """Chunks of at most `batch` samples over the draws (row, draw, count), in order.

    With `split`, a draw is cut into pieces at block boundaries (or at `batch` when a batch is
    smaller than a block); without, every draw stays whole in one chunk (one chunk may then exceed
    `batch`, when a single draw does).
    """
    chunk: list[Piece] = []
    room = batch
    for row, draw, count in requests:
        start = 0
        while start < count:
            left = count - start
            if not split:
                take = left
            else:
                take = min(left, room if room < NOISE_BLOCK and not chunk else room - room % NOISE_BLOCK)
                if take <= 0:
                    yield chunk
                    chunk, room = [], batch
                    continue
            if chunk and take > room:
                yield chunk
                chunk, room = [], batch
                continue
            chunk.append(Piece(row, draw, start, take))
            start += take
            room -= take
            if room <= 0:
                yield chunk
                chunk, room = [], batch
    if chunk:
        yield chunk
