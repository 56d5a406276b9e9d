"""Offline lm-eval tasks built from a local text file (no hub, no dataset download).

``write_local_tasks(text_path, out_dir)`` reads blank-line-separated documents (the format of
``../shared/data/heldout.txt.gz``), writes one JSONL per task and the YAML task configs that
load them through ``datasets``' packaged ``json`` builder (absolute paths), and returns the
task names. Use the folder with lm-eval's ``--include_path`` / ``TaskManager(include_path=...)``:

* ``sink_heldout_mc`` (multiple_choice, ``acc``/``acc_norm``): a passage's first
  ``context_words`` words; choices are the true next ``continuation_words`` words and the same
  words in a shuffled order (same tokens, same length: only word order tells them apart).
  The gold index is random per document.
* ``sink_heldout_lastword`` (loglikelihood, ``perplexity``/``acc``): a passage minus its last
  word; target = that word (``acc`` is lm-eval's greedy check, ``is_check_greedy=True``).
* ``sink_heldout_rolling`` (loglikelihood_rolling, word/byte perplexity, bits per byte): the
  first ``rolling_words`` words of each document.
* ``sink_heldout_gen`` (generate_until, ``exact_match``): complete the passage; stops at a
  newline or a period.

Command line: ``python -m sink_modifier.lm_eval.tasks --data ../shared/data/heldout.txt.gz
--output outputs/lm_eval_tasks``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
from pathlib import Path

__all__ = ["TASKS", "read_documents", "write_local_tasks"]

MANIFEST = "lm_eval_tasks.json"  # one of export.output_guard.MANIFESTS
TASKS = ("sink_heldout_mc", "sink_heldout_lastword", "sink_heldout_rolling", "sink_heldout_gen")


def read_documents(path: str | Path) -> list[str]:
    """Blank-line-separated documents of a UTF-8 text file (``.gz`` read transparently)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        text = handle.read()
    return [doc.strip() for doc in text.split("\n\n") if doc.strip()]


def _yaml(task: str, data: Path, body: str) -> str:
    return (
        f"task: {task}\n"
        "dataset_path: json\n"
        "dataset_kwargs:\n"
        "  data_files:\n"
        f"    test: {json.dumps(str(data.resolve()))}\n"
        "test_split: test\n" + body + "metadata:\n  version: 1.0\n"
    )


_BODIES = {
    "sink_heldout_mc": (
        "output_type: multiple_choice\n"
        'doc_to_text: "{{context}}"\n'
        "doc_to_choice: choices\n"
        "doc_to_target: label\n"
        "metric_list:\n"
        "  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n"
    ),
    "sink_heldout_lastword": (
        "output_type: loglikelihood\n"
        'doc_to_text: "{{context}}"\n'
        'doc_to_target: "{{target}}"\n'
        "metric_list:\n"
        "  - metric: perplexity\n    aggregation: perplexity\n    higher_is_better: false\n"
        "  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
    ),
    "sink_heldout_rolling": (
        "output_type: loglikelihood_rolling\n"
        'doc_to_text: ""\n'
        'doc_to_target: "{{text}}"\n'
        "metric_list:\n"
        "  - metric: word_perplexity\n"
        "  - metric: byte_perplexity\n"
        "  - metric: bits_per_byte\n"
    ),
    "sink_heldout_gen": (
        "output_type: generate_until\n"
        'doc_to_text: "{{context}}"\n'
        'doc_to_target: "{{target}}"\n'
        "generation_kwargs:\n"
        '  until: ["\\n", "."]\n'
        "  do_sample: false\n"
        "metric_list:\n"
        "  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n"
        "    ignore_case: true\n    ignore_punctuation: true\n"
    ),
}


def write_local_tasks(
    text_path: str | Path,
    out_dir: str | Path,
    *,
    num_docs: int = 200,
    context_words: int = 24,
    continuation_words: int = 12,
    rolling_words: int = 120,
    seed: int = 0,
    overwrite: bool = False,
) -> list[str]:
    """Write the four tasks (JSONL + YAML) into the folder ``out_dir``; return their names.

    Documents with fewer than ``context_words + continuation_words`` words are skipped; the
    first ``num_docs`` usable ones (in file order) are kept, so the same arguments always write
    the same tasks. The folder appears complete or not at all, with ``lm_eval_tasks.json`` (the
    settings) as its manifest; an existing one is replaced only with ``overwrite`` and only if
    this tool wrote it (:mod:`sink_modifier.export.output_guard`).
    """
    from sink_modifier.export.atomic import json_text, write_atomically
    from sink_modifier.export.output_guard import claim_output

    with claim_output(out_dir, protected=(text_path,), overwrite=overwrite) as claim:
        settings = {"data": str(text_path), "num_docs": num_docs, "context_words": context_words,
                    "continuation_words": continuation_words, "rolling_words": rolling_words, "seed": seed,
                    "tasks": list(TASKS)}
        rows = _task_rows(text_path, num_docs=num_docs, context_words=context_words,
                          continuation_words=continuation_words, rolling_words=rolling_words, seed=seed)

        def write(folder: Path) -> None:
            for name in TASKS:
                (folder / f"{name}.jsonl").write_text(
                    "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows[name]), encoding="utf-8")
                # the YAML names the JSONL where it will be once the folder is in place
                (folder / f"{name}.yaml").write_text(_yaml(name, claim.output / f"{name}.jsonl", _BODIES[name]),
                                                     encoding="utf-8")
            (folder / MANIFEST).write_text(json_text(settings, pretty=True), encoding="utf-8")

        write_atomically(claim.output, write)
    return list(TASKS)


def _task_rows(text_path, *, num_docs: int, context_words: int, continuation_words: int, rolling_words: int,
               seed: int) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    rows: dict[str, list[dict]] = {name: [] for name in TASKS}
    for doc in read_documents(text_path):
        words = doc.split()
        if len(words) < context_words + continuation_words:
            continue
        context = " ".join(words[:context_words])
        true = words[context_words : context_words + continuation_words]
        shuffled = list(true)
        for _ in range(10):
            rng.shuffle(shuffled)
            if shuffled != true:
                break
        if shuffled == true:  # all words equal: no distractor possible
            continue
        label = rng.randrange(2)
        choices = [" ".join(true), " ".join(shuffled)] if label == 0 else [" ".join(shuffled), " ".join(true)]
        rows["sink_heldout_mc"].append({"context": context, "choices": choices, "label": label})
        passage = words[: context_words + continuation_words]
        rows["sink_heldout_lastword"].append({"context": " ".join(passage[:-1]), "target": " " + passage[-1]})
        rows["sink_heldout_rolling"].append({"text": " ".join(words[:rolling_words])})
        tail = " ".join(true).split(".")[0]
        rows["sink_heldout_gen"].append({"context": context, "target": tail})
        if len(rows["sink_heldout_mc"]) >= num_docs:
            break
    return rows


def main(argv: list[str] | None = None) -> int:
    from sink_modifier.cli import EXIT_INTERRUPTED, USER_ERRORS

    parser = argparse.ArgumentParser(prog="python -m sink_modifier.lm_eval.tasks", description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="blank-line-separated documents (.txt or .txt.gz)")
    parser.add_argument("--output", required=True, help="folder for the JSONL + YAML files (--include_path)")
    parser.add_argument("--num-docs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing task folder written by this tool")
    args = parser.parse_args(argv)
    try:
        names = write_local_tasks(args.data, args.output, num_docs=args.num_docs, seed=args.seed,
                                  overwrite=args.overwrite)
    except USER_ERRORS as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"wrote {', '.join(names)} to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
