"""The matched-compute study protocol shared by the calibration and quantization studies.

``benchmarks/README.md`` ("Matched compute") states it; this module is its one implementation:
the corpus split into calibration documents and a held-back ``dev`` tail, the evaluation windows
of the three domains (fixed seed: every model answers the same questions), the timestep grids,
the calibration rows of an arm (same number of forward rows whatever the arm), the NELBO
evaluation, and the verdict of a paired comparison (:func:`sink_modifier.scoring.paired.paired_difference`).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
from bench_paths import DATA  # noqa: E402
from bench_paths import TINY_DLM as MODEL_DIR

SEQ_LEN = 256
DEV_FRACTION = 0.1  # tail of the corpus documents held back for choosing settings
EVAL_SEED = 0  # evaluation windows and masks: fixed for every model
DOMAINS = ("dev", "heldout", "handbook")
REPORTED = ("heldout", "handbook")
LLADA_GRID = tuple(round(0.1 * j, 1) for j in range(1, 11))
SIGNIFICANT_Z = 2.0
# A significant effect this small on both domains is reported as negligible: at 50% sparsity the
# pruning gap to dense is ~0.09 nats/token, so 0.002 is about 2% of it.
NEGLIGIBLE_NATS = 0.002


def add_protocol_arguments(parser, store: Path) -> None:
    """The options every study shares: matched rows, seeds, evaluation, threads and the results store."""
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rows", type=int, default=160, help="forward rows per calibrated arm (matched)")
    parser.add_argument("--timesteps", type=int, default=10, help="timesteps of a noised arm (rows / timesteps windows)")
    parser.add_argument("--eval-windows", type=int, default=32)
    parser.add_argument("--mc-samples", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--corpus-chars", type=int, default=2_000_000,
                        help="characters of the corpus read (default: what the stored study ran with)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--max-minutes", type=float, default=None, help="stop starting new runs after this")
    parser.add_argument("--report", action="store_true", help="only rewrite the md/png from the JSON")
    parser.add_argument("--store", type=Path, default=store, help="results JSON (the md/png are written beside it)")
    parser.add_argument("--merge", type=Path, default=None,
                        help="add the runs of another store (same settings; e.g. a second process's) and report")


def load_store(settings: dict, path: Path, **empty_fields) -> dict:
    """The store at ``path`` (a new one, with ``empty_fields``, when there is none); refused when its settings differ."""
    if not path.exists():
        return {"settings": settings, "dense": None, "runs": {}, **empty_fields}
    store = json.loads(path.read_text())
    if store["settings"] != settings:
        raise SystemExit(f"{path} holds runs with other settings ({store['settings']}); run with the same options, "
                         "or move the file away to start a new study")
    return store


def save_store(store: dict, path: Path) -> None:
    from sink_modifier.export.atomic import write_json_atomically

    write_json_atomically(path, store, pretty=True)


def record_run(store: dict, key: str, result: dict, path: Path, **environment) -> None:
    """Add one finished run and save at once, so an interrupted study keeps every run it finished."""
    store["runs"][key] = result
    store["updated"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    store["environment"] = {"torch": torch.__version__, "python": platform.python_version(),
                            "threads": torch.get_num_threads(), "cpus": os.cpu_count(), **environment}
    save_store(store, path)


def open_store(args, store: dict, save, report) -> list[int] | None:
    """The seeds to run, checked against ``store``; ``None`` when ``--merge`` / ``--report`` did the work."""
    seeds = [int(s) for s in args.seeds.split(",")]
    store.setdefault("seeds", seeds)
    if store["seeds"] != seeds:
        raise SystemExit(f"the store was run with seeds {store['seeds']}; pass --seeds {','.join(map(str, store['seeds']))}")
    if args.merge is not None:
        added = merge_stores(store, json.loads(args.merge.read_text()))
        save(store, args.store)
        log(f"merged {added} runs from {args.merge}")
    if args.report or args.merge is not None:
        report(store, args.store)
        return None
    return seeds


def merge_stores(into: dict, other: dict) -> int:
    """Add ``other``'s runs (same settings, seeds and dense evaluation) to ``into``; returns how many were new."""
    if other["settings"] != into["settings"] or other.get("seeds") != into.get("seeds"):
        raise SystemExit("the stores were run with different settings or seeds; they cannot be merged")
    if into["dense"] is not None and other["dense"] is not None and into["dense"] != other["dense"]:
        raise SystemExit("the stores' dense evaluations differ (another model or data?); not merged")
    new = {k: v for k, v in other["runs"].items() if k not in into["runs"]}
    into["runs"].update(new)
    into["dense"] = into["dense"] or other["dense"]
    return len(new)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def log_run(key: str, result: dict, cost: str, started: float) -> None:
    """One line per finished run: its NELBO on every split, what it cost, the minutes since ``started``."""
    nelbo = " ".join(f"{domain} {result['eval'][domain]['nelbo']:.4f}" for domain in DOMAINS)
    log(f"{key}: {nelbo} ({cost}, {(time.monotonic() - started) / 60:.1f} min so far)")


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """Per-window paired difference ``a - b``: mean and standard error."""
    from sink_modifier.scoring.paired import paired_difference

    return paired_difference(a, b)


