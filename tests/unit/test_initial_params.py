"""Initial parameters drawn slice by slice (model/init.py, model/partition.initial_slice): every
shard draws only its own elements, and a seed gives the same model whatever S and P are."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distbelief_mpi.layout import partition_shard_ranges, shard_ranges
from distbelief_mpi.model.network import build_network
from distbelief_mpi.model.partition import initial_slice, split_model
from distbelief_mpi.model.spec import LayerSpec

IMAGE_NET = (
    LayerSpec(type="local", filters=3, patch=3, stride=1, activation="relu"),
    LayerSpec(type="l2pool", size=2, stride=2),
    LayerSpec(type="lcn", size=3),
    LayerSpec(type="dense", units=12, activation="tanh"),
)


def image_network():
    return build_network(IMAGE_NET, (1, 12, 10), 5)


def shard_slices(network, shards: int, parts: int, seed: int) -> list[np.ndarray]:
    """What each of `shards` shards draws for `parts` partitions per replica."""
    if parts == 1:
        ranges = shard_ranges(network.n_params, shards)
    else:
        ranges, _ = partition_shard_ranges(split_model(network, parts)[1].offsets, shards)
    return [initial_slice(network, parts, seed, start, stop) for start, stop in ranges]


@pytest.mark.parametrize("shards, parts", [(1, 1), (2, 2), (3, 2), (4, 4), (3, 1)])
def test_the_initial_model_is_the_same_whatever_shards_and_partitions(shards, parts):
    network = image_network()
    whole = network.init_params(7)
    held = np.concatenate(shard_slices(network, shards, parts, seed=7))
    order = split_model(network, parts)[1] if parts > 1 else None
    assert np.array_equal(whole, held if order is None else order.to_canonical(held))


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10**6), st.data())
def test_any_range_draws_the_elements_of_the_whole_vector(seed, data):
    network = image_network()
    start = data.draw(st.integers(0, network.n_params))
    stop = data.draw(st.integers(start, network.n_params))
    part = np.empty(stop - start, np.float32)
    network.init_range(seed, start, stop, part)
    assert np.array_equal(part, network.init_params(seed)[start:stop])


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([2, 3, 4]), st.data())
def test_segments_of_a_partitioned_range_match_the_order(parts, data):
    network = image_network()
    order = split_model(network, parts)[1]
    canonical = np.arange(network.n_params, dtype=np.int64)
    partitioned = order.from_canonical(canonical)
    lo = data.draw(st.integers(0, network.n_params))
    hi = data.draw(st.integers(lo, network.n_params))
    got = np.full(hi - lo, -1, np.int64)
    for position, start, length in order.segments(lo, hi):
        got[position - lo : position - lo + length] = np.arange(start, start + length)
    assert np.array_equal(got, partitioned[lo:hi])


def test_seeds_and_layers_draw_different_streams():
    network = image_network()
    a, b = network.init_params(1), network.init_params(2)
    assert not np.array_equal(a, b)
    dense = network.layers[3]
    w = network.init_params(1)[network.param_slices[3]][: dense.n_in * dense.units]
    limit = np.sqrt(6.0 / (dense.n_in + dense.units))  # Glorot-uniform for tanh
    assert np.abs(w).max() <= limit and np.abs(w).max() > 0.8 * limit
