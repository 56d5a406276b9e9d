"""What a command checks about its model before loading it, so bad input fails in seconds, not after the load.

Every model-reading command runs, in this order (cheapest and most often wrong first): its
output (claimed for the run: ``sink_modifier.export.output_guard.claim_output``), its
recipe (:mod:`.recipe_check`), then :func:`check_model` (``config.json``, family, weight
files whole, custom code allowed, the transformers config), then reads its text (decoded
once, handed on), then :meth:`CheckedModel.check_tokenizer` (the tokenizer, and the mask
token a diffusion family needs), then cuts the token windows (too little text is refused
here) and only then :meth:`CheckedModel.load` reads the weights, reusing the tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sink_modifier.families import LoadedModel, ModelFamily, ModelFolder

__all__ = ["CheckedModel", "check_model", "transformers_config"]

DEFAULT_SEQ_LEN = 2048  # for configs that name no positional limit


@dataclass
class CheckedModel:
    """A model folder that passed every check that needs no weights."""

    path: str  # as the user gave it, for messages and records
    source: ModelFolder
    config: Any  # the transformers config (no weights read)
    trust_remote_code: bool
    mask_token_id: int | None = None  # --mask-token-id
    tokenizer: Any = None  # set by check_tokenizer

    @property
    def family(self) -> ModelFamily:
        return self.source.family

    def seq_len(self, requested: int | None) -> int:
        """``requested`` (``--seq-len``), else the model's maximum; refused beyond the maximum."""
        from sink_modifier.data import check_seq_len, max_sequence_length

        seq_len = requested or max_sequence_length(self.config) or DEFAULT_SEQ_LEN
        check_seq_len(seq_len, self.config)
        return seq_len

    def calibration_timesteps(self, requested: tuple[float, ...] | None) -> tuple[float, ...]:
        """``requested`` (``--timesteps``), else the family's default grid (LLaDA's for a diffusion
        family, clean rows for a causal one); noise asked of a causal model is refused."""
        from sink_modifier.process import LLADA_TIMESTEPS

        family = self.family
        timesteps = tuple(requested) if requested is not None else (LLADA_TIMESTEPS if family.diffusion else (0.0,))
        if not family.diffusion and any(t != 0 for t in timesteps):
            raise ValueError(
                f"{self.path} is a causal model (family {family.name}): it calibrates on clean rows, so there is "
                f"nothing to noise at timesteps {timesteps}; leave out --timesteps (or pass --timesteps 0), or "
                "name a diffusion family with --family"
            )
        return timesteps

    def check_tokenizer(self, *, needs_mask_token: bool = True) -> Any:
        """Load the tokenizer; apply ``--mask-token-id``, and refuse a mask-token family without one."""
        from sink_modifier.families import load_tokenizer
        from sink_modifier.families.mask_choice import require_mask_token, set_mask_token_id

        tokenizer = load_tokenizer(self.source, trust_remote_code=self.trust_remote_code)
        if self.mask_token_id is not None:
            set_mask_token_id(self.family, tokenizer, self.config, self.mask_token_id)
        if needs_mask_token:
            require_mask_token(self.family, tokenizer, self.config, self.path)
        self.tokenizer = tokenizer
        return tokenizer

    def load(self, *, dtype: Any = "auto") -> LoadedModel:
        """Read the weights (the tokenizer of :meth:`check_tokenizer` is reused)."""
        from sink_modifier.families import load_pretrained

        return load_pretrained(self.source, dtype=dtype, trust_remote_code=self.trust_remote_code,
                               tokenizer=self.tokenizer, mask_token_id=self.mask_token_id)


def check_model(
    path: str | Path | ModelFolder, *, family: str | ModelFamily | None = None, trust_remote_code: bool = False,
    mask_token_id: int | None = None,
) -> CheckedModel:
    """Check a model folder without reading weights: config, family, weight files, custom code, transformers config."""
    from sink_modifier.families.loading import check_model_folder

    source = check_model_folder(path, family, trust_remote_code=trust_remote_code)
    return CheckedModel(path=str(path), source=source, config=transformers_config(source, trust_remote_code),
                        trust_remote_code=trust_remote_code, mask_token_id=mask_token_id)


def transformers_config(source: ModelFolder, trust_remote_code: bool) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source.folder, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as err:
        import transformers

        message = " ".join(str(err).split())[:300]
        raise ValueError(
            f"transformers {transformers.__version__} cannot read {source.folder}/config.json "
            f"({type(err).__name__}: {message}); re-save or re-download the checkpoint, or pass a model of a "
            "type this transformers knows"
        ) from err
