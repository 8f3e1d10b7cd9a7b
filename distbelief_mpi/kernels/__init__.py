"""Numba compute kernels (in-place ones end in `_`) with NumPy twins in `reference`."""

from .elementwise import ACTIVATION_CODES, activation_grad_bias_, bias_activation_, sgd_update_
from .lcn import LCN_EPS, lcn_backward_, lcn_forward_
from .local import local_backward_, local_forward_, local_out_size
from .pooling import L2POOL_EPS, l2pool_backward_, l2pool_forward_, maxpool_backward_, maxpool_forward_
from .softmax import softmax_xent
from .thread_pool import set_compute_threads

__all__ = [
    "ACTIVATION_CODES",
    "LCN_EPS",
    "L2POOL_EPS",
    "activation_grad_bias_",
    "bias_activation_",
    "l2pool_backward_",
    "l2pool_forward_",
    "lcn_backward_",
    "lcn_forward_",
    "local_backward_",
    "local_forward_",
    "local_out_size",
    "maxpool_backward_",
    "maxpool_forward_",
    "set_compute_threads",
    "sgd_update_",
    "softmax_xent",
]
