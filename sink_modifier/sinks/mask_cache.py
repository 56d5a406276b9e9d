"""A checked on-disk cache of what calibration computes before pruning: sink masks, one-shot statistics.

Pruning one model at several sparsities or structures repeats work that does not depend on
the sparsity: every batch's sink pass on the dense model (the masks ``1 - s`` are a function
of the dense weights, the batch's tokens and the sink settings only), and, in llm-compressor's
``basic`` one-shot pipeline where no layer sees a pruned one, the Wanda column statistics.
``sink_cache_dir`` on the sink-aware modifiers (``sink-modifier sweep`` turns it on in its
output folder) keeps them in a folder:

* ``token_weights/<digest>.pt``: one file per calibration batch, keyed by the digest of the
  batch's own inputs (token ids, attention mask, the whole-model call's tensors), so an entry
  does not depend on which batches came before it;
* ``statistics/<digest>.pt``: one file per modifier run, keyed by the digest of every batch in
  loader order.

Both are also keyed by the dense model's weights (:func:`weights_digest`: blake2b over every
parameter and buffer, its name, dtype and shape, in name order, plus the model's class and
config), the settings that shape the result (sink threshold, slope, policy and its thresholds,
family, mask token; for statistics also the statistic, pipeline, targets, ignore and modules)
and the device type. ``attention_chunk_size`` and the mass collector (default or the paper's
order, :mod:`sink_modifier.sinks.mass`) are keyed too: once a query block splits the sequence the
block sums round differently in the last bit, and a hit must equal the run it replaces.

Nothing is trusted blindly: an entry holds the full text of its key and a digest of its
tensors; a file whose key differs (a digest collision), whose tensors do not match their
digest, or that does not load (truncated, corrupt) is recomputed and overwritten, with one
log line. Files are written to a temporary sibling and renamed into place, so a reader never
sees half a file and concurrent writers (ranks of one ``torchrun``) each publish a whole one.

Pure apart from the folder it reads and writes: no llm-compressor, no modifier state.
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from loguru import logger

from sink_modifier.data.keyed_random import digest_hex

__all__ = [
    "CalibrationCache",
    "TensorStore",
    "batch_digest",
    "key_text",
    "loader_batch_digests",
    "tensors_digest",
    "weights_digest",
]

FORMAT = 1  # bump when the entry layout or a key's meaning changes: old entries then miss

# config keys that say how the model was loaded or is being run, not what it computes
_VOLATILE_CONFIG_KEYS = {
    "_name_or_path", "transformers_version", "use_cache", "output_attentions", "output_hidden_states",
    "return_dict", "torchscript",
}


# -- digests --------------------------------------------------------------------------------------
def _tensor_chunks(name: str, tensor: torch.Tensor | None) -> Iterator[Any]:
    """Bytes naming ``tensor`` exactly: its name, dtype, shape, then its raw bytes (no copy on the CPU)."""
    if tensor is None:
        yield f"{name}|none;".encode()
        return
    if tensor.device.type == "meta":
        raise ValueError(f"{name} has no data (meta tensor): its bytes cannot be digested")
    data = tensor.detach().cpu().contiguous()
    yield f"{name}|{data.dtype}|{tuple(data.shape)};".encode()
    if data.numel():
        yield data.reshape(-1).view(torch.uint8).numpy()


def tensors_digest(tensors: Mapping[str, torch.Tensor | None]) -> str:
    """The digest of named tensors (names sorted; ``None`` values count as absent but named)."""
    return digest_hex(chunk for name in sorted(tensors) for chunk in _tensor_chunks(name, tensors[name]))


def batch_digest(batch: Mapping[str, Any]) -> str:
    """The digest of a calibration batch: its tensor values by key (other values are ignored)."""
    return tensors_digest({str(k): v for k, v in batch.items() if isinstance(v, torch.Tensor)})


def _config_text(model: torch.nn.Module) -> str:
    config = getattr(model, "config", None)
    to_dict = getattr(config, "to_dict", None)
    if not callable(to_dict):
        return ""
    values = {k: v for k, v in to_dict().items() if k not in _VOLATILE_CONFIG_KEYS and not k.startswith("_")}
    return json.dumps(values, sort_keys=True, default=str)


def weights_digest(model: torch.nn.Module) -> str:
    """The digest of ``model``'s weights: class, config, then every parameter and buffer in name order.

    Raises ``ValueError`` when a tensor has no data here (meta, e.g. weights offloaded in a way
    that leaves no readable copy); the caller then runs without the cache.
    """
    named = dict(model.named_parameters())
    named.update({f"buffer:{k}": v for k, v in model.named_buffers()})
    header = f"{type(model).__module__}.{type(model).__qualname__}|{_config_text(model)};".encode()
    tensors = (chunk for name in sorted(named) for chunk in _tensor_chunks(name, named[name]))
    return digest_hex(itertools.chain((header,), tensors))  # streamed: one tensor's bytes at a time


def key_text(material: Mapping[str, Any]) -> str:
    """The canonical text of a key (sorted-key JSON): what an entry stores and is compared on."""
    return json.dumps({"format": FORMAT, **material}, sort_keys=True, separators=(",", ":"), allow_nan=False,
                      default=str)


def loader_batch_digests(loader: Any) -> list[str] | None:
    """The digest of every batch of ``loader``, in order, or ``None`` when its order is not fixed.

    Only a ``DataLoader`` with a ``SequentialSampler`` (no shuffling) and no workers yields the
    same batches on every pass; anything else is not keyed (no statistics are reused).
    """
    sampler = getattr(loader, "sampler", None)
    if not isinstance(loader, torch.utils.data.DataLoader) or not isinstance(sampler, torch.utils.data.SequentialSampler):
        return None
    if getattr(loader, "num_workers", 0):
        return None
    digests = []
    for batch in loader:
        if not isinstance(batch, Mapping):
            return None
        digests.append(batch_digest(batch))
    return digests


# -- files ------------------------------------------------------------------------------------------
class TensorStore:
    """Entries ``{name: tensor}`` under ``folder/kind/<digest of key>.pt``, verified when read."""

    def __init__(self, folder: str | Path, kind: str) -> None:
        self.folder = Path(folder) / kind
        self.kind = kind

    def path(self, key: str) -> Path:
        return self.folder / f"{digest_hex(key)}.pt"

    def load(self, key: str) -> dict[str, torch.Tensor] | None:
        """The entry stored under ``key``, or ``None`` (absent, another key, corrupt: one log line)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
            problem = _entry_problem(entry, key)
        except Exception as err:  # truncated or not a torch file: any reader error means "recompute"
            problem = f"unreadable ({type(err).__name__})"
        if problem is not None:
            logger.info(f"sink cache: {path} {problem}; recomputing and overwriting it")
            return None
        return dict(entry["tensors"])

    def store(self, key: str, tensors: Mapping[str, torch.Tensor]) -> Path:
        """Write the entry atomically (temporary sibling, then rename)."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        cpu = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
        entry = {"format": FORMAT, "key": key, "checksum": tensors_digest(cpu), "tensors": cpu}
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as handle:
                torch.save(entry, handle)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return path


def _entry_problem(entry: Any, key: str) -> str | None:
    if not isinstance(entry, dict) or entry.get("format") != FORMAT or not isinstance(entry.get("tensors"), dict):
        return "is not an entry of this cache format"
    if entry.get("key") != key:
        return "holds the entry of other weights, rows or settings"
    tensors = entry["tensors"]
    if not all(isinstance(t, torch.Tensor) for t in tensors.values()) or entry.get("checksum") != tensors_digest(tensors):
        return "does not match its checksum (corrupt)"
    return None


# -- one calibration run ------------------------------------------------------------------------------
class CalibrationCache:
    """A modifier run's view of the cache folder.

    ``model_digest`` is computed on first use (the first batch's sink pass, before any
    weight is pruned) and kept for the run; ``settings`` are the modifier's sink settings,
    part of every key. ``counts`` says what was reused: ``{"token_weights": {"hits", "misses"},
    "statistics": {...}}``.
    """

    def __init__(self, folder: str | Path, model: torch.nn.Module, settings: Mapping[str, Any]) -> None:
        self.folder = Path(folder)
        self.settings = dict(settings)
        self._model = model
        self._model_digest: str | None = None
        self.counts: dict[str, dict[str, int]] = {}

    @property
    def model_digest(self) -> str:
        if self._model_digest is None:
            self._model_digest = weights_digest(self._model)
        return self._model_digest

    def _count(self, kind: str, outcome: str) -> None:
        counts = self.counts.setdefault(kind, {"hits": 0, "misses": 0})
        counts[outcome] += 1

    def _key(self, kind: str, device: torch.device | str, extra: Mapping[str, Any]) -> str:
        return key_text({"entry": kind, "model": self.model_digest, "settings": self.settings,
                         "device": torch.device(device).type, **extra})

    def token_weights(
        self, inputs: Mapping[str, torch.Tensor | None], compute: Callable[[], torch.Tensor]
    ) -> torch.Tensor:
        """One batch's token weights: the stored ones for these ``inputs``, else ``compute()`` (then stored)."""
        device = inputs["input_ids"].device
        store = TensorStore(self.folder, "token_weights")
        key = self._key("token_weights", device, {"inputs": tensors_digest(inputs)})
        found = store.load(key)
        shape = tuple(inputs["input_ids"].shape)
        if found is not None and "weights" in found and tuple(found["weights"].shape) == shape:
            self._count("token_weights", "hits")
            return found["weights"].to(device)
        self._count("token_weights", "misses")
        weights = compute()
        store.store(key, {"weights": weights})
        return weights

    def statistics_key(self, device: torch.device | str, batches: Iterable[str], extra: Mapping[str, Any]) -> str:
        """The key of a run's statistics: these batch digests in order, plus ``extra`` (statistic, modules...)."""
        return self._key("statistics", device, {"batches": list(batches), **extra})

    def load_statistics(self, key: str) -> dict[str, torch.Tensor] | None:
        found = TensorStore(self.folder, "statistics").load(key)
        self._count("statistics", "misses" if found is None else "hits")
        return found

    def store_statistics(self, key: str, tensors: Mapping[str, torch.Tensor]) -> Path:
        return TensorStore(self.folder, "statistics").store(key, tensors)
