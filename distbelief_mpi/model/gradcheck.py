"""PURE: check a layer's backward against central finite differences (float64).

    from distbelief_mpi.model.gradcheck import check_layer
    check_layer(MyLayer((2, 5, 5), ..., np.float64))   # raises GradientMismatch, or returns the worst error

The layer is checked through the scalar L = sum(forward(x) * r) for fixed random x and r, so
dL/dy = r: backward(r) must give dL/dx and dL/dparams. Build the layer in float64 (float32's
rounding swamps a finite difference). Inputs are random normals, so kinks (ReLU, max) are
almost surely not hit. Cost: two forwards per input and per parameter element: keep it small.
"""

import numpy as np

STEP, RTOL, ATOL = 1e-6, 1e-5, 1e-7


class GradientMismatch(AssertionError):
    """The analytic and the numerical gradient differ beyond the tolerance."""


def numeric_grad(f, v: np.ndarray, step: float = STEP) -> np.ndarray:
    """d f() / d v by central differences, entry by entry (v is changed and restored in place)."""
    out = np.empty_like(v)
    flat, grad = v.reshape(-1), out.reshape(-1)
    for i in range(flat.size):
        keep = flat[i]
        flat[i] = keep + step
        up = f()
        flat[i] = keep - step
        down = f()
        flat[i] = keep
        grad[i] = (up - down) / (2 * step)
    return out


def check_layer(layer, batch: int = 2, seed: int = 0, rtol: float = RTOL, atol: float = ATOL) -> float:
    """Compare layer.backward with numerical gradients of L = sum(forward(x) * r) for the input
    x (batch, *in_shape) and the parameters (its initial block plus noise, so zero biases are
    tested away from zero). Also checks param_shapes adds up to n_params. Returns the largest
    absolute difference; raises GradientMismatch naming what differs."""
    if layer.dtype != np.float64:
        raise ValueError(f"build the layer with dtype float64 to check it, not {layer.dtype}")
    shapes = layer.param_shapes()
    if sum(int(np.prod(s)) for s in shapes.values()) != layer.n_params:
        raise GradientMismatch(f"param_shapes {shapes} do not add up to n_params = {layer.n_params}")
    rng = np.random.default_rng(seed)
    params = np.zeros(layer.n_params, np.float64)
    layer.init(params, seed)
    params += rng.standard_normal(params.shape) * 0.1
    x = rng.standard_normal((batch, *layer.in_shape))
    r = rng.standard_normal((batch, *layer.out_shape))

    def loss() -> float:
        return float((layer.forward(params, x)[0] * r).sum())

    _, cache = layer.forward(params, x)
    grad = np.full(layer.n_params, np.nan)
    dx = np.array(layer.backward(params, cache, r.copy(), grad, need_dx=True))
    worst = _compare("d loss / d x", dx, numeric_grad(loss, x), rtol, atol)
    if layer.n_params:
        worst = max(worst, _compare("d loss / d params", grad, numeric_grad(loss, params), rtol, atol))
    return worst


def _compare(what: str, analytic: np.ndarray, numeric: np.ndarray, rtol: float, atol: float) -> float:
    if analytic.shape != numeric.shape:
        raise GradientMismatch(f"{what}: backward gave shape {analytic.shape}, expected {numeric.shape}")
    error = np.abs(analytic - numeric)
    bad = ~(error <= atol + rtol * np.abs(numeric))  # NaN (an entry backward never wrote) is bad too
    if bad.any():
        first = tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), bad.shape))
        raise GradientMismatch(
            f"{what}: {int(bad.sum())} of {bad.size} entries differ; first at {first}: "
            f"analytic {float(analytic[first]):.6g}, numerical {float(numeric[first]):.6g}"
        )
    return float(error.max(initial=0.0))
