"""An ONNX export folder opened like a model folder: checked, then loaded as a ``LoadedModel`` run in ONNX Runtime.

    checked = check_onnx_export("outputs/tiny-dlm-onnx", threads=4)   # no session yet
    tokenizer = checked.check_tokenizer(needs_mask_token=True)
    loaded = checked.load()               # LoadedModel; loaded.model runs in ORT

A folder written by ``sink-modifier export-onnx`` holds ``config.json`` and the tokenizer
beside ``model.onnx`` (fp32, or an int8 graph with the same single input ``input_ids`` and
output ``logits``). So the family, mask token, logit shift and scorable positions come from
the same files and the same code as for the PyTorch checkpoint (:class:`CheckedOnnxExport`
is a :class:`~sink_modifier.commands.preflight.CheckedModel` whose ``load`` opens an ORT
session instead of reading weights), and the loaded model is an ``nn.Module`` without
parameters whose forward is the graph (:class:`OnnxLanguageModel`): evaluation, the lm-eval
adapter and the sampler call ``family.logits(model, ids)`` on it exactly as on the PyTorch
model. The graph computes ``model(input_ids=ids).logits``; a family whose forward is
something else (DiffusionGemma's prompt encoder + canvas decoder) is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from sink_modifier.commands.preflight import CheckedModel

if TYPE_CHECKING:
    from sink_modifier.families import LoadedModel, ModelFamily
    from sink_modifier.generation.onnx_runtime import OnnxDenoiser

__all__ = ["CheckedOnnxExport", "OnnxLanguageModel", "check_onnx_export", "is_onnx_export",
           "refuse_onnx_export_without_onnx"]


class OnnxLanguageModel(nn.Module):
    """``model(input_ids=ids).logits`` computed by an :class:`OnnxDenoiser`, with the export's
    transformers ``config``; logits come back on the device of ``ids``."""

    def __init__(self, denoiser: OnnxDenoiser, config: Any):
        super().__init__()
        self.denoiser = denoiser
        self.config = config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **unused):
        from transformers.modeling_outputs import MaskedLMOutput

        if attention_mask is not None and not bool(attention_mask.all()):
            # the graph has no attention-mask input: padded rows would be scored as if unpadded
            raise ValueError("the ONNX graph takes no attention mask; run it on unpadded rows")
        return MaskedLMOutput(logits=self.denoiser(input_ids).to(input_ids.device))

    @property
    def runtime(self) -> dict:
        """Where the forward ran (for result records): see :attr:`OnnxDenoiser.runtime`."""
        return self.denoiser.runtime


def is_onnx_export(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding ``model.onnx`` (as written by ``export-onnx``)."""
    from sink_modifier.export.onnx_export import ONNX_FILE

    return Path(path).is_dir() and (Path(path) / ONNX_FILE).is_file()


def refuse_onnx_export_without_onnx(path: str | Path) -> None:
    """An export folder has no weights for PyTorch: say to add ``--onnx`` rather than "no weight files"."""
    if is_onnx_export(path):
        raise ValueError(f"{path} is an ONNX export (model.onnx, no PyTorch weights); pass --onnx to run it in "
                         "ONNX Runtime")


@dataclass
class CheckedOnnxExport(CheckedModel):
    """An export folder that passed every check that needs no ORT session."""

    onnx_file: Path | None = None
    threads: int | None = None  # ORT intra-op threads (None: ORT's default)
    providers: list[str] | None = None  # None: CUDA when this onnxruntime has it, then CPU

    def load(self, *, dtype: Any = "auto") -> LoadedModel:
        """Open the ORT session (``dtype`` is the graph's own and is ignored); the tokenizer of
        :meth:`check_tokenizer` is reused, with ``--mask-token-id`` already applied to it and
        to ``self.config``, which the loaded model carries."""
        from sink_modifier.families import LoadedModel
        from sink_modifier.generation.onnx_runtime import OnnxDenoiser

        tokenizer = self.tokenizer if self.tokenizer is not None else self.check_tokenizer(needs_mask_token=False)
        denoiser = OnnxDenoiser(self.onnx_file, providers=self.providers, intra_op_threads=self.threads)
        _check_graph_matches_config(denoiser, self.config, self.path)
        model = OnnxLanguageModel(denoiser, self.config).eval()
        return LoadedModel(model=model, tokenizer=tokenizer, family=self.family, config=self.source.config,
                           folder=self.source.folder)


