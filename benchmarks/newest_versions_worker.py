"""Load checkpoints with plain transformers and save their logits: run under OUR python and under the side venv's.

The same file runs in both environments (it imports only torch and transformers), so the two
logit sets differ only by the installed versions. Per checkpoint and loading mode:

* ``plain``: ``AutoModelForCausalLM.from_pretrained(folder, dtype=float32)``, what a user types;
* ``dequantize``: the same with ``CompressedTensorsConfig(dequantize=True)``, how
  ``sink_modifier`` loads a compressed-tensors checkpoint (quantized checkpoints only).

    python benchmarks/newest_versions_worker.py JOB.json OUT_DIR

writes ``OUT_DIR/result.json`` (versions, per-entry ok / error / warnings) and one
``OUT_DIR/<entry>.pt`` of logits per loaded entry.
"""

from __future__ import annotations

import json
import sys
import traceback
import warnings
from pathlib import Path


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("torch", "transformers", "compressed-tensors", "accelerate", "safetensors"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    return out


def _load(folder: str, mode: str):
    import torch
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": torch.float32}
    if mode == "dequantize":
        from transformers.utils.quantization_config import CompressedTensorsConfig

        kwargs["quantization_config"] = CompressedTensorsConfig(dequantize=True)
    return AutoModelForCausalLM.from_pretrained(folder, **kwargs).eval()


def main(job_path: str, out_dir: str) -> int:
    import torch

    job = json.loads(Path(job_path).read_text())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ids = torch.tensor(job["ids"])
    result = {"versions": _versions(), "entries": {}}
    for entry in job["entries"]:
        key = entry["key"]
        record: dict = {}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                model = _load(entry["path"], entry["mode"])
                with torch.no_grad():
                    logits = model(input_ids=ids).logits.float()
                torch.save(logits, out / f"{key}.pt")
                # modules that keep a compressed-tensors scheme run its activation fake-quantization
                schemes = [m for m in model.modules() if getattr(m, "quantization_scheme", None) is not None]
                record |= {"ok": True, "finite": bool(torch.isfinite(logits).all()),
                           "weight_dtypes": sorted({str(p.dtype) for p in model.parameters()}),
                           "modules_with_scheme": len(schemes),
                           "status": sorted({str(getattr(m, "quantization_status", None)) for m in schemes})}
            except Exception as err:  # noqa: BLE001 - what breaks is the result
                record |= {"ok": False, "error": f"{type(err).__name__}: {err}"[:1500],
                           "traceback": traceback.format_exc()[-2500:]}
        # deprecations and "ignored" notices are the early signs of what will break next
        record["warnings"] = sorted({f"{w.category.__name__}: {str(w.message)[:300]}" for w in caught})[:12]
        result["entries"][key] = record
    (out / "result.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
