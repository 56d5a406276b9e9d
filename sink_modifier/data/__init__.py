"""Text in, token windows out: documents from files or datasets, cut into full-length windows."""

from .documents import SUPPORTED_EXTENSIONS, DocumentSource, load_documents
from .windows import check_seq_len, max_sequence_length, token_windows

__all__ = ["SUPPORTED_EXTENSIONS", "DocumentSource", "check_seq_len", "load_documents", "max_sequence_length", "token_windows"]
