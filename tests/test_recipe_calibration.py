"""A recipe's ``calibration:`` block: the rows its settings were chosen with, and the evidence it cites.

- ``prune --recipe R`` with no calibration option runs R's block; ``--num-samples`` /
  ``--timesteps`` override it one field at a time; ``sink_modifier.json`` says where each came from.
- llm-compressor's own recipe reader skips the block (the file still runs in ``oneshot``).
- A malformed block is refused with ``FILE:LINE:COL`` before any weights load.
- Every shipped recipe that cites ``benchmarks/results/calibration_study.md`` cites a row that is
  in that table, with the numbers the table has.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from sink_modifier.cli import main
from sink_modifier.commands.prune import prune_checkpoint
from sink_modifier.commands.recipe_calibration import RecipeCalibration, recipe_calibration
from sink_modifier.commands.recipe_check import check_recipe
from sink_modifier.export import METADATA_FILE
from tests.conftest import REPO

RECIPES = REPO / "recipes"
STUDY = REPO / "benchmarks" / "results" / "calibration_study.md"
PRUNING = """sparsity_stage:
  sparsity_modifiers:
    SinkAwareWandaPruningModifier:
      sparsity: 0.5
      mask_structure: "0:0"
      ignore: ["re:.*lm_head"]
      sink_weighting: false
"""


def write_recipe(tmp_path: Path, block: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(block + PRUNING)
    return path


# -- precedence -------------------------------------------------------------------------------------
def test_options_override_the_block_one_field_at_a_time():
    block = RecipeCalibration(timesteps=(0.0, 0.5), num_samples=7, where="r.yaml:1:1")
    chosen = block.choose()
    assert (chosen.num_samples, chosen.timesteps) == (7, (0.0, 0.5))
    assert chosen.origin == {"num_samples": "recipe r.yaml:1:1", "timesteps": "recipe r.yaml:1:1"}
    chosen = block.choose(num_samples=3)
    assert (chosen.num_samples, chosen.timesteps) == (3, (0.0, 0.5))
    assert chosen.origin["num_samples"] == "--num-samples"
    chosen = block.choose(timesteps=(1.0,))
    assert (chosen.num_samples, chosen.timesteps, chosen.origin["timesteps"]) == (7, (1.0,), "--timesteps")
    # a causal model calibrates on clean rows: the block's diffusion timesteps do not apply
    assert block.choose(diffusion=False).timesteps is None
    assert RecipeCalibration().choose() == RecipeCalibration().choose(diffusion=False)
    assert RecipeCalibration().choose().num_samples == 32


def test_prune_runs_the_recipes_rows_unless_told_otherwise(tiny_llama_dir, text_file, tmp_path):
    recipe = write_recipe(tmp_path, "calibration:\n  timesteps: [0.25, 0.75, 1.0]\n  num_samples: 2\n")
    out = tmp_path / "from-recipe"
    prune_checkpoint(tiny_llama_dir, recipe, text_file, out, seq_len=16)
    calibration = json.loads((out / METADATA_FILE).read_text())["calibration"]
    assert calibration["timesteps"] == [0.25, 0.75, 1.0] and calibration["rows"] == 6
    assert calibration["origin"] == {"num_samples": f"recipe {recipe}:1:1", "timesteps": f"recipe {recipe}:1:1"}

    out = tmp_path / "overridden"
    assert main(["prune", "--model", str(tiny_llama_dir), "--recipe", str(recipe), "--data", str(text_file),
                 "--output", str(out), "--seq-len", "16", "--timesteps", "0.5"]) == 0
    calibration = json.loads((out / METADATA_FILE).read_text())["calibration"]
    assert calibration["timesteps"] == [0.5] and calibration["rows"] == 2  # num_samples still the recipe's
    assert calibration["origin"]["timesteps"] == "--timesteps"


def test_llm_compressor_reads_the_same_file_and_skips_the_block():
    from llmcompressor.recipe import Recipe

    import sink_modifier  # noqa: F401  (registers our modifiers)

    path = RECIPES / "sink_wanda_50.yaml"
    recipe = Recipe.create_instance(str(path))
    assert [type(m).__name__ for m in recipe.modifiers] == ["SinkAwareWandaPruningModifier"]
    assert recipe_calibration(path) == check_recipe(path).calibration
    assert recipe_calibration(path).num_samples == 32


# -- refused before loading ------------------------------------------------------------------------
@pytest.mark.parametrize("block, where, says", [
    ("calibration:\n  timesteps: [0.5, 2]\n", "recipe.yaml:2:3", "calibration.timesteps must be"),
    ("calibration:\n  timesteps: []\n", "recipe.yaml:2:3", "calibration.timesteps must be"),
    ("calibration:\n  num_samples: 0\n", "recipe.yaml:2:3", "calibration.num_samples must be"),
    ("calibration:\n  num_samples: 2\n  seq_len: 64\n", "recipe.yaml:3:3", "unknown calibration: setting 'seq_len'"),
    ("calibration: [0.5]\n", "recipe.yaml:1:1", "not a mapping"),
])
def test_a_bad_block_is_refused_with_its_line_before_loading(tmp_path, text_file, tiny_llama_dir, capsys,
                                                             block, where, says):
    recipe = write_recipe(tmp_path, block)
    out = tmp_path / "out"
    code = main(["prune", "--model", str(tiny_llama_dir), "--recipe", str(recipe), "--data", str(text_file),
                 "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and where in err and says in err, err
    assert not out.exists()


# -- the shipped recipes and the evidence they cite --------------------------------------------------
# '"Sparsity 0.5"' names a section of the table; each later 'row "LABEL"' is a row of that section
CITATION = re.compile(r'"(Sparsity [^"]+)"|row "([^"]+)"')
NUMBER = re.compile(r"[+-]\d\.\d{4} ± \d\.\d{4}")


def study_rows() -> dict[tuple[str, str], str]:
    rows, section = {}, None
    for line in STUDY.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        elif line.startswith("| ") and section:
            label = line.split("|")[1].strip().removesuffix(" ✓").strip()
            rows[(section, label)] = line
    return rows


def header(path: Path) -> str:
    """The recipe's leading comment block, joined into one line."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# "))
    return " ".join(lines)


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_cited_study_row_exists_with_the_numbers_quoted(path):
    text = header(path)
    rows = study_rows()
    section = None
    for named_section, label in CITATION.findall(text):
        if named_section:
            section = named_section
            continue
        assert section is not None, f"{path.name} cites row {label!r} before naming its section"
        assert (section, label) in rows, f"{path.name} cites {section!r} / {label!r}, not a row of {STUDY.name}"
        row = rows[(section, label)]
        # the numbers quoted right after the citation are in that table row
        after = text.split(f'row "{label}"', 1)[1].split('row "', 1)[0][:160]
        quoted = NUMBER.findall(after)[:2]
        for number in quoted:
            assert number in row, f"{path.name} quotes {number} for {label!r}; the table row says {row}"


