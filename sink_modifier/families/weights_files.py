"""Are a model folder's weight files whole? Checked from their headers, before any tensor is read.

A truncated download or an interrupted copy shows in a safetensors file's own header: an
8-byte little-endian length, a JSON table of tensors with ``data_offsets`` into the data that
follows. The file must be exactly ``8 + header length + end of the last tensor`` bytes, and
each tensor's byte range must match its dtype and shape. Reading the headers costs a few
kilobytes per file, so every load checks them and a broken file is one clear line naming it,
not a traceback from deep inside ``from_pretrained``.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

__all__ = ["check_weight_files", "weight_files"]

FIX = "re-save or re-download the checkpoint"
# safetensors' own limit on the header size
_MAX_HEADER = 100_000_000
_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2, "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8,
}
_OTHER_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.gguf")
_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def weight_files(folder: Path) -> list[Path]:
    """The weight files of ``folder`` (top level), safetensors first."""
    found = sorted(folder.glob("*.safetensors"))
    for pattern in _OTHER_WEIGHTS:
        found += sorted(folder.glob(pattern))
    return [path for path in found if path.is_file() or path.is_symlink()]


def check_weight_files(folder: Path) -> None:
    """Raise ``ValueError`` naming the file if a weight file is missing, truncated or corrupted."""
    for index in _INDEXES:
        if (folder / index).exists():
            _check_index(folder, folder / index)
    files = weight_files(folder)
    if not files:
        raise ValueError(
            f"{folder} has no weight files (*.safetensors or pytorch_model*.bin); {FIX}, or pass the folder "
            "that holds the weights"
        )
    for path in files:
        if path.suffix == ".safetensors":
            _check_safetensors(path)


def _check_index(folder: Path, index: Path) -> None:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
    except (OSError, ValueError, AttributeError) as err:
        raise ValueError(f"{index} cannot be read as a shard index ({err}); {FIX}") from None
    if not isinstance(weight_map, dict):
        raise ValueError(f"{index} has no weight_map object; {FIX}")
    missing = sorted({str(name) for name in weight_map.values()} - {p.name for p in folder.iterdir()})
    if missing:
        raise ValueError(f"{index} names weight files that are not in {folder}: {', '.join(missing[:5])}; {FIX}")


def _check_safetensors(path: Path) -> None:
    broken = f"{path} is truncated or corrupted"
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                raise ValueError(f"{broken}: it is {size} bytes, shorter than a safetensors header; {FIX}")
            (length,) = struct.unpack("<Q", head)
            if length > _MAX_HEADER or 8 + length > size:
                raise ValueError(
                    f"{broken}: its header claims {length} bytes but the file is {size} bytes; {FIX}"
                )
            raw = handle.read(length)
    except OSError as err:
        raise ValueError(f"{path} cannot be read ({err.strerror or err}); {FIX}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except ValueError:
        raise ValueError(f"{broken}: its header is not valid JSON; {FIX}") from None
    if not isinstance(header, dict):
        raise ValueError(f"{broken}: its header is not a table of tensors; {FIX}")
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, stop = (int(v) for v in entry["data_offsets"])
            shape = [int(d) for d in entry["shape"]]
            dtype = str(entry["dtype"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{broken}: the header entry of {name} is malformed; {FIX}") from None
        width = _DTYPE_BYTES.get(dtype)
        if stop < begin or (width is not None and stop - begin != width * math.prod(shape)):
            raise ValueError(
                f"{broken}: {name} ({dtype} {shape}) spans bytes {begin}..{stop} of the data, which does "
                f"not match its shape; {FIX}"
            )
        end = max(end, stop)
    expected = 8 + length + end
    if size != expected:
        raise ValueError(
            f"{broken}: it is {size} bytes but its header declares {expected} "
            f"({'missing' if size < expected else 'extra'} {abs(expected - size)} bytes); {FIX}"
        )
