"""Cost of sink-aware pruning: an analytic model at real scale, and measurements at small scale.

The entry point of the cost benchmark; one idea per module beside it:

* ``cost_model.py``    the analytic model: forward passes, matmul FLOPs and peak memory of the
                       paper's procedure, ours and llm-compressor's Wanda for a model shape (presets
                       LLaDA-8B, Dream-7B, tiny-dlm, or any ``config.json``); pure arithmetic.
* ``cost_measure.py``  CPU measurements over model size and sequence length: ``oneshot`` ours vs
                       llm-compressor's Wanda in fresh forked processes, and the sink pass alone vs
                       the paper's naive ``T x T`` collector.
* ``cost_report.py``   rendering: ``benchmarks/results/cost.{md,json}`` and ``cost_growth.png``.

Writes ``benchmarks/results/cost.json``, ``cost.md`` and ``cost_growth.png``.

    python benchmarks/cost.py --analytic-only                    # analytic tables (seconds)
    python benchmarks/cost.py --quick                            # smoke run (~2 min), to $TMPDIR
    python benchmarks/cost.py                                    # full measured run (~10-15 min, 2 cores)
    python benchmarks/cost.py --from-json benchmarks/results/cost.json   # re-render, measure nothing
    python benchmarks/cost.py --analytic-only --config ../shared/models/tiny-dlm/config.json --seq-len 256
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

# the sibling modules, also when this file is loaded by path rather than run from benchmarks/
from cost_measure import loadavg, measure, prepare_parent  # noqa: E402
from cost_model import PRESETS, analytic_report, resolve_shape  # noqa: E402
from cost_report import analytic_table, findings, write_outputs  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--analytic-only", action="store_true", help="print the analytic tables; measure nothing")
    p.add_argument("--quick", action="store_true", help="tiny smoke run of the measured part (writes to $TMPDIR)")
    p.add_argument("--models", nargs="+", default=["llada-8b", "dream-7b", "tiny-dlm"],
                   help="analytic presets (llada-8b, dream-7b, tiny-dlm) or config.json paths")
    p.add_argument("--config", action="append", default=[], help="extra config.json for the analytic part")
    p.add_argument("--seq-len", type=int, default=None, help="analytic T (default: 4096; 256 for tiny-dlm)")
    p.add_argument("--samples", type=int, default=None,
                   help="analytic N windows (default 128, the paper's; 16 for tiny-dlm, as benchmarks/quality.py)")
    p.add_argument("--timesteps", type=int, default=10, help="analytic K timesteps (default 10)")
    p.add_argument("--analytic-batch", type=int, default=1, help="rows per forward in the analytic model")
    p.add_argument("--hiddens", type=int, nargs="+", default=[128, 256, 512], help="model-size sweep (measured)")
    p.add_argument("--size-seq", type=int, default=512, help="T of the model-size sweep")
    p.add_argument("--seq-lens", type=int, nargs="+", default=[256, 512, 1024, 2048], help="T sweep (measured)")
    p.add_argument("--seq-hidden", type=int, default=256, help="hidden size of the T sweep")
    p.add_argument("--mass-seq-lens", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    p.add_argument("--mass-hidden", type=int, default=256)
    p.add_argument("--tokens", type=int, default=1024, help="window tokens per config: windows = max(1, tokens // T)")
    p.add_argument("--batch-size", type=int, default=10, help="calibration rows per oneshot batch")
    p.add_argument("--repeats", type=int, default=2, help="alternating oneshot runs per pruner and config")
    p.add_argument("--mass-repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out-dir", type=Path, default=None)
    p.add_argument("--from-json", type=Path, default=None,
                   help="re-render cost.md and cost_growth.png from an existing cost.json (no measuring)")
    args = p.parse_args(argv)
    if args.quick:
        args.hiddens, args.size_seq, args.seq_lens, args.seq_hidden = [64, 128], 128, [128, 256], 128
        args.mass_seq_lens, args.mass_hidden, args.tokens, args.repeats, args.batch_size = [128, 256], 128, 256, 1, 10
    if args.out_dir is None:
        args.out_dir = Path(tempfile.gettempdir()) / "sink_cost_quick" if args.quick else RESULTS
    return args


def analytic_all(args) -> dict:
    out = {}
    for spec in [*args.models, *args.config]:
        shape = resolve_shape(spec)
        T = args.seq_len or (256 if shape.name == "tiny-dlm" else 4096)
        N = args.samples or (16 if shape.name == "tiny-dlm" else 128)
        key = spec if spec.lower() in (*PRESETS, "tiny-dlm") else shape.name
        out[key.lower()] = analytic_report(shape, T, N, args.timesteps, batch=args.analytic_batch)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.from_json:
        report = json.loads(args.from_json.read_text())
        report["findings"] = findings(report)
        write_outputs(report, args.from_json.parent)
        return 0
    started = time.perf_counter()
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "loadavg_start": loadavg()},
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "versions": {"python": platform.python_version()},
    }
    report["analytic"] = analytic_all(args)
    for rep in report["analytic"].values():
        print(analytic_table(rep))
        print()
    if args.analytic_only:
        print(findings(report))
        return 0
    report["versions"] = prepare_parent()
    report["measured"] = measure(args)
    report["machine"]["loadavg_end"] = loadavg()
    report["runtime_s"] = time.perf_counter() - started
    report["findings"] = findings(report)
    write_outputs(report, args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
