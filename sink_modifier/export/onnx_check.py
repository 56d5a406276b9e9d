"""The export's check: ONNX Runtime's logits against the PyTorch reference at a few lengths, within an atol
per graph precision (:data:`DEFAULT_ATOL`); a miss is :class:`OnnxCheckError` (exit 1), one line naming the cause."""

from __future__ import annotations

from pathlib import Path

import torch

from sink_modifier.errors import CheckFailedError
from sink_modifier.export.onnx_model import _LogitsOnly
from sink_modifier.export.onnx_quantization import (
    ExportPrecision,
)

# Largest ORT-vs-PyTorch |Δlogit| accepted by default. Float graphs reproduce PyTorch to float
# rounding, and so do W4A16 int4 graphs (float activations; 1.3e-5 on tiny-dlm). An int8
# graph computes the same activation integers as the compressed-tensors fake-quantized
# forward, but a last-bit difference in a layer's input moves a value across a rounding
# boundary now and then, and dynamic int8 amplifies that through the layers: on tiny-dlm
# W8A8 ORT vs PyTorch differ by at most 0.25 over 48 random batches (lengths 8 to 256;
# logits of magnitude ~13), as PyTorch's own fake-quant forward does in float32 vs float64
# (0.30). 1.0 is four times that; a wrong scale or transposed weight lands far above.
DEFAULT_ATOL = {ExportPrecision.FLOAT: 1e-3, ExportPrecision.INT8: 1.0, ExportPrecision.INT4: 1e-3}


class OnnxCheckError(CheckFailedError, RuntimeError):
    """ONNX Runtime's logits differ from the PyTorch reference by more than ``atol``: the export
    was written to nowhere. The message is one line naming the difference, ``--atol`` and the
    likely cause (the CLI prints it and exits 1, the convention for a failed check)."""

    def __init__(self, worst: float, atol: float, diffs: dict[str, float], cause: str):
        self.worst, self.atol, self.diffs, self.cause = worst, atol, dict(diffs), cause
        at = ", ".join(f"{shape} {diff:.3g}" for shape, diff in diffs.items())
        super().__init__(f"ONNX Runtime logits differ from the PyTorch reference by {worst:.3g}, over --atol {atol} "
                         f"(max |Δlogit| at batch x length {at}); {cause}; nothing was written")


def _example_ids(config, batch: int, seq_len: int, seed: int) -> torch.Tensor:
    vocab = int(getattr(config, "vocab_size", 32) or 32)
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, seq_len), generator=g)


def _check_ort(onnx_path: Path, wrapper: _LogitsOnly, config, lengths: tuple[int, ...], atol: float,
               operands: str | None = None):
    """Compare ORT with PyTorch at each length (batch 2); return max diffs and bidirectionality.

    ``operands``: the int8 graph's GEMM operand types (``None`` for a float / int4 graph), so that
    a failure can name its likely cause."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    diffs: dict[str, float] = {}
    bidirectional = None
    for i, length in enumerate(lengths):
        ids = _example_ids(config, 2, length, seed=100 + i)
        with torch.no_grad():
            expected = wrapper(ids).float()
        got = torch.from_numpy(session.run(["logits"], {"input_ids": ids.numpy()})[0]).float()
        if got.shape != expected.shape:
            raise RuntimeError(f"ONNX logits have shape {tuple(got.shape)} for input {tuple(ids.shape)}, "
                               f"PyTorch {tuple(expected.shape)}: the dynamic axes were not exported")
        diffs[f"2x{length}"] = float((got - expected).abs().max())
        if length > 1 and bidirectional is None:
            changed = ids.clone()
            changed[:, -1] = (changed[:, -1] + 1) % int(getattr(config, "vocab_size", 32) or 32)
            other = torch.from_numpy(session.run(["logits"], {"input_ids": changed.numpy()})[0])
            bidirectional = bool((other[:, 0] - got[:, 0]).abs().max() > 0)
    worst = max(diffs.values())
    if not worst <= atol:
        raise OnnxCheckError(worst, atol, diffs, _likely_cause(operands))
    return diffs, bidirectional


def _likely_cause(operands: str | None) -> str:
    from sink_modifier.export.onnx_cpu import cpu_isa
    from sink_modifier.export.onnx_int8 import Int8Operands

    isa = cpu_isa()
    if operands == Int8Operands.U8S8.value and isa.u8s8_saturates:
        return (f"cause: this CPU ({isa.value}, no VNNI) runs u8s8 int8 GEMMs with saturating int16 pair sums; "
                "export with --int8-operands auto (the default: u8u8 on such a CPU) or u8u8 (exact on every CPU)")
    if operands is not None:
        return (f"the int8 graph ({operands} GEMMs, CPU {isa.value}) does not reproduce the compressed-tensors "
                "model: the checkpoint's weights, scales and config.json may not belong together; raise --atol "
                "only if this difference is expected")
    return "the exported graph does not reproduce the model (export in float32, or raise --atol if this is expected)"
