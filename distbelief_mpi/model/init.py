"""PURE: initial parameter values as a function of their index, so any slice is drawn alone.

A shard holds one slice of the parameters (in the partition-major order when replicas are
partitioned, model/partition.py): it must be able to draw exactly its own elements without
drawing, or holding, the whole vector, and a given seed must give the same parameters
whatever the number of shards and partitions (so a checkpoint can be resharded later). A
sequential generator cannot do that cheaply; a counter-based one can: element i of layer l
is a hash of (seed, l, i) (SplitMix64, the stream NumPy's SeedSequence also builds on),
turned into a uniform value in [-limit, limit). Cost: about ten vectorised integer passes
per element, a few ns each; memory: the slice asked for plus a chunk of uint64 work space.
"""

import numpy as np

CHUNK = 1 << 20  # elements hashed at a time: bounds the uint64 work arrays to 8 MB each

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's output function, vectorised over uint64 (wraps mod 2**64 by design)."""
    z = z + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def stream_salt(seed: int, layer_index: int) -> np.uint64:
    """Where layer `layer_index`'s stream starts for `seed`: a hash, so streams of different
    layers and seeds are far apart in the 2**64 counter space."""
    mixed = _splitmix64(np.array([seed], np.uint64))[0] ^ _splitmix64(np.array([layer_index + 1], np.uint64))[0]
    return np.uint64(_splitmix64(np.array([mixed], np.uint64))[0])


def uniform_at(seed: int, layer_index: int, start: int, stop: int, limit: float, out: np.ndarray) -> None:
    """out (stop - start,) <- elements [start, stop) of layer `layer_index`'s uniform(-limit, limit)
    stream for `seed`. Element i depends on (seed, layer_index, i) only."""
    salt = stream_salt(seed, layer_index)
    for lo in range(start, stop, CHUNK):
        hi = min(stop, lo + CHUNK)
        bits = _splitmix64(np.arange(lo, hi, dtype=np.uint64) + salt)
        unit = (bits >> np.uint64(40)).astype(np.float64) * (1.0 / (1 << 24))  # 24 bits: [0, 1)
        out[lo - start : hi - start] = (2.0 * unit - 1.0) * limit
