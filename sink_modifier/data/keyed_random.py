"""The one way this package turns a key into randomness: a 64-bit blake2b digest of the key.

Every seeded draw (calibration noise, evaluation masks, lm-eval masks, reference-mode noise)
and every fingerprint (calibration sets, module lists, analysed windows) goes through here, so
a draw is a pure function of its coordinates: the same key gives the same tokens whatever the
batch size, row order, device or process. Hashing (rather than ``seed + index``) keeps the
streams of neighbouring seeds and indices unrelated.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Literal

import torch

__all__ = ["digest_hex", "keyed_generator", "keyed_seed", "tensor_bytes"]

_BITS_63 = (1 << 63) - 1


def _digest(data: bytes | str | Iterable[bytes]) -> bytes:
    hasher = hashlib.blake2b(digest_size=8)
    if isinstance(data, str):
        data = data.encode()
    for chunk in (data,) if isinstance(data, bytes) else data:
        hasher.update(chunk)
    return hasher.digest()


def keyed_seed(data: bytes | str | Iterable[bytes], *, keep: Literal["high", "low"] = "high") -> int:
    """A non-negative 63-bit integer naming ``data`` (a string, bytes, or chunks of bytes).

    ``keep`` picks which 63 of the digest's 64 bits (little-endian) form the integer. The
    calibration-row stream keeps the low bits and every other stream the high bits: both are
    as first released, and changing either would change every pruned checkpoint or every
    evaluation mask.
    """
    value = int.from_bytes(_digest(data), "little")
    return value & _BITS_63 if keep == "low" else value >> 1


def keyed_generator(key: str, *, keep: Literal["high", "low"] = "high") -> torch.Generator:
    """A CPU generator seeded with :func:`keyed_seed` of ``key`` (draws do not depend on the device)."""
    return torch.Generator(device="cpu").manual_seed(keyed_seed(key, keep=keep))


def digest_hex(data: bytes | str | Iterable[bytes]) -> str:
    """The 16-hex-digit digest of ``data``, for records (e.g. which windows were analysed)."""
    return _digest(data).hex()


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """The int64 bytes of an integer tensor, on the CPU (a key for token rows)."""
    return tensor.detach().cpu().to(torch.int64).contiguous().numpy().tobytes()
