"""Run 2:4-pruned ``nn.Linear`` layers on PyTorch's semi-structured sparse kernels.

vLLM dropped its 2:4 kernels and compressed-tensors its sparse formats; the speed-up path
that remains is PyTorch's own ``torch.sparse.to_sparse_semi_structured`` (cuSPARSELt, or
CUTLASS as fallback) on NVIDIA GPUs with compute capability 8.0 or newer (A100, H100, H200,
RTX 30xx/40xx...). The weight is swapped in place::

    module.weight = nn.Parameter(to_sparse_semi_structured(module.weight), requires_grad=False)

and ``nn.Linear``'s forward dispatches to the sparse matmul. The accelerated model is for
inference (no gradients flow into converted weights).

Kernel constraints (``torch/sparse/semi_structured.py``, ``_DTYPE_SHAPE_CONSTRAINTS``: the
weight's rows and columns must be positive multiples of these):

============  ==================  ================
dtype         cuSPARSELt          CUTLASS
============  ==================  ================
float16       16 x 16             32 x 64
bfloat16      16 x 16             32 x 64
int8          32 x 32             16 x 128
float32       --                  32 x 32
============  ==================  ================

``backend="auto"`` (default) uses cuSPARSELt when this torch build has it, else CUTLASS, and
judges eligibility by the constraints of *both* (multiples of 32 x 64 for fp16/bf16), so the
report is the same on every machine. Only fp16/bf16 weights are converted (fp32 too with
``backend="cutlass"``); int8 ``nn.Linear`` weights do not exist outside a quantized runtime.
The 2:4 pattern is along the input dimension: of every 4 consecutive input weights of an
output row, at least 2 are zero (what ``mask_structure: "2:4"`` produces). The kernels do not
check this; a non-2:4 weight would silently lose values, so it is checked here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.sparse import (
    SparseSemiStructuredTensor,
    SparseSemiStructuredTensorCUSPARSELT,
    SparseSemiStructuredTensorCUTLASS,
    to_sparse_semi_structured,
)

from sink_modifier.families.modules import output_head
from sink_modifier.sparsity_pattern import is_n_m_sparse

__all__ = [
    "DEFAULT_MIN_FEATURES",
    "AccelerationReport",
    "accelerate_2of4",
    "eligible_2of4_linears",
]

# Below about this many input/output features the sparse kernel's overhead eats the saving
# of half the multiply-adds (the published speed-ups are for 4k-16k wide layers).
DEFAULT_MIN_FEATURES = 1024

_BACKENDS = {"cusparselt": SparseSemiStructuredTensorCUSPARSELT, "cutlass": SparseSemiStructuredTensorCUTLASS}
_FLOAT_DTYPES = (torch.float16, torch.bfloat16)
_SUPPORTED_DTYPES = {"auto": _FLOAT_DTYPES, "cusparselt": _FLOAT_DTYPES, "cutlass": (*_FLOAT_DTYPES, torch.float32)}
# relative error (max |sparse - dense| / max |dense|) above which a converted layer is reverted
_CHECK_TOLERANCE = {torch.float16: 2e-2, torch.bfloat16: 2e-2, torch.float32: 1e-4}

_KERNELS = {"auto": "both cuSPARSELt and CUTLASS (backend='auto')", "cusparselt": "cuSPARSELt",
            "cutlass": "CUTLASS"}
_GPU_NEEDED = "2:4 semi-structured kernels need an NVIDIA GPU (sm80+) with CUDA"


@dataclass
class AccelerationReport:
    """Which ``nn.Linear`` layers were (or, with ``dry_run``, would be) converted, and why not the others."""

    backend: str
    dtype: str | None
    dry_run: bool
    min_features: int
    eligible: list[str] = field(default_factory=list)
    converted: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def num_eligible(self) -> int:
        return len(self.eligible)

    @property
    def num_converted(self) -> int:
        return len(self.converted)

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    def summary(self) -> str:
        if self.dry_run:
            return (f"2:4 semi-structured [{self.backend}]: {self.num_eligible} Linear layers eligible "
                    f"(dry run, nothing converted); {self.num_skipped} skipped")
        return (f"2:4 semi-structured [{self.backend}]: {self.num_converted} of {self.num_eligible} eligible "
                f"Linear layers converted; {self.num_skipped} skipped")

    def to_dict(self) -> dict:
        return {
            "backend": self.backend,
            "dtype": self.dtype,
            "dry_run": self.dry_run,
            "min_features": self.min_features,
            "num_eligible": self.num_eligible,
            "num_converted": self.num_converted,
            "num_skipped": self.num_skipped,
            "eligible": list(self.eligible),
            "converted": list(self.converted),
            "skipped": dict(self.skipped),
        }


def _check_backend(backend: str) -> None:
    if backend not in _SUPPORTED_DTYPES:
        raise ValueError(f"backend must be one of {sorted(_SUPPORTED_DTYPES)}, got {backend!r}")


def _resolve_backend(backend: str) -> str:
    """The backend conversion will really use: 'auto' means cuSPARSELt when this build has it."""
    if backend != "auto":
        return backend
    if SparseSemiStructuredTensor._FORCE_CUTLASS or not torch.backends.cusparselt.is_available():
        return "cutlass"
    return "cusparselt"


def _min_shape(backend: str, dtype: torch.dtype) -> tuple[int, int] | None:
    """(rows, cols) the weight must be a multiple of; None if the dtype is not supported."""
    if dtype not in _SUPPORTED_DTYPES[backend]:
        return None
    names = ("cusparselt", "cutlass") if backend == "auto" else (backend,)
    rows = cols = 1
    for name in names:
        constraint = _BACKENDS[name]._DTYPE_SHAPE_CONSTRAINTS.get(dtype)
        if constraint is None:
            return None
        rows = max(rows, constraint.sparse_min_rows)  # all powers of two: max is the lcm
        cols = max(cols, constraint.sparse_min_cols)
    return rows, cols


def _dtype_name(dtype: torch.dtype | None) -> str | None:
    return None if dtype is None else str(dtype).removeprefix("torch.")


def _check_dtype(dtype: torch.dtype | None, backend: str) -> None:
    if dtype is not None and dtype not in _SUPPORTED_DTYPES[backend]:
        names = ", ".join(_dtype_name(d) for d in _SUPPORTED_DTYPES[backend])
        raise ValueError(
            f"dtype {_dtype_name(dtype)} is not supported by the 2:4 kernels of {_KERNELS[backend]}; use one of {names}"
        )


def _not_2of4_reason(weight: torch.Tensor) -> str | None:
    rows, cols = weight.shape
    if is_n_m_sparse(weight, 2, 4):
        return None
    groups = (weight == 0).reshape(rows, cols // 4, 4).sum(-1)
    bad = int((groups < 2).sum())
    zeros = float((weight == 0).float().mean())
    return (f"not 2:4 sparse: {bad} of {groups.numel()} groups of 4 inputs keep more than 2 weights "
            f"({zeros:.1%} zeros)")


def eligible_2of4_linears(
    model: nn.Module,
    *,
    min_features: int = DEFAULT_MIN_FEATURES,
    dtype: torch.dtype | None = None,
    backend: str = "auto",
    require_cuda: bool = False,
) -> dict[str, str | None]:
    """For every ``nn.Linear`` of ``model``: ``None`` if it can run on 2:4 kernels, else why not.

    A pure check; nothing is changed. ``dtype`` judges the weights as if cast to it (default:
    their own dtype). ``require_cuda`` also refuses weights that are not on a CUDA device.
    """
    _check_backend(backend)
    _check_dtype(dtype, backend)
    output_embeddings = output_head(model)
    owners: dict[int, list[str]] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        for param_name, param in module.named_parameters(recurse=False):
            owners.setdefault(id(param), []).append(f"{module_name}.{param_name}" if module_name else param_name)

    result: dict[str, str | None] = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        result[name] = _reason(name, module, output_embeddings, owners, min_features, dtype, backend, require_cuda)
    return result


def _reason(name, module, output_embeddings, owners, min_features, dtype, backend, require_cuda) -> str | None:
    weight = module.weight
    if name.split(".")[-1] == "lm_head" or module is output_embeddings:
        return "lm_head (output embeddings): not pruned, stays dense"
    if isinstance(weight, SparseSemiStructuredTensor):
        return "already semi-structured sparse"
    if getattr(module, "quantization_scheme", None) is not None:
        return ("quantized by compressed-tensors (its forward fake-quantizes weights/inputs); "
                "the 2:4 kernels here take fp16/bf16 weights")
    if weight.device.type == "meta":
        return "weight is on the meta device (offloaded or not materialized)"
    shared = [o for o in owners.get(id(weight), []) if o != f"{name}.weight"]
    if shared:
        return f"weight is shared with {shared[0]} (tied): converting it would change that module too"
    if require_cuda and weight.device.type != "cuda":
        return f"weight is on {weight.device}, not on a CUDA device"
    if weight.ndim != 2:
        return f"weight has {weight.ndim} dimensions, expected 2"
    effective = dtype or weight.dtype
    minimum = _min_shape(backend, effective)
    if minimum is None:
        names = ", ".join(_dtype_name(d) for d in _SUPPORTED_DTYPES[backend])
        return (f"dtype {_dtype_name(effective)} not supported by the 2:4 kernels of {_KERNELS[backend]} "
                f"({names}); pass dtype=torch.bfloat16")
    rows, cols = weight.shape
    min_rows, min_cols = minimum
    if rows % min_rows or cols % min_cols:
        reason = (f"shape (out={rows}, in={cols}) is not a multiple of ({min_rows}, {min_cols}) "
                  f"required for {_dtype_name(effective)} by {_KERNELS[backend]}")
        lenient = _min_shape("cusparselt", effective) if backend == "auto" else None
        if lenient is not None and not (rows % lenient[0] or cols % lenient[1]):
            reason += f"; backend='cusparselt' alone needs only {lenient}"
        return reason
    if min(rows, cols) < min_features:
        return f"smaller than min_features={min_features} (out={rows}, in={cols}): kernel overhead outweighs the saving"
    if module.bias is not None and module.bias.ndim != 1:
        return "bias is not 1-D"
    return _not_2of4_reason(weight.detach())


def _require_gpu(model: nn.Module) -> None:
    devices = {p.device for p in model.parameters()} | {b.device for b in model.buffers()}
    where = ", ".join(sorted(str(d) for d in devices)) or "no device (no parameters)"
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"{_GPU_NEEDED}; the model is on {where} and torch.cuda.is_available() is False "
            "(no GPU here, or a CPU-only torch build). On an NVIDIA machine move it with model.cuda() / "
            "load it on the GPU (from_pretrained(..., device_map='cuda')). "
            "Pass dry_run=True for the eligibility report alone."
        )
    cuda = sorted({d for d in devices if d.type == "cuda"}, key=str)
    if not cuda:
        raise RuntimeError(
            f"{_GPU_NEEDED}; the model is on {where}: move it with model.cuda() / load it on the GPU "
            "(from_pretrained(..., device_map='cuda')) before accelerating. "
            "Pass dry_run=True for the eligibility report alone."
        )
    if torch.version.hip is None:
        for device in cuda:
            major, minor = torch.cuda.get_device_capability(device)
            if (major, minor) < (8, 0):
                raise RuntimeError(
                    f"{_GPU_NEEDED}; {device} ({torch.cuda.get_device_name(device)}) is sm{major}{minor}, "
                    "older than Ampere (sm80)"
                )


def _convert(module: nn.Linear, backend: str, check: bool) -> str | None:
    """Swap the weight for its semi-structured form; return why not if it fails the check."""
    dense = module.weight.detach().contiguous()
    if backend == "cusparselt" and not SparseSemiStructuredTensor._FORCE_CUTLASS:
        sparse = to_sparse_semi_structured(dense)
    else:
        sparse = _BACKENDS[backend].from_dense(dense)
    if check:
        generator = torch.Generator(device=dense.device).manual_seed(0)
        probe = torch.randn(64, dense.shape[1], device=dense.device, dtype=dense.dtype, generator=generator)
        bias = None if module.bias is None else module.bias.detach()
        with torch.no_grad():
            expected = torch.nn.functional.linear(probe, dense, bias).float()
            got = torch.nn.functional.linear(probe, sparse, bias).float()
        scale = float(expected.abs().max()) or 1.0
        error = float((got - expected).abs().max()) / scale
        if not error <= _CHECK_TOLERANCE[dense.dtype]:  # also catches nan
            return f"semi-structured result differs from dense (max relative error {error:.3g}); left dense"
    module.weight = nn.Parameter(sparse, requires_grad=False)
    return None


def accelerate_2of4(
    model: nn.Module,
    *,
    min_features: int = DEFAULT_MIN_FEATURES,
    dtype: torch.dtype | None = None,
    backend: str = "auto",
    dry_run: bool = False,
    check: bool = True,
) -> AccelerationReport:
    """Swap every eligible 2:4-pruned ``nn.Linear`` weight of ``model`` for a semi-structured one.

    ``model`` must be on an NVIDIA GPU with compute capability >= 8.0, else ``RuntimeError``
    (unless ``dry_run``). ``dtype`` (float16/bfloat16) casts the whole model first, since the
    kernels need activations, weights and bias in one dtype. Layers that are not 2:4, have an
    unsupported dtype or shape, are smaller than ``min_features``, are quantized, tied or the
    LM head are skipped, each with its reason. ``check`` runs each converted layer once
    against its dense weight and leaves it dense if they differ. ``dry_run`` changes nothing
    and works anywhere (CPU included): the report then lists what would be converted.
    """
    _check_backend(backend)
    _check_dtype(dtype, backend)
    if not dry_run:
        _require_gpu(model)
        if dtype is not None:
            model.to(dtype)
    resolved = backend if dry_run else _resolve_backend(backend)
    reasons = eligible_2of4_linears(
        model, min_features=min_features, dtype=dtype, backend=backend, require_cuda=not dry_run
    )
    report = AccelerationReport(backend=resolved, dtype=_dtype_name(dtype), dry_run=dry_run, min_features=min_features)
    for name, reason in reasons.items():
        if reason is None:
            report.eligible.append(name)
        else:
            report.skipped[name] = reason
    if dry_run:
        return report
    for name in report.eligible:
        module = model.get_submodule(name)
        try:
            reason = _convert(module, resolved, check)
        except (RuntimeError, NotImplementedError) as err:
            reason = f"conversion failed: {type(err).__name__}: {err}"
        if reason is None:
            report.converted.append(name)
        else:
            report.skipped[name] = reason
    return report
