"""lm-evaluation-harness integration: the ``sink_dlm`` model type for diffusion LMs (harness glue only).

Importing this package registers ``sink_dlm`` with lm-eval (0.4.13 has no plugin entry point
for models, so the ``lm_eval`` command cannot find it by itself); ``python -m
sink_modifier.lm_eval ...`` is lm-eval's own CLI with the model registered first::

    python -m sink_modifier.lm_eval --model sink_dlm \\
        --model_args pretrained=../shared/models/tiny-dlm,mc_num=8 \\
        --tasks sink_heldout_mc --include_path outputs/lm_eval_tasks --limit 8 --device cpu

The ELBO itself is :func:`sink_modifier.scoring.mc_loglikelihood`.
"""

import lm_eval.models  # noqa: F401  (registers lm-eval's own models first; see get_model)

from .model import DiffusionLM

__all__ = ["DiffusionLM"]
