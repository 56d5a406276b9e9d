"""Sink-aware pruning of a model offloaded with compressed-tensors, through oneshot's sequential pipeline.

The decoder layers are dispatched to disk (compressed-tensors ``DiskCache``: the module holds
meta tensors, the values live in safetensors files and are read back on access); the
embedding, final norm and LM head stay on the CPU. Masks must equal those of the same model
not offloaded, and the sink pass (a whole-model forward run from inside the pipeline's
``disable_offloading()`` context) must not hold more than one decoder layer's weights
onloaded at a time.
"""

from __future__ import annotations

import re
import weakref

import pytest
import torch
from compressed_tensors.offload import disable_onloading, dispatch_with_map, load_offloaded_model
from compressed_tensors.offload.cache.base import OffloadCache
from compressed_tensors.offload.cache.disk import DiskCache
from llmcompressor import oneshot
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from sink_modifier import SinkAwareSparseGPTModifier, SinkAwareWandaPruningModifier
from sink_modifier.sinks import chunked_eager
from tests.conftest import noised_rows, rows_loader, tiny_llama_config, word_tokenizer

LAYERS = 3
_LAYER = re.compile(r"model\.layers\.(\d+)\.")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("offload_llama")
    LlamaForCausalLM(tiny_llama_config(num_hidden_layers=LAYERS)).save_pretrained(path)
    word_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def ids():
    return noised_rows(4, 24, seed=1)


def plain_model(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


def disk_dispatched_model(model_dir, offload_dir):
    """Decoder layers offloaded to disk with ``dispatch_with_map``; the rest on the CPU."""
    model = plain_model(model_dir)
    device_map = {
        name: (torch.device("cpu"), "disk") for name, _ in model.named_modules() if name.startswith("model.layers")
    }
    dispatch_with_map(model, device_map, offload_dir=str(offload_dir), show_progress=False)
    return model


def accelerate_loaded_model(model_dir, offload_dir):
    """The user path: ``load_offloaded_model`` + ``from_pretrained(device_map=..., offload_folder=...)``."""
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu", "lm_head": "cpu"}
    device_map |= {f"model.layers.{i}": ("cpu" if i == 0 else "disk") for i in range(LAYERS)}
    with load_offloaded_model():
        return AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=torch.float32, device_map=device_map, offload_folder=str(offload_dir)
        )


class OnloadTracker:
    """Records which decoder layers have disk-onloaded tensors alive whenever a tensor is onloaded."""

    def __init__(self, model):
        with disable_onloading():  # the offloaded (meta) tensors, as DiskCache.onload receives them
            tensors = list(model.named_parameters()) + list(model.named_buffers())
        self._layer_of = {id(t): int(m[1]) for name, t in tensors if (m := _LAYER.match(name))}
        self._live: list[tuple[int, weakref.ref]] = []
        self.sink_pass_onloads = 0
        self.sink_pass_layers: set[int] = set()
        self.max_layers_alive_in_sink_pass = 0
        self.max_layers_alive_elsewhere = 0

    def __enter__(self):
        original = self._original = DiskCache.onload
        tracker = self

        def onload(cache, offloaded):
            onloaded = original(cache, offloaded)
            layer = tracker._layer_of.get(id(offloaded))
            if layer is not None:
                tracker._record(layer, onloaded)
            return onloaded

        DiskCache.onload = onload
        return self

    def __exit__(self, *exc):
        DiskCache.onload = self._original

    def _record(self, layer: int, onloaded: torch.Tensor) -> None:
        self._live = [(i, ref) for i, ref in self._live if ref() is not None]
        self._live.append((layer, weakref.ref(onloaded)))
        alive = len({i for i, _ in self._live})
        if chunked_eager.active_observer() is not None:  # inside the sink pass
            self.sink_pass_onloads += 1
            self.sink_pass_layers.add(layer)
            self.max_layers_alive_in_sink_pass = max(self.max_layers_alive_in_sink_pass, alive)
        else:
            self.max_layers_alive_elsewhere = max(self.max_layers_alive_elsewhere, alive)


def prune(model, modifier, ids):
    oneshot(
        model=model,
        processor=word_tokenizer(),
        dataset=rows_loader(ids, batch_size=2),
        recipe=[modifier],
        pipeline="sequential",
    )
    return {
        name: (module.weight == 0).clone()
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.startswith("model.layers")
    }


@pytest.fixture(scope="module")
def plain_wanda_masks(model_dir, ids):
    return prune(plain_model(model_dir), SinkAwareWandaPruningModifier(sparsity=0.5), ids)


@pytest.fixture(scope="module")
def disk_wanda_run(model_dir, ids, tmp_path_factory):
    model = disk_dispatched_model(model_dir, tmp_path_factory.mktemp("offload"))
    with OnloadTracker(model) as tracker:
        masks = prune(model, SinkAwareWandaPruningModifier(sparsity=0.5), ids)
    return masks, tracker


def assert_same_masks(got, expected):
    assert got.keys() == expected.keys() and len(got) == 7 * LAYERS
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
        assert 0.5 <= got[name].float().mean() < 0.51, name  # SparseGPT's updates may zero a few more


def test_disk_offloaded_model_gets_the_masks_of_the_plain_model(disk_wanda_run, plain_wanda_masks):
    masks, _ = disk_wanda_run
    assert_same_masks(masks, plain_wanda_masks)


def test_sink_pass_onloads_one_decoder_layer_at_a_time(disk_wanda_run):
    _, tracker = disk_wanda_run
    # the sink pass really read every decoder layer from disk (so the bound below is not vacuous) ...
    assert tracker.sink_pass_layers == set(range(LAYERS))
    # ... yet never held tensors of two decoder layers at once (without the fix, all of them pile up
    # in OffloadCache.keep_onloaded_values under the pipeline's disable_offloading()) ...
    assert tracker.max_layers_alive_in_sink_pass == 1
    # ... because each batch's sink pass reads the weights afresh and drops them after use
    assert tracker.sink_pass_onloads >= 2 * LAYERS * 7  # two batches, seven Linear weights a layer at least
    # and the pipeline's own layer-by-layer calibration is unchanged: one layer per subgraph
    assert tracker.max_layers_alive_elsewhere == 1
    assert not OffloadCache.keep_onloaded_values


def test_model_loaded_with_disk_offload_through_transformers(model_dir, ids, plain_wanda_masks, tmp_path):
    model = accelerate_loaded_model(model_dir, tmp_path)
    assert isinstance(model.model.layers[1].self_attn.q_proj._parameters, DiskCache)
    assert_same_masks(prune(model, SinkAwareWandaPruningModifier(sparsity=0.5), ids), plain_wanda_masks)


def test_sparsegpt_on_disk_offloaded_model(model_dir, ids, tmp_path):
    recipe = lambda: SinkAwareSparseGPTModifier(sparsity=0.5, block_size=16)  # noqa: E731
    expected = prune(plain_model(model_dir), recipe(), ids)
    model = disk_dispatched_model(model_dir, tmp_path)
    with OnloadTracker(model) as tracker:
        got = prune(model, recipe(), ids)
    assert_same_masks(got, expected)
    assert tracker.max_layers_alive_in_sink_pass == 1
