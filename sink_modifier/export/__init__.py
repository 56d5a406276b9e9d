"""Saving pruned models: atomic checkpoints and the sparsity they really have."""

from sink_modifier.export.checkpoint import (
    METADATA_FILE,
    OutputExistsError,
    check_output_dir,
    write_atomically,
)
from sink_modifier.export.sparsity import is_n_m_sparse, sparsity_report

__all__ = [
    "METADATA_FILE",
    "OutputExistsError",
    "check_output_dir",
    "is_n_m_sparse",
    "sparsity_report",
    "write_atomically",
]
