"""A distbelief-mpi model as a PyTorch nn.Module; `distbelief export --format torch` copies this
file into its output folder as distbelief_torch.py, beside model.safetensors and config.json.
It needs only torch and safetensors (not distbelief-mpi):

    import sys; sys.path.insert(0, "runs/digits/model_torch")
    from distbelief_torch import load
    net = load("runs/digits/model_torch")       # eval mode, float32, on the CPU
    probs = net(torch.as_tensor(x))             # x (n, *input_shape) in raw units -> (n, classes)

Every layer computes what distbelief_mpi/kernels/reference.py defines; the state_dict's names
are Model.params()'s ("layers.0.W", ...) and its tensors keep our shapes (dense W (D, U),
locally connected W (P, K, F), b (P, F)).
"""

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

LCN_EPS = 1e-4  # kernels/lcn.py
L2POOL_EPS = 1e-6  # kernels/pooling.py
ACTIVATIONS = {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "none": lambda z: z}


class Dense(nn.Module):
    """y = act(x_flat @ W + b); W (D, U), b (U,)."""

    def __init__(self, entry: dict):
        super().__init__()
        d, u = _prod(entry["in_shape"]), entry["out_shape"][0]
        self.W, self.b = nn.Parameter(torch.empty(d, u)), nn.Parameter(torch.empty(u))
        self.act = ACTIVATIONS[entry["activation"]]

    def forward(self, x):
        return self.act(torch.addmm(self.b, x.reshape(x.shape[0], -1), self.W))


class Local(nn.Module):
    """Locally connected, untied weights per output position: unfold to (B, K, P) with K
    ordered (c, i, j) and P = OH * OW row-major, then y[b, p, f] = sum_k cols W[p, k, f] + b[p, f]."""

    def __init__(self, entry: dict):
        super().__init__()
        f, oh, ow = entry["out_shape"]
        k = entry["in_shape"][0] * entry["patch"] ** 2
        self.W, self.b = nn.Parameter(torch.empty(oh * ow, k, f)), nn.Parameter(torch.empty(oh * ow, f))
        self.patch, self.stride, self.out_shape = entry["patch"], entry["stride"], (f, oh, ow)
        self.act = ACTIVATIONS[entry["activation"]]

    def forward(self, x):
        cols = F.unfold(x, self.patch, stride=self.stride)  # (B, K, P)
        z = torch.einsum("bkp,pkf->bpf", cols, self.W) + self.b  # (B, P, F)
        return self.act(z).transpose(1, 2).reshape(x.shape[0], *self.out_shape)


class MaxPool(nn.Module):
    def __init__(self, entry: dict):
        super().__init__()
        self.size, self.stride = entry["size"], entry["stride"]

    def forward(self, x):
        return F.max_pool2d(x, self.size, self.stride)


class L2Pool(MaxPool):
    """y = sqrt(sum over the window of x^2 + 1e-6), per channel."""

    def forward(self, x):
        sums = F.avg_pool2d(x * x, self.size, self.stride, divisor_override=1)
        return torch.sqrt(sums + L2POOL_EPS)


class LCN(nn.Module):
    """Local contrast normalisation (kernels/lcn.py): windows cropped at the borders, across all
    channels: the mean over channels then over the cropped window (avg_pool2d without the padding
    in its count) is sum / (C * pixels), the kernel's N."""

    def __init__(self, entry: dict):
        super().__init__()
        self.size = entry["size"]

    def window_mean(self, planes):
        """(B, C, H, W) -> (B, 1, H, W): the mean over channels and the cropped window."""
        mean = planes.mean(dim=1, keepdim=True)
        return F.avg_pool2d(mean, self.size, 1, padding=self.size // 2, count_include_pad=False)

    def forward(self, x):
        v = x - self.window_mean(x)
        return v / torch.sqrt(LCN_EPS + self.window_mean(v * v))


LAYERS = {"dense": Dense, "output": Dense, "local": Local, "maxpool": MaxPool, "l2pool": L2Pool, "lcn": LCN}


class DistbeliefNet(nn.Module):
    """The whole network: raw inputs -> x * x_scale -> layers -> softmax probabilities."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = config
        self.input_shape, self.n_classes = tuple(config["input_shape"]), config["n_classes"]
        self.register_buffer("x_scale", torch.tensor(config["x_scale"], dtype=torch.float32), persistent=False)
        self.layers = nn.ModuleList(LAYERS[entry["type"]](entry) for entry in config["layers"])

    def logits(self, x):
        """(n, n_classes) logits of raw-unit inputs (n, *input_shape), any real dtype."""
        h = x.to(torch.float32) * self.x_scale
        for layer in self.layers:
            h = layer(h)
        return h

    def forward(self, x):
        return torch.softmax(self.logits(x), dim=1)


def load(folder) -> DistbeliefNet:
    """The exported model in `folder` (config.json, model.safetensors), in eval mode."""
    from safetensors.torch import load_file

    folder = Path(folder)
    net = DistbeliefNet(json.loads((folder / "config.json").read_text()))
    net.load_state_dict(load_file(folder / "model.safetensors"), strict=True)
    return net.eval()


def _prod(shape) -> int:
    out = 1
    for n in shape:
        out *= n
    return out
