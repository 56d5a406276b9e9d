"""SinkAwareSparseGPTModifier: Hessian maths vs a direct implementation, and oneshot end to end."""

from __future__ import annotations

import pytest
import torch
from llmcompressor.modifiers.pruning.sparsegpt import SparseGPTModifier
from llmcompressor.modifiers.pruning.sparsegpt.sgpt_sparsify import (
    accumulate_hessian,
    make_empty_hessian,
    sparsify_weight,
)
from llmcompressor.recipe import Recipe
from pydantic import ValidationError

from sink_modifier import SinkAwareSparseGPTModifier
from sink_modifier.modifiers.weighted_inputs import weighted_rows
from tests.conftest import MASK_ID, noised_rows
from tests.test_sink_wanda_modifier import block_linears, prune


def direct_fasterprune(W, H, sparsity, prune_n=0, prune_m=0, blocksize=128, percdamp=0.01):
    """reference-spec §1.4 (SparseGPT fasterprune), written out independently."""
    W, H = W.clone().double(), H.clone().double()
    rows, cols = W.shape
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += percdamp * torch.mean(torch.diag(H)) * torch.eye(cols, dtype=H.dtype)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Q1, Err1 = torch.zeros_like(W1), torch.zeros_like(W1)
        if prune_n == 0:
            tmp = W1**2 / torch.diag(Hinv1).reshape(1, -1) ** 2
            thresh = torch.sort(tmp.flatten())[0][int(tmp.numel() * sparsity)]
            mask1 = tmp <= thresh
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        for i in range(i2 - i1):
            if prune_n and i % prune_m == 0:
                tmp = W1[:, i : i + prune_m] ** 2 / torch.diag(Hinv1)[i : i + prune_m].reshape(1, -1) ** 2
                mask1.scatter_(1, i + torch.topk(tmp, prune_n, dim=1, largest=False)[1], True)
            w, d = W1[:, i], Hinv1[i, i]
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err = (w - q) / d
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return W.float()


@pytest.mark.parametrize("prune_n,prune_m,blocksize", [(0, 0, 128), (0, 0, 8), (2, 4, 16)])
def test_weighted_hessian_pruning_matches_direct_implementation(prune_n, prune_m, blocksize):
    g = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(24, 10, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(10, 24, generator=g))
    xs = [torch.randn(1, 12, 24, generator=g) for _ in range(5)]
    ws = [torch.rand(1, 12, generator=g) for _ in range(5)]

    H, n = make_empty_hessian(layer), 0
    for x, w in zip(xs, ws):
        H, n = accumulate_hessian(weighted_rows(x, w), layer, H, n)
    direct_H = sum((w[0, :, None] * x[0]).T.double() @ (w[0, :, None] * x[0]).double() for x, w in zip(xs, ws))
    direct_H = 2 * direct_H / len(xs)  # H = (2/N) Σ Xᵀ diag(w²) X
    torch.testing.assert_close(H.double(), direct_H, rtol=1e-5, atol=1e-5)

    _, ours = sparsify_weight(layer, {layer: H}, 0.5, prune_n, prune_m, blocksize, 0.01, False)
    expected = direct_fasterprune(layer.weight.data, direct_H.float(), 0.5, prune_n, prune_m, blocksize)
    assert torch.equal(ours == 0, expected == 0)
    torch.testing.assert_close(ours, expected, rtol=1e-3, atol=1e-4)


@pytest.fixture(scope="module")
def calib_ids():
    return noised_rows(6, 24, seed=3)


def test_weighting_off_equals_llmcompressor_sparsegpt(tiny_llama_dir, calib_ids):
    head = ["re:.*lm_head"]
    ours = prune(tiny_llama_dir, [SinkAwareSparseGPTModifier(sparsity=0.5, sink_weighting=False, ignore=head)], calib_ids)
    upstream = prune(tiny_llama_dir, [SparseGPTModifier(sparsity=0.5, targets=["Linear"], ignore=head)], calib_ids)
    for (name, a), (_, b) in zip(ours.named_parameters(), upstream.named_parameters()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("mask_structure", ["0:0", "2:4"])
def test_yaml_sparsegpt_prunes_every_layer(tiny_llama_dir, calib_ids, tmp_path, mask_structure):
    recipe = tmp_path / "sgpt.yaml"
    recipe.write_text(
        "sparsity_stage:\n  sparsity_modifiers:\n    SinkAwareSparseGPTModifier:\n"
        f"      sparsity: 0.5\n      mask_structure: '{mask_structure}'\n      block_size: 16\n"
        "      ignore: ['re:.*lm_head']\n"
    )
    (modifier,) = Recipe.create_instance(str(recipe)).modifiers
    assert isinstance(modifier, SinkAwareSparseGPTModifier) and modifier.block_size == 16
    model = prune(tiny_llama_dir, str(recipe), calib_ids)
    for name, module in block_linears(model).items():
        zeros = module.weight == 0
        if mask_structure == "2:4":
            assert torch.all(zeros.reshape(module.out_features, -1, 4).sum(-1) == 2), name
        else:  # SparseGPT semantics: per 16-column block, all scores <= the k-th smallest
            for block in zeros.split(16, dim=1):
                assert int(block.sum()) == int(block.numel() * 0.5) + 1, name
    assert (model.lm_head.weight == 0).sum() == 0


def test_sink_weighting_and_reference_mode_change_the_result(tiny_llama_dir, calib_ids):
    def weights(ids, **kwargs):
        model = prune(tiny_llama_dir, [SinkAwareSparseGPTModifier(sparsity=0.5, **kwargs)], ids)
        return {n: m.weight.clone() for n, m in block_linears(model).items()}

    off, on = weights(calib_ids, sink_weighting=False), weights(calib_ids)
    assert any(not torch.equal(off[n], on[n]) for n in off)

    clean = calib_ids.clone()
    clean[clean == MASK_ID] = 5
    plain = weights(clean, sink_weighting=False)
    reference = weights(clean, sink_mask_mode="reference")
    assert any(not torch.equal(plain[n], reference[n]) for n in plain)
    assert all(abs(float((w == 0).float().mean()) - 0.5) < 0.05 for w in reference.values())


def test_reference_mode_noise_does_not_depend_on_batch_size(tiny_llama_dir, calib_ids):
    clean = calib_ids.clone()
    clean[clean == MASK_ID] = 5
    runs = [
        {n: m.weight.clone() for n, m in block_linears(
            prune(tiny_llama_dir, [SinkAwareSparseGPTModifier(sparsity=0.5, sink_mask_mode="reference",
                                                              reference_timesteps=[0.3, 0.9])],
                  clean, batch_size=bs, pipeline="basic")).items()}
        for bs in (1, 3)
    ]
    for name in runs[0]:
        torch.testing.assert_close(runs[0][name], runs[1][name], rtol=1e-4, atol=1e-5)


def test_bad_sparsegpt_settings_name_the_field():
    with pytest.raises(ValidationError, match="sink_mask_mode"):
        SinkAwareSparseGPTModifier(sparsity=0.5, sink_mask_mode="average")
    with pytest.raises(ValidationError, match="reference_timesteps"):
        SinkAwareSparseGPTModifier(sparsity=0.5, reference_timesteps=[0.0, 0.5])
    with pytest.raises(ValidationError, match="mask_structure '4:4' is invalid"):
        SinkAwareSparseGPTModifier(mask_structure="4:4")
