"""Saving pruned models: atomic checkpoints, the sparsity they really have, ONNX export."""

from sink_modifier.export.atomic import (
    METADATA_FILE,
    OutputExistsError,
    check_output_dir,
    write_atomically,
)
from sink_modifier.export.onnx_export import OnnxExportResult, export_onnx
from sink_modifier.export.sparsity import sparsity_report

__all__ = [
    "METADATA_FILE",
    "OnnxExportResult",
    "OutputExistsError",
    "check_output_dir",
    "export_onnx",
    "sparsity_report",
    "write_atomically",
]