def check_onnx_export(
    path: str | Path, *, family: str | ModelFamily | None = None, trust_remote_code: bool = False,
    mask_token_id: int | None = None, threads: int | None = None, providers: list[str] | None = None,
) -> CheckedOnnxExport:
    """Check an export folder without starting ONNX Runtime: ``model.onnx`` present,
    ``config.json`` readable by transformers, a family whose forward the graph reproduces.

    A model checkpoint folder (weights, no ``model.onnx``) and a single ``.onnx`` file (no
    config or tokenizer beside it) are refused, each naming what to pass instead.
    """
    from sink_modifier.commands.preflight import transformers_config
    from sink_modifier.export.onnx_export import ONNX_FILE
    from sink_modifier.families import open_model_folder
    from sink_modifier.families.remote_code import check_custom_code
    from sink_modifier.families.weights_files import weight_files

    folder = Path(path)
    if folder.is_file():
        raise ValueError(f"{folder} is a file; pass the folder written by `sink-modifier export-onnx --output DIR` "
                         "(model.onnx with config.json and the tokenizer beside it)")
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} does not exist; write an ONNX export folder with "
                                f"`sink-modifier export-onnx --model CHECKPOINT --output {folder}`")
    if not (folder / ONNX_FILE).is_file():
        if weight_files(folder):
            raise ValueError(f"{folder} is a model checkpoint (weights, no {ONNX_FILE}), not an ONNX export: drop "
                             "--onnx (onnx=True in lm-eval's --model_args) to run it in PyTorch, or export it first "
                             f"with `sink-modifier export-onnx --model {folder} --output DIR`")
        raise FileNotFoundError(f"{folder} has no {ONNX_FILE}; pass a folder written by `sink-modifier export-onnx`")
    source = open_model_folder(folder, family)
    check_custom_code(source.folder, source.config, trust_remote_code, source.family)
    _check_family_forward(source.family, folder)
    return CheckedOnnxExport(path=str(path), source=source, config=transformers_config(source, trust_remote_code),
                             trust_remote_code=trust_remote_code, mask_token_id=mask_token_id,
                             onnx_file=folder / ONNX_FILE, threads=threads, providers=providers)


def _check_family_forward(family: ModelFamily, folder: Path) -> None:
    """The graph is ``model(input_ids).logits``: refuse a family that runs its model otherwise."""
    from sink_modifier.families import ModelFamily

    if type(family).logits is ModelFamily.logits and type(family).native_generate is ModelFamily.native_generate:
        return
    raise ValueError(
        f"{folder} is a {family.name} model, whose forward is not model(input_ids).logits (the only input an "
        "exported graph takes); evaluate or generate from its PyTorch checkpoint instead (drop --onnx), or "
        "pass --family if detection is wrong"
    )


def _check_graph_matches_config(denoiser: OnnxDenoiser, config: Any, path: str) -> None:
    """The graph's own metadata (when it has some) must agree with ``config.json`` beside it."""
    for name in ("vocab_size", "max_position_embeddings"):
        in_graph, in_config = getattr(denoiser, name), getattr(config, name, None)
        if in_graph is not None and isinstance(in_config, int) and in_graph != in_config:
            raise ValueError(
                f"{path}: model.onnx records {name}={in_graph} but config.json has {in_config}; the folder mixes "
                "two exports, write it again with `sink-modifier export-onnx --overwrite`"
            )
