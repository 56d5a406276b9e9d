"""lm-evaluation-harness model type ``sink_dlm`` for diffusion language models: harness glue only.

A port of the paper's ``llada_dist`` wrapper (reference spec §4.1) with its bugs fixed (§7.2); what
each request type computes, and the model args, are in ``docs/deploying.md`` (lm-evaluation-harness).
The maths is :mod:`sink_modifier.scoring` (the ELBO in :mod:`~sink_modifier.scoring.elbo`, its masks
in :mod:`~sink_modifier.scoring.masks`, alignment / guidance / masked CE in
:mod:`~sink_modifier.scoring.denoiser`); the model args load through :mod:`.loading`, and the
family read there decides the forward (``family.logits``), the alignment (``family.logit_shift``)
and what hidden positions hold (``family.evaluation_corruption``). A request the family cannot
score (``family.scorable``: DiffusionGemma scores only its canvas) is refused, not mis-scored.
``generate_until`` uses the family's own sampler where it has one, else
:func:`sink_modifier.generation.generate`. Under ``accelerate launch`` / ``torchrun`` each rank
holds its own copy of the model and lm-eval gathers through :meth:`DiffusionLM.all_gather` /
:meth:`DiffusionLM.gather_object`, as for its ``hf`` model.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict

import torch
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from tqdm.auto import tqdm

from sink_modifier.generation import generate
from sink_modifier.lm_eval.loading import as_bool, load_model_args, optional_int, use_onnx
from sink_modifier.process.mask_token import resolve_mask_token_id
from sink_modifier.scoring.denoiser import check_logit_shift
from sink_modifier.scoring.elbo import mc_loglikelihood, request_key
from sink_modifier.scoring.masks import elbo_masks, window_generator

__all__ = ["DiffusionLM"]

log = logging.getLogger(__name__)

_GENERATE_SALT = "lm_eval:generate"


@register_model("sink_dlm", "sink-dlm")
class DiffusionLM(TemplateLM):
    """lm-eval model for diffusion LMs, read through their family (LLaDA, Dream, DiffusionGemma, ...).

    Model args (``--model_args key=value,...``):
        pretrained: model folder (``config.json``; compressed-tensors quantized checkpoints are
            dequantized at load), an ONNX export folder (``model.onnx``, run in ONNX Runtime), or
            an already loaded model (then pass ``tokenizer``).
        onnx: run ``pretrained`` in ONNX Runtime; default: whether the folder holds ``model.onnx``.
        threads: ONNX Runtime intra-op threads (default ORT's: one per physical core).
        tokenizer: tokenizer folder or object (default: ``pretrained``).
        mc_num: Monte-Carlo draws per ``loglikelihood`` request (default 128, as the reference).
        batch_size: rows per forward pass (default 32; lm-eval's ``--batch_size`` sets it too).
        strata_size: draws sharing one stratified offset; default ``mc_num`` (all);
            ``strata_size=batch_size`` reproduces the reference exactly.
        cfg: classifier-free guidance scale (0 = off).
        family: model family (``llada``, ``dream``, ``diffusion_gemma``, ...; default detected
            from the config, see :mod:`sink_modifier.families`).
        mask_token_id: default the family's (tokenizer, else ``config.mask_token_id``); not
            needed by uniform-noise families.
        logit_shift: 0 (LLaDA) or 1 (Dream); default the family's.
        is_check_greedy: compute ``is_greedy`` by greedy unmasking (default False -> False).
        gen_length, steps, block_length, remasking, temperature: for ``generate_until``.
        max_length: longest sequence scored (default ``config.max_position_embeddings``).
        add_bos_token: tokenize with special tokens (default False, as lm-eval's ``hf``).
        dtype: ``auto`` | ``float32`` | ``bfloat16`` | ``float16``.
        device: ``cuda`` / ``cpu`` / ...; falls back to CPU when CUDA is absent.
        trust_remote_code, seed (masks and sampling; default 1234, the reference's seed).
    """

    backend = "causal"  # lm-eval's tokenisation: encode(context + continuation), split after context

    def __init__(
        self,
        pretrained="",
        tokenizer=None,
        mc_num: int = 128,
        batch_size: int | str = 32,
        strata_size: int | None = None,
        cfg: float = 0.0,
        mask_token_id: int | None = None,
        logit_shift: int | None = None,
        family: str | None = None,
        is_check_greedy: bool = False,
        gen_length: int = 128,
        steps: int = 128,
        block_length: int = 32,
        remasking: str = "low_confidence",
        temperature: float = 0.0,
        max_length: int | None = None,
        add_bos_token: bool = False,
        dtype: str = "auto",
        device: str | None = None,
        trust_remote_code: bool = False,
        seed: int = 1234,
        onnx: bool | None = None,
        threads: int | None = None,
        max_batch_size: int | None = None,  # passed by lm-eval's CLI; unused
        **unused,
    ) -> None:
        super().__init__()
        if unused:
            log.warning("sink_dlm ignores unknown model args %s", sorted(unused))
        trust_remote_code = as_bool(trust_remote_code)
        self.onnx = use_onnx(pretrained, onnx)
        # ORT returns its logits on the CPU: keep the sampler's tensors there unless told otherwise
        self._setup_distributed("cpu" if self.onnx and device is None else device)
        self._model, self.tokenizer, self.family = load_model_args(
            pretrained, tokenizer, dtype, trust_remote_code, None if family in (None, "", "None") else str(family),
            onnx=self.onnx, threads=optional_int(threads),
        )
        if not self.family.diffusion:
            raise ValueError(
                f"{pretrained} is a {self.family.name} (autoregressive) model; sink_dlm scores masked "
                "diffusion LMs; use lm-eval's --model hf for causal ones (or pass family=... if misdetected)"
            )
        if self.family.uniform_noise:
            log.warning("sink_dlm: family %s uses uniform noise; log-likelihoods are a denoising "
                        "cross-entropy weighted like the ELBO, not a likelihood bound", self.family.name)
        self._model.to(self._device).eval()

        self.mc_num = int(mc_num)
        if str(batch_size).startswith("auto"):
            log.warning("sink_dlm has no automatic batch size; using 32 rows per forward")
            batch_size = 32
        self.batch_size_per_gpu = int(batch_size)
        self.strata_size = optional_int(strata_size)
        elbo_masks(1, self.mc_num, 0, 0, self.strata_size)  # validates mc_num / strata_size
        self.cfg = float(cfg)
        logit_shift = optional_int(logit_shift)
        self.logit_shift = logit_shift if logit_shift is not None else self.family.logit_shift
        check_logit_shift(self.logit_shift)
        config = getattr(self._model, "config", None)
        self.seed = int(seed)
        self.corruption = self.family.evaluation_corruption(self.tokenizer, config, self.seed)
        mask_token_id = optional_int(mask_token_id)
        if mask_token_id is None:
            mask_token_id = self.family.mask_token_id(self.tokenizer, config)
        if mask_token_id is None and self.corruption is None:
            mask_token_id = resolve_mask_token_id(self.tokenizer, config)  # raises, naming the model
        self.mask_token_id = mask_token_id
        self.is_check_greedy = as_bool(is_check_greedy)
        if self.is_check_greedy and self.family.uniform_noise:
            raise ValueError(f"is_check_greedy decodes with the mask-token sampler; family {self.family.name} "
                             "uses uniform noise and has none")
        self.gen_length, self.steps, self.block_length = int(gen_length), int(steps), int(block_length)
        self.remasking = str(remasking)
        self.temperature = float(temperature)
        self.add_bos_token = as_bool(add_bos_token)
        self._max_length = optional_int(max_length) or getattr(config, "max_position_embeddings", None) or 2048
        self._warned_truncation = False

    # ------------------------------------------------------------------ setup
    def _setup_distributed(self, device: str | None) -> None:
        self.accelerator = None
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from accelerate import Accelerator

            # without cpu=True accelerate ignores a CPU-only torchrun / mpirun world (DistributedType.NO)
            cpu = not torch.cuda.is_available() or (device is not None and str(device).startswith("cpu"))
            self.accelerator = Accelerator(cpu=cpu)
            if self.accelerator.num_processes <= 1:
                raise RuntimeError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but accelerate sees one process")
            self._rank = self.accelerator.process_index
            self._world_size = self.accelerator.num_processes
            self._device = self.accelerator.device
            return
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        device = str(device)
        if device.startswith("cuda") and not torch.cuda.is_available():
            log.warning("sink_dlm: device %s requested but CUDA is not available; using cpu", device)
            device = "cpu"
        self._device = torch.device(device)

    # ------------------------------------------------------------------ properties
    @property
    def model(self):
        return self._model

    @property
    def max_length(self) -> int:
        return int(self._max_length)

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def eot_token_id(self) -> int:
        eos = self.tokenizer.eos_token_id
        if eos is None:
            eos = getattr(getattr(self._model, "config", None), "eos_token_id", None)
        if isinstance(eos, (list, tuple)):
            eos = eos[0]
        return eos

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.eot_token_id

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "tokenizer")).replace("/", "__")

    def apply_chat_template(self, chat_history, add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(
            chat_history, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def get_model_info(self) -> dict:
        return {
            "sink_dlm": {
                "mc_num": self.mc_num,
                "strata_size": self.strata_size or self.mc_num,
                "cfg": self.cfg,
                "mask_token_id": self.mask_token_id,
                "logit_shift": self.logit_shift,
                "family": self.family.name,
                "seed": self.seed,
                "max_length": self.max_length,
                **({"runtime": self._model.runtime} if isinstance(getattr(self._model, "runtime", None), dict)
                   else {}),
            }
        }

    # ------------------------------------------------------------------ distributed primitives
    def all_gather(self, tensor):
        if self._world_size <= 1:
            return tensor
        return self.accelerator.gather(tensor)

    def gather_object(self, obj, dst=0):
        if self._world_size <= 1:
            return [obj]
        result = [None] * self._world_size if self._rank == dst else None
        torch.distributed.gather_object(obj=obj, object_gather_list=result, dst=dst)
        return result

    def barrier(self) -> None:
        if self._world_size > 1:
            self.accelerator.wait_for_everyone()

    # ------------------------------------------------------------------ tokenisation
    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        special = self.add_bos_token if add_special_tokens is None else add_special_tokens
        return self.tokenizer.encode(string, add_special_tokens=special)

    def tok_decode(self, tokens) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def _fit(self, context: list[int], continuation: list[int]) -> tuple[list[int], list[int]]:
        """Drop context tokens from the left (then continuation ones) to fit ``max_length``."""
        room = self.max_length
        if len(context) + len(continuation) <= room:
            return context, continuation
        if not self._warned_truncation:
            log.warning("sink_dlm: truncating requests from the left to max_length=%d tokens", room)
            self._warned_truncation = True
        keep_ctx = max(room - len(continuation), self.logit_shift)
        context = context[len(context) - keep_ctx :] if keep_ctx else []
        return context, continuation[len(continuation) - (room - len(context)) :]

    def _check_scorable(self, context: list[int], continuation: list[int]) -> None:
        """Refuse a request whose continuation the family cannot score (rather than mis-score it)."""
        if not continuation:
            return
        ids = torch.tensor([list(context) + list(continuation)], dtype=torch.long)
        scorable = self.family.scorable(ids, self.tokenizer, getattr(self._model, "config", None))
        if scorable is not None and not bool(scorable[0, len(context) :].all()):
            raise ValueError(
                f"family {self.family.name} cannot score every continuation token of a request with "
                f"{len(context)} context and {len(continuation)} continuation tokens (see "
                f"{type(self.family).__name__}.scorable; DiffusionGemma scores only its canvas, so the "
                "continuation must fit canvas_length and be no longer than its context)"
            )

    def _logits(self, ids: torch.Tensor) -> torch.Tensor:
        """The family's forward (unshifted logits ``[B, T, V]``)."""
        return self.family.logits(self._model, ids)

    # ------------------------------------------------------------------ requests
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        pairs = [self._fit(list(ctx), list(cont)) for _, ctx, cont in requests]
        for context, continuation in pairs:
            self._check_scorable(context, continuation)
        values = mc_loglikelihood(
            self._model,
            pairs,
            mask_token_id=self.mask_token_id,
            logits_fn=self._logits,
            corrupt=self.corruption,
            mc_num=self.mc_num,
            batch_size=self.batch_size,
            cfg=self.cfg,
            logit_shift=self.logit_shift,
            seed=self.seed,
            strata_size=self.strata_size,
            progress=not disable_tqdm and self._rank == 0,
        )
        results = []
        for (strings, _, _), (ctx, cont), value in zip(requests, pairs, values, strict=True):
            greedy = self._greedy_matches(ctx, cont) if self.is_check_greedy else False
            results.append((value, greedy))
            if strings is not None:
                self.cache_hook.add_partial("loglikelihood", strings, (value, greedy))
        return results

    def _greedy_matches(self, context: list[int], continuation: list[int]) -> bool:
        """The reference's suffix_greedy_prediction: unmask one most-confident token per step."""
        length = len(continuation)
        if length == 0:
            return True
        prompt = torch.tensor([context], dtype=torch.long, device=self._device)
        out = generate(
            self._model,
            prompt,
            mask_token_id=self.mask_token_id,
            gen_length=length,
            steps=length,
            block_length=length,
            cfg_scale=self.cfg,
            logit_shift=self.logit_shift,
            logits_fn=self._logits,
        )
        return out[0, len(context) :].tolist() == list(continuation)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows, owners = [], []
        for index, (string,) in enumerate(req.args for req in requests):
            for context, continuation in map(
                lm_utils.make_disjoint_window,
                lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length - 1,  # a DLM window holds context AND all targets
                    context_len=1,
                ),
            ):
                windows.append((None, context, continuation))
                owners.append(index)
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        totals = [0.0] * len(requests)
        for owner, (value, _) in zip(owners, scores, strict=True):
            totals[owner] += value
        for req, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        eos_text = self.tok_decode([self.eot_token_id]) if self.eot_token_id is not None else None
        prompt_room = self.max_length - self.gen_length
        if prompt_room < 1:
            raise ValueError(
                f"gen_length ({self.gen_length}) leaves no room for a prompt in max_length {self.max_length}"
            )
        jobs = []
        for index, (context, gen_kwargs) in enumerate(req.args for req in requests):
            gen_kwargs = dict(gen_kwargs or {})
            until = gen_kwargs.pop("until", None) or []
            if isinstance(until, str):
                until = [until]
            # the model arg decides unless the task asks for sampling (do_sample: true)
            temperature = self.temperature
            if as_bool(gen_kwargs.get("do_sample", False)):
                temperature = float(gen_kwargs.get("temperature", self.temperature or 1.0))
            ids = self.tok_encode(context)[-prompt_room:]
            if self.logit_shift and not ids:
                ids = [self.prefix_token_id]
            jobs.append((index, ids, list(until), temperature))
        outputs: list[str | None] = [None] * len(requests)
        groups: dict[tuple[int, float], list] = defaultdict(list)
        for job in jobs:
            groups[(len(job[1]), job[3])].append(job)
        size = self.batch_size
        batches = [rows[i : i + size] for _, rows in sorted(groups.items()) for i in range(0, len(rows), size)]
        for batch in tqdm(batches, desc="sink_dlm generate_until", disable=disable_tqdm or self._rank != 0):
            prompt = torch.tensor([job[1] for job in batch], dtype=torch.long, device=self._device)
            sequences = self.family.native_generate(self._model, prompt, self.gen_length)
            if sequences is None:
                sequences = self._remasking_generate(prompt, batch[0][3])
            for (index, ids, until, _), row in zip(batch, sequences.tolist(), strict=True):
                text = self._cut(row[len(ids) :], until, eos_text)
                outputs[index] = text
                self.cache_hook.add_partial("generate_until", requests[index].args, text)
        return outputs  # type: ignore[return-value]

    def _remasking_generate(self, prompt: torch.Tensor, temperature: float) -> torch.Tensor:
        """LLaDA's low-confidence remasking sampler, seeded by the batch's prompts."""
        generator = window_generator(self.seed, request_key(*prompt.tolist()), _GENERATE_SALT)
        return generate(
            self._model,
            prompt,
            mask_token_id=self.mask_token_id,
            gen_length=self.gen_length,
            steps=self.steps,
            block_length=self.block_length,
            temperature=temperature,
            cfg_scale=self.cfg,
            remasking=self.remasking,
            logit_shift=self.logit_shift,
            eos_token_id=self.eot_token_id,
            generator=generator,
            logits_fn=self._logits,
        )

    def _cut(self, tokens: list[int], until: list[str], eos_text: str | None) -> str:
        """Decode up to the first EOS token, then cut at the first occurrence of any stop string."""
        if self.eot_token_id is not None and self.eot_token_id in tokens:
            tokens = tokens[: tokens.index(self.eot_token_id)]
        text = self.tok_decode(tokens)
        for stop in until + ([eos_text] if eos_text else []):
            if stop:
                text = text.split(stop)[0]
        return text
