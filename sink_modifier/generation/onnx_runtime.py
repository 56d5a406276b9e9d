"""Running an exported diffusion LM in ONNX Runtime, as a ``logits_fn`` for :func:`generate`.

    denoiser = OnnxDenoiser("outputs/tiny-dlm-onnx")          # folder from export_onnx, or a .onnx file
    ids = generate(denoiser, prompt_ids, mask_token_id=denoiser.mask_token_id, gen_length=64, steps=64)

The sampler is the same code as for PyTorch; only the forward pass runs in ORT.
"""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["OnnxDenoiser"]


class OnnxDenoiser:
    """``OnnxDenoiser(path)(ids [B, L]) -> float logits [B, L, V]`` (a CPU torch tensor).

    ``path`` is an export folder (holding ``model.onnx``) or an ``.onnx`` file. The mask id,
    ``max_position_embeddings`` and vocabulary size come from the metadata ``export_onnx``
    stores in the file; they are ``None`` for files exported elsewhere. ``intra_op_threads``
    is ORT's intra-op thread count (``None``: ORT's default, one per physical core).
    """

    def __init__(self, path: str | Path, *, providers: list[str] | None = None, intra_op_threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise ImportError("running ONNX models needs onnxruntime: pip install 'sink-modifier[onnx]'") from err
        from sink_modifier.export.onnx_export import ONNX_FILE

        location = Path(path)
        onnx_file = location / ONNX_FILE if location.is_dir() else location
        if not onnx_file.is_file():
            raise FileNotFoundError(f"{onnx_file} does not exist; pass the folder written by "
                                    "`sink-modifier export-onnx` or a .onnx file")
        options = ort.SessionOptions()
        if intra_op_threads is not None:
            options.intra_op_num_threads = intra_op_threads
        self.path = onnx_file
        self.intra_op_threads = intra_op_threads
        chosen = providers or _default_providers(ort)
        self.session = ort.InferenceSession(str(onnx_file), options, providers=chosen)
        # A u8s8 int8 graph on an x86 CPU without VNNI saturates in MLAS' U8S8 kernel; ORT's exact
        # path is a session option that must be set before the session exists (export.onnx_cpu).
        from sink_modifier.export.onnx_cpu import exact_int8_session_config

        self.session_config = exact_int8_session_config(self.session.get_modelmeta().custom_metadata_map)
        if self.session_config:
            for key, value in self.session_config.items():
                options.add_session_config_entry(key, value)
            self.session = ort.InferenceSession(str(onnx_file), options, providers=chosen)
        inputs = [i.name for i in self.session.get_inputs()]
        if inputs != ["input_ids"]:
            raise ValueError(f"{onnx_file} takes inputs {inputs}; expected exactly ['input_ids'] "
                             "(a logits-only graph as written by export_onnx)")
        self._output = self.session.get_outputs()[0].name
        meta = self.session.get_modelmeta().custom_metadata_map
        self.mask_token_id = _int_or_none(meta.get("mask_token_id"))
        self.max_position_embeddings = _int_or_none(meta.get("max_position_embeddings"))
        self.vocab_size = _int_or_none(meta.get("vocab_size"))
        self.calls = 0

    def __call__(self, ids: torch.Tensor | None = None, *, input_ids: torch.Tensor | None = None) -> torch.Tensor:
        ids = input_ids if ids is None else ids
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
            raise ValueError(f"OnnxDenoiser takes a [batch, seq_len] tensor of token ids, got {ids!r:.80}")
        if self.max_position_embeddings is not None and ids.shape[1] > self.max_position_embeddings:
            raise ValueError(f"sequence length {ids.shape[1]} exceeds the exported model's "
                             f"max_position_embeddings ({self.max_position_embeddings})")
        self.calls += 1
        array = ids.detach().to("cpu", torch.int64).contiguous().numpy()
        return torch.from_numpy(self.session.run([self._output], {"input_ids": array})[0])

    @property
    def runtime(self) -> dict:
        """What ran the graph, for result records (``threads``: ``None`` is ORT's default)."""
        import onnxruntime as ort

        return {"engine": "onnxruntime", "version": ort.__version__, "providers": self.session.get_providers(),
                "threads": self.intra_op_threads, "file": str(self.path),
                **({"session_config": dict(self.session_config)} if self.session_config else {})}

    def __repr__(self) -> str:
        return f"OnnxDenoiser({str(self.path)!r}, providers={self.session.get_providers()})"


def _default_providers(ort) -> list[str]:
    """CUDA when this onnxruntime build has it, then CPU (not Azure and other remote providers)."""
    preferred = ("CUDAExecutionProvider", "CPUExecutionProvider")
    return [p for p in preferred if p in ort.get_available_providers()] or ["CPUExecutionProvider"]


def _int_or_none(value) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
