"""`speech-frames`: synthetic data shaped like the paper's speech acoustic model.

Dean et al. 2012 train a network on 11 context frames x 40 log-energies = 440 inputs
with 8,192 output classes (HMM states). The real data is not public, so this makes
float32 frames of that shape from a seeded random class-conditional model: each class
k has a prototype window P[k] (a base 40-bin spectrum held over 11 frames plus per-frame
variation), an example of class k is P[k] + Gaussian noise, and classes are uniform.
Classes are balanced and learnable (with a shared isotropic noise the best classifier is
linear, nearest-prototype), unlike uniformly random labels.

Examples are generated in blocks of GEN_BLOCK rows, each from its own Generator seeded
with (seed, split, block index), so memory stays small for any N and the output does
not depend on how it is written.
"""

import numpy as np

from data_tools import CREATED_BY
from distbelief_mpi.data.writer import DatasetWriter

N_FRAMES, N_BINS = 11, 40
INPUT_DIM = N_FRAMES * N_BINS  # 440
N_CLASSES = 8192
GEN_BLOCK = 8192  # rows per generated block: 8192 x 440 float32 = 14 MB
FRAME_VARIATION = 0.5  # per-frame deviation of a prototype around its base spectrum
# Per-input noise std. Prototypes are ~33 apart, so a pair is confused when noise along
# their difference exceeds ~16.5 = 4.1 sigma: nearest-prototype accuracy is ~93%
# (measured on 3,000 test examples, seed 0).
NOISE_STD = 4.0
SPLIT_STREAM = {"train": 1, "test": 2}
SOURCE = (
    "synthetic: random frames shaped like Dean et al. 2012's speech model input "
    "(11 frames x 40 log-energies = 440 inputs, 8192 classes) drawn as seeded random "
    "class prototypes plus Gaussian noise; not real speech"
)


def make_prototypes(seed: int) -> np.ndarray:
    """(8192, 440) float32 class prototypes, the hidden 'teacher' of the labels."""
    rng = np.random.default_rng([seed, 0])
    base = rng.standard_normal((N_CLASSES, 1, N_BINS), dtype=np.float32)
    frames = rng.standard_normal((N_CLASSES, N_FRAMES, N_BINS), dtype=np.float32)
    return (base + FRAME_VARIATION * frames).reshape(N_CLASSES, INPUT_DIM)


def make_block(seed: int, split: str, block: int, n_rows: int, prototypes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x (n_rows, 440) float32 = prototype of y + noise; y (n_rows,) int32 uniform."""
    rng = np.random.default_rng([seed, SPLIT_STREAM[split], block])
    y = rng.integers(0, N_CLASSES, size=n_rows, dtype=np.int32)
    x = rng.standard_normal((n_rows, INPUT_DIM), dtype=np.float32)
    x *= NOISE_STD
    x += prototypes[y]
    return x, y


def build_speech_frames(out_path, n_train: int, n_test: int, seed: int = 0, log=None) -> None:
    prototypes = make_prototypes(seed)
    with DatasetWriter(
        out_path,
        name="speech-frames",
        source=SOURCE,
        n_classes=N_CLASSES,
        input_shape=(INPUT_DIM,),
        x_dtype=np.float32,
        n_rows={"train": n_train, "test": n_test},
        x_scale=1.0,
        synthetic=True,
        extra_attrs={"generator_seed": seed},
        created_by=CREATED_BY,
    ) as writer:
        for split, n in (("train", n_train), ("test", n_test)):
            for block, lo in enumerate(range(0, n, GEN_BLOCK)):
                writer.append(split, *make_block(seed, split, block, min(GEN_BLOCK, n - lo), prototypes))
                if log and (block % 20 == 19 or lo + GEN_BLOCK >= n):
                    log(f"{split}: {min(lo + GEN_BLOCK, n)}/{n} examples")
