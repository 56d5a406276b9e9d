"""Golden outputs of the shipped pipeline, to prove a refactor keeps behaviour bit for bit.

``python benchmarks/golden_outputs.py record OUT.json`` runs, on the shipped tiny-dlm with fixed
seeds, through the public entry points only (the ``sink-modifier`` CLI and lm-eval's ``sink_dlm``
model type), so the same script measures the code before and after a restructuring:

* ``prune`` with every recipe in ``recipes/`` (and SparseGPT's ``sink_mask_mode: reference`` and
  ``sink_policy: unstable`` variants): SHA-256 of every tensor of the written checkpoint;
* ``eval --json`` of the dense and one pruned model;
* ``analyze`` JSON (figures excluded: PNG bytes depend on matplotlib);
* greedy ``generate --json`` tokens;
* the lm-eval adapter's log-likelihoods of a few requests.

``python benchmarks/golden_outputs.py compare BEFORE.json AFTER.json`` lists every difference
and exits 1 if there is one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SINK_MODIFIER_SHARED", ROOT.parent / "shared"))
MODEL = SHARED / "models" / "tiny-dlm"
CORPUS = SHARED / "data" / "corpus.txt.gz"
HELDOUT = SHARED / "data" / "heldout.txt.gz"
PRUNE_ARGS = ["--num-samples", "4", "--seq-len", "128", "--seed", "0"]
EVAL_ARGS = ["--num-windows", "6", "--seq-len", "128", "--seed", "0", "--mc-samples", "4"]

# Recipe variants the shipped recipes do not cover but whose code paths the refactor moves.
VARIANTS = {
    "sparsegpt_reference": (
        "sink_sparsegpt_50.yaml",
        {"sink_weighting: false": "sink_weighting: true\n      sink_mask_mode: reference\n      reference_timesteps: [0.5, 1.0]"},
        ["--timesteps", "0"],  # reference mode calibrates on clean rows and noises them itself
    ),
    "wanda_unstable": ("paper_sink_wanda_50.yaml", {"sink_weighting: true": "sink_weighting: true\n      sink_policy: unstable"}, []),
}


def _cli(*args: str) -> str:
    env = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    done = subprocess.run([sys.executable, "-m", "sink_modifier", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"sink-modifier {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def _json_of(stdout: str) -> dict:
    """The last JSON object line of a command's stdout (older code printed logs there too)."""
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError(f"no JSON in output: {stdout[-500:]!r}")


def _tensor_digests(folder: Path) -> dict[str, str]:
    from safetensors import safe_open

    digests = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            for name in sorted(handle.keys()):
                tensor = handle.get_tensor(name).contiguous()
                payload = tensor.view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes()
                digests[name] = f"{tensor.dtype}:{tuple(tensor.shape)}:{hashlib.sha256(payload).hexdigest()}"
    return digests


def _lm_eval_loglikelihoods() -> list[list]:
    from lm_eval.api.instance import Instance
    from lm_eval.api.registry import get_model

    import sink_modifier.lm_eval  # noqa: F401  (registers sink_dlm)

    lm = get_model("sink_dlm")(pretrained=str(MODEL), mc_num=8, batch_size=4, dtype="float32", device="cpu", seed=5)
    pairs = [("The river ran through the", " old town"), ("In the morning we", " walked to the station"),
             ("She opened the", " door")]
    requests = [Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i) for i, pair in enumerate(pairs)]
    return [[float(ll), bool(greedy)] for ll, greedy in lm.loglikelihood(requests)]


def record(out: Path, only: set[str] | None = None) -> None:
    result: dict = {"prune": {}, "prune_record": {}}
    with tempfile.TemporaryDirectory() as tmp:
        recipes = {p.stem: p for p in sorted((ROOT / "recipes").glob("*.yaml"))}
        extra: dict[str, list[str]] = {}
        for name, (base, edits, args) in VARIANTS.items():
            text = (ROOT / "recipes" / base).read_text()
            for old, new in edits.items():
                assert old in text, (base, old)
                text = text.replace(old, new)
            recipes[name] = Path(tmp) / f"{name}.yaml"
            recipes[name].write_text(text)
            extra[name] = args
        for name, recipe in recipes.items():
            if only and name not in only:
                continue
            target = Path(tmp) / f"pruned-{name}"
            _cli("prune", "--model", str(MODEL), "--recipe", str(recipe), "--data", str(CORPUS),
                 "--output", str(target), *PRUNE_ARGS, *extra.get(name, []))
            result["prune"][name] = _tensor_digests(target)
            record_json = json.loads((target / "sink_modifier.json").read_text())
            result["prune_record"][name] = {"sparsity": record_json.get("sparsity"),
                                             "calibration": record_json.get("calibration")}
            print(f"pruned {name}", file=sys.stderr)
        if only is None or "eval" in only:
            result["eval_dense"] = _json_of(_cli("eval", "--model", str(MODEL), "--data", str(HELDOUT), *EVAL_ARGS, "--json"))
            pruned = Path(tmp) / "pruned-sink_wanda_50"
            if pruned.exists():
                result["eval_pruned"] = _json_of(_cli("eval", "--model", str(pruned), "--data", str(HELDOUT), *EVAL_ARGS, "--json"))
            analysis = Path(tmp) / "analysis"
            _cli("analyze", "--model", str(MODEL), "--data", str(HELDOUT), "--output", str(analysis),
                 "--num-windows", "3", "--seq-len", "128", "--no-progress")
            result["analyze"] = json.loads((analysis / "analysis.json").read_text())
            result["generate"] = _json_of(_cli("generate", "--model", str(MODEL), "--prompt", "The river ran through the",
                                               "--gen-length", "16", "--steps", "16", "--block-length", "8", "--json"))
            result["lm_eval"] = _lm_eval_loglikelihoods()
    out.write_text(json.dumps(result, indent=1, sort_keys=True))
    print(f"wrote {out}", file=sys.stderr)


_VOLATILE = {"versions", "elapsed_s", "wall_s", "seconds", "tokens_per_second", "created", "timestamp", "output", "model", "path",
             "python", "platform", "torch", "transformers", "llmcompressor"}


_CHECKOUT = re.compile(r"\S*/(?=recipes/)")  # where each checkout lies is not behaviour (recipe origins)


def _diff(a, b, path: str, out: list[str]) -> None:
    if isinstance(a, str) and isinstance(b, str) and _CHECKOUT.sub("", a) == _CHECKOUT.sub("", b):
        return
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key in _VOLATILE:
                continue
            if key not in a or key not in b:
                out.append(f"{path}.{key}: only in {'after' if key in b else 'before'}")
            else:
                _diff(a[key], b[key], f"{path}.{key}", out)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            _diff(x, y, f"{path}[{i}]", out)
    elif a != b:
        out.append(f"{path}: {str(a)[:120]} -> {str(b)[:120]}")


def compare(before: Path, after: Path) -> int:
    differences: list[str] = []
    _diff(json.loads(before.read_text()), json.loads(after.read_text()), "", differences)
    for line in differences:
        print(line)
    print(f"{len(differences)} difference(s)", file=sys.stderr)
    return 1 if differences else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("out", type=Path)
    rec.add_argument("--only", default=None, help="comma-separated recipe names and/or 'eval'")
    cmp = sub.add_parser("compare")
    cmp.add_argument("before", type=Path)
    cmp.add_argument("after", type=Path)
    args = parser.parse_args()
    if args.command == "record":
        record(args.out, set(args.only.split(",")) if args.only else None)
        return 0
    return compare(args.before, args.after)


if __name__ == "__main__":
    sys.exit(main())