def verdict(entry: dict) -> str:
    """'better' / 'worse' when both report domains move the same way by at least 2 se, else 'neutral' or
    'mixed'; 'negligible' when an effect is significant but under NEGLIGIBLE_NATS on both domains.
    ``entry[domain]["vs_reference"]`` is a paired (mean, se)."""
    signs, sizes = [], []
    for domain in REPORTED:
        mean, se = entry[domain]["vs_reference"]
        signs.append(0 if abs(mean) < SIGNIFICANT_Z * se else (1 if mean > 0 else -1))
        sizes.append(abs(mean))
    if any(signs) and max(sizes) < NEGLIGIBLE_NATS:
        return f"negligible (significant, but under {NEGLIGIBLE_NATS} nats on both domains)"
    if all(x == -1 for x in signs):
        return "better"
    if all(x == 1 for x in signs):
        return "worse"
    if all(x == 0 for x in signs):
        return "neutral"
    return "mixed (" + ", ".join(f"{d} {'better' if x < 0 else 'worse' if x > 0 else 'neutral'}"
                                  for d, x in zip(REPORTED, signs)) + ")"


def load_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(MODEL_DIR)


def load_model():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32).eval()


def split_corpus(max_chars: int) -> tuple[list[str], list[str]]:
    """The corpus documents for calibration and the held-back tail (``dev``) for choosing settings."""
    from sink_modifier.data import load_documents

    documents = load_documents(DATA / "corpus.txt.gz", max_chars=max_chars)
    cut = int(len(documents) * (1 - DEV_FRACTION))
    return documents[:cut], documents[cut:]


def eval_windows(tokenizer, dev_documents: list[str], count: int) -> dict[str, torch.Tensor]:
    from sink_modifier.data import load_documents, token_windows

    sources = {
        "dev": dev_documents,
        "heldout": load_documents(DATA / "heldout.txt.gz", max_chars=4_000_000),
        "handbook": load_documents(DATA / "handbook.txt.gz", max_chars=4_000_000),
    }
    return {name: token_windows(docs, tokenizer, SEQ_LEN, count, seed=EVAL_SEED) for name, docs in sources.items()}


def timestep_grid(kind: str, count: int, seed: int) -> tuple[float, ...]:
    """``count`` timesteps in (0, 1]: LLaDA's even grid, or quantiles of a uniform / low- / high-t-heavy law.

    ``uniform`` draws its timesteps at random per seed (a fresh grid for every calibration seed);
    ``low`` / ``high`` are the midpoint quantiles of t = u² / t = 1 − (1 − u)², i.e. three times
    denser near t = 0 (mostly clean rows) or near t = 1 (mostly masks).
    """
    if kind == "llada":
        return tuple(round(j / count, 4) for j in range(1, count + 1))
    u = [(j + 0.5) / count for j in range(count)]
    if kind == "uniform":
        g = torch.Generator().manual_seed(10_000 + seed)
        return tuple(sorted(round(max(1e-3, float(x)), 4) for x in torch.rand(count, generator=g)))
    if kind == "low":
        return tuple(round(x * x, 4) for x in u)
    if kind == "high":
        return tuple(round(1 - (1 - x) ** 2, 4) for x in u)
    raise ValueError(kind)


def calibration_set(calibration: str, grid_kind: str, documents, tokenizer, config, rows: int, timesteps: int,
                    seed: int, label: str = ""):
    """An arm's calibration rows: ``rows`` forward rows of SEQ_LEN tokens, whatever the arm.

    ``calibration``: ``clean`` (t = 0), ``mixed`` (t = 0, .25, .5, .75, 1) or ``noised`` (``timesteps``
    of the ``grid_kind`` grid, :func:`timestep_grid`); the windows are drawn with ``seed``.
    """
    from sink_modifier.data import token_windows
    from sink_modifier.process import MaskTokenProcess, build_calibration

    if calibration == "clean":
        grid = (0.0,)
    elif calibration == "mixed":
        grid = (0.0, 0.25, 0.5, 0.75, 1.0)
    else:
        grid = timestep_grid(grid_kind, timesteps, seed)
    if rows % len(grid):
        raise SystemExit(f"--rows {rows} is not a multiple of {len(grid)} timesteps ({label})")
    windows = token_windows(documents, tokenizer, SEQ_LEN, rows // len(grid), seed=seed)
    cal = build_calibration(windows, tokenizer, process=MaskTokenProcess(int(config.mask_token_id)),
                            seq_len=SEQ_LEN, num_samples=windows.shape[0], timesteps=grid, seed=seed, config=config)
    assert len(cal) == rows, (label, len(cal), rows)
    return cal


def evaluate(model, windows: dict[str, torch.Tensor], mask_token_id: int, mc_samples: int) -> dict:
    from sink_modifier.scoring import nelbo

    out = {}
    for name, ids in windows.items():
        bound = nelbo(model, ids, mask_token_id, mc_samples=mc_samples, seed=EVAL_SEED, batch_size=16)
        out[name] = {"nelbo": bound.nelbo, "per_window": [round(float(x), 6) for x in bound.per_window]}
    return out


@dataclass(frozen=True)
class StudyInputs:
    """What every arm of a study shares: the model's tokenizer and config, calibration documents, eval windows."""

    tokenizer: object
    config: object
    calib_docs: list[str]
    windows: dict[str, torch.Tensor]

    @property
    def mask_token_id(self) -> int:
        return int(self.config.mask_token_id)


def study_inputs(args, store: dict) -> StudyInputs:
    """Split the corpus, cut the eval windows, and evaluate the dense model once (saved in ``store``)."""
    tokenizer = load_tokenizer()
    config = load_model().config
    calib_docs, dev_docs = split_corpus(args.corpus_chars)
    inputs = StudyInputs(tokenizer, config, calib_docs, eval_windows(tokenizer, dev_docs, args.eval_windows))
    if store["dense"] is None:
        store["dense"] = evaluate(load_model(), inputs.windows, inputs.mask_token_id, args.mc_samples)
        save_store(store, args.store)
    return inputs