def test_the_product_recipes_cite_their_evidence_and_carry_their_rows():
    for name in ("sink_wanda_50", "sink_sparsegpt_50", "sink_sparsegpt_2of4", "sink_wanda_2of4", "wanda_70_owl",
                 "sink_sparsegpt_70",
                 "sink_wanda_50_w8a8", "sink_wanda_2of4_fp8_dynamic", "sink_wanda_2of4_w4a16"):
        path = RECIPES / f"{name}.yaml"
        assert "calibration_study.md" in header(path), name
        block = recipe_calibration(path)
        assert block.timesteps is not None and block.num_samples is not None, name
        # matched compute: every product recipe calibrates on the same 320 forward rows
        assert block.num_samples * len(block.timesteps) == 320, name


# -- quantization recipes and benchmarks/results/quantization_study.md --------------------------------
QUANT_STUDY = REPO / "benchmarks" / "results" / "quantization_study.md"
# '"Quantization alone"' names a section; each later 'scheme "S", arm "A"' is a row of that section
QUANT_CITATION = re.compile(r'"(Quantization alone|After [^"]+)"|scheme "([^"]+)", arm "([^"]+)"')
QUANT_RECIPES = ("w4a16", "nvfp4", "fp8_dynamic", "w8a8")


def quantization_rows() -> dict[tuple[str, str, str], str]:
    rows, section = {}, None
    for line in QUANT_STUDY.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        elif line.startswith("| ") and section and not line.startswith("| scheme"):
            cells = [c.strip() for c in line.split("|")[1:3]]
            rows[(section, cells[0], cells[1].removesuffix(" ✓").strip())] = line
    return rows


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_cited_quantization_row_exists_with_the_numbers_quoted(path):
    text = header(path)
    rows, section = quantization_rows(), None
    for named_section, scheme, arm in QUANT_CITATION.findall(text):
        if named_section:
            section = named_section
            continue
        assert section is not None, f"{path.name} cites scheme {scheme!r} before naming its section"
        key = (section, scheme, arm)
        assert key in rows, f"{path.name} cites {key}, not a row of {QUANT_STUDY.name}"
        after = text.split(f'arm "{arm}"', 1)[1].split('scheme "', 1)[0][:200]
        for number in NUMBER.findall(after)[:2]:
            assert number in rows[key], f"{path.name} quotes {number} for {key}; the table row says {rows[key]}"


def test_the_quantization_recipes_cite_their_rows_and_carry_the_studys_calibration():
    rows = quantization_rows()
    for name in QUANT_RECIPES:
        path = RECIPES / f"{name}.yaml"
        text = header(path)
        assert "quantization_study.md" in text and QUANT_CITATION.search(text), name
        block = recipe_calibration(path)
        chosen = [arm for _, _, arm in QUANT_CITATION.findall(text) if arm][0]
        if chosen == "no calibration data":
            assert block.timesteps is None, name  # a data-free scheme carries no rows
        else:  # the study's matched compute: 160 forward rows
            assert block.num_samples * len(block.timesteps) == 160, name
        assert any(key[2] == chosen for key in rows), name
