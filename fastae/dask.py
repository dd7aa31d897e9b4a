"""fastae.dask: fastae's operators on Dask arrays, lazily, block by block.

Each function takes Dask arrays (NumPy arrays are wrapped), checks its
arguments at once with the in-memory function's own checks, and returns a
Dask array: nothing runs until it is computed, on whatever scheduler is in
use (threads, processes, a ``dask.distributed`` cluster).

- ``soft_threshold``, ``lasso_codes``, ``ista``: the signals (rows) in blocks
  of rows; the dictionary (and an array ``lam``) is one block of the graph,
  which each worker receives once. Each signal is solved alone, so the codes
  equal the in-memory call's bit for bit, whatever the blocks.
- ``ssim``, ``ssim_loss``: images (N, C, H, W) in blocks along N. Each block
  gives the float64 SSIM sum of each of its planes, which depends on the plane
  alone; ``reduction="mean"`` averages them in one task as the in-memory call
  does, so the value is bit-identical to it for any blocks.
- the pixel losses (``mse``, ``l1``, ... as in ``fastae``): the flat arrays are
  cut afresh into blocks of whole CPU kernel chunks (``SUM_PIECE`` elements:
  a copy at each old block's edge), each task returns the float64 sum of each
  chunk, and one task adds them by ``math.fsum`` as the in-memory kernel does:
  bit-identical to the in-memory value, whatever the input's blocks.

Needs ``dask[array]`` (``pip install 'fastae[dask]'``); ``import fastae`` never does.
"""
import math

import dask
import dask.array as da
import numpy as np

import fastae as _fa
from ._arrays import Call, check_choice, check_number, is_number
from ._table import LOSSES
from .pointwise import REDUCTIONS, loss_params
from .ssim import _Images, mean

__all__ = ["soft_threshold", "lasso_codes", "ista", "ssim", "ssim_loss", *LOSSES]


def _dask(a, name):
    if isinstance(a, da.Array):
        return a
    if isinstance(a, np.ndarray):
        return da.from_array(a, chunks=a.shape or ())
    raise TypeError(f"{name} must be a dask.array.Array or a numpy.ndarray, got {type(a).__name__}")


def _meta(a, shape):
    """An empty NumPy array of ``a``'s dtype: the in-memory checks run on it at once."""
    return np.empty(shape, a.dtype)


def _whole(a, axes):
    """``a`` with each of ``axes`` in one block."""
    return a.rechunk({axis: -1 for axis in axes}) if any(len(a.chunks[axis]) > 1 for axis in axes) else a


def _one_block(a):
    return a.rechunk(-1) if a.npartitions > 1 else a


# ---------------------------------------------------------------- sparse codes
def _codes(function, x, D, name, **kwargs):
    """``function(x, D, **kwargs)`` (lasso_codes or ista) over blocks of rows of x, D one block of the graph."""
    x = _dask(x, "x")
    if isinstance(D, np.ndarray):  # checked at once; a Dask D is checked by the tasks, when computed
        function(_meta(x, (0,) + x.shape[1:] if x.ndim == 2 else x.shape), D, **kwargs)
    D = _one_block(_dask(D, name))
    if x.ndim not in (1, 2) or D.ndim != 2 or x.shape[-1] != D.shape[0]:
        raise ValueError(f"x must have shape (n, {D.shape[0] if D.ndim == 2 else 'd'}) or (d,) to match {name} "
                         f"of shape {D.shape}; got {x.shape}")
    rows = _whole(x[None] if x.ndim == 1 else x, [1])
    codes = da.blockwise(_solve, "ik", rows, "ij", D, "jk", dtype=x.dtype, concatenate=True,
                         meta=np.empty((0, 0), x.dtype), function=function, **kwargs)
    return codes[0] if x.ndim == 1 else codes


def _solve(x, D, function, **kwargs):
    return function(x, D, **kwargs)


def lasso_codes(x, U, alpha):
    """``fastae.lasso_codes`` (U with orthonormal columns) on the rows of x, block by block."""
    return _codes(_fa.lasso_codes, x, U, "U", alpha=alpha)


def ista(x, D, alpha, *, n_iter=100, tol=1e-6, accelerated=True):
    """``fastae.ista`` on the rows of x, block by block: the same codes, bit for bit. (A
    ConvergenceWarning is raised where the block runs: on a cluster, in the worker's log.)"""
    return _codes(_fa.ista, x, D, "D", alpha=alpha, n_iter=n_iter, tol=tol, accelerated=accelerated)


def soft_threshold(c, lam):
    """``fastae.soft_threshold(c, lam)`` block by block; ``lam`` a number, or an array broadcastable to c
    (one block of the graph when it repeats along c's leading axes, else blocked as c)."""
    c = _dask(c, "c")
    meta = np.empty((0,) * c.ndim, c.dtype)
    if is_number(lam):
        check_number(lam, "lam", nonnegative=True)
        return c.map_blocks(_fa.soft_threshold, lam, dtype=c.dtype, meta=meta)
    if isinstance(lam, np.ndarray) and lam.size and not (lam >= 0).all():
        raise ValueError(f"lam must be non-negative, got min {lam.min()}")
    lam = _dask(lam, "lam")
    try:
        fits = np.broadcast_shapes(lam.shape, c.shape) == c.shape
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(f"lam of shape {lam.shape} does not broadcast to c's shape {c.shape}")
    if lam.dtype != c.dtype:
        raise TypeError(f"mixed dtypes: lam is {lam.dtype}, c is {c.dtype}")
    ones = next((i for i, n in enumerate(lam.shape) if n != 1), lam.ndim)
    core = lam.reshape(lam.shape[ones:])  # the leading 1s dropped
    if core.ndim < c.ndim and core.shape == c.shape[c.ndim - core.ndim:]:
        index = "".join(chr(ord("a") + i) for i in range(c.ndim))
        return da.blockwise(_fa.soft_threshold, index, _whole(c, range(c.ndim - core.ndim, c.ndim)), index,
                            _one_block(core), index[c.ndim - core.ndim:], dtype=c.dtype, meta=meta)
    return da.map_blocks(_fa.soft_threshold, c, da.broadcast_to(lam, c.shape).rechunk(c.chunks), dtype=c.dtype,
                         meta=meta)


# ---------------------------------------------------------------- SSIM
def _images(pred, target):
    """pred and target as Dask arrays of images in blocks along N alone (C, H and W whole)."""
    pred, target = _dask(pred, "pred"), _dask(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"target has shape {target.shape}, pred has shape {pred.shape}")
    if pred.dtype != target.dtype:
        raise TypeError(f"mixed dtypes: target is {target.dtype}, pred is {pred.dtype}")
    if pred.ndim != 4:
        raise ValueError(f"pred must be (N, C, H, W) images, got shape {pred.shape}")
    pred = _whole(pred, (1, 2, 3))
    return pred, target.rechunk(pred.chunks)


def _plane_means(pred, target, options):
    """The float64 mean SSIM of each plane of a block (N * C,)."""
    images = _Images(pred, target, **options)
    n_pos = images.positions(*images.spatial)
    return images.planes(images.x, images.y, False, images.full(images.x.shape[0], 1.0), None) / n_pos


def _reduce(per_plane, channels, reduction, sign, offset, dtype):
    """What the in-memory call returns from the per-plane means (fastae.ssim._Images.reduce)."""
    if reduction == "none":
        value = offset + sign * per_plane.reshape(-1, channels).mean(axis=1)
    else:
        value = offset + sign * mean(per_plane)
    return np.asarray(value, dtype)


def _structural(pred, target, sign, offset, reduction, options):
    pred, target = _images(pred, target)
    check_choice(reduction, "reduction", ("mean", "none"))
    _fa.ssim(_meta(pred, (0,) + pred.shape[1:]), _meta(target, (0,) + pred.shape[1:]), **options)  # the checks
    c = pred.shape[1]
    planes = da.map_blocks(_plane_means, pred, target, options, chunks=(tuple(n * c for n in pred.chunks[0]),),
                           drop_axis=(1, 2, 3), dtype=np.float64, meta=np.empty(0))
    if reduction == "none":  # each image from its own planes: block by block
        return planes.map_blocks(_reduce, c, reduction, sign, offset, pred.dtype, chunks=(pred.chunks[0],),
                                 dtype=pred.dtype, meta=np.empty(0, pred.dtype))
    value = dask.delayed(_reduce, pure=True)(planes, c, reduction, sign, offset, pred.dtype)
    return da.from_delayed(value, (), pred.dtype, meta=np.empty((), pred.dtype))


def ssim(pred, target, *, data_range=1.0, win_size=11, sigma=1.5, k1=0.01, k2=0.03, padding="valid",
         reduction="mean"):
    """``fastae.ssim`` of images (N, C, H, W) in blocks along N: the same value, bit for bit (``reduction``
    "mean", a 0-d Dask array, or "none", one value per image)."""
    return _structural(pred, target, 1.0, 0.0, reduction, dict(data_range=data_range, win_size=win_size,
                                                                sigma=sigma, k1=k1, k2=k2, padding=padding))


def ssim_loss(pred, target, *, data_range=1.0, win_size=11, sigma=1.5, k1=0.01, k2=0.03, padding="valid",
              reduction="mean"):
    """1 - SSIM, as ``fastae.ssim_loss``."""
    return _structural(pred, target, -1.0, 1.0, reduction, dict(data_range=data_range, win_size=win_size,
                                                                 sigma=sigma, k1=k1, k2=k2, padding=padding))


# ---------------------------------------------------------------- pixel losses
def _piece_sums(pred, target, weight, loss, fields, activation, negative_slope):
    """The float64 sum of w * loss over each piece of SUM_PIECE elements of a flat block (pieces from its
    start), as the in-memory kernel sums its chunks; ValueError where a value leaves the loss's domain."""
    call = Call(pred)
    pred, target = call.pred, call.like_pred(target, "target")  # (native views: see _arrays.as_array)
    if weight is not None and not is_number(weight):
        weight = call.like_pred(weight, "weight", shape=False)
    piece = call.backend.SUM_PIECE or max(pred.size, 1)
    sums = np.empty(-(-pred.size // piece))
    for i in range(sums.size):
        s = slice(i * piece, (i + 1) * piece)
        w = weight if weight is None or is_number(weight) else weight[s]
        _, sums[i], outside = call.backend.pointwise(loss, fields, activation, negative_slope, pred[s], target[s],
                                                     w, None, None, 1.0, 1.0)
        if outside and not call.gpu:
            where = "pred" if activation == "identity" else f"{activation}(pred)"
            raise ValueError(f"{loss}: {outside} values of {where} lie outside [0, 1]; "
                             "for logits pass activation='sigmoid'")
    return sums


def _total(sums, scale, dtype):
    return np.asarray(math.fsum(sums) * scale, dtype)


def _pixel(loss, pred, target, reduction, weight, activation, negative_slope, params):
    pred, target = _dask(pred, "pred"), _dask(target, "target")
    check_choice(reduction, "reduction", REDUCTIONS)
    meta = _meta(pred, (0,))
    weight_meta = weight if weight is None or is_number(weight) else _meta(weight, (0,))
    getattr(_fa, loss)(meta, _meta(target, (0,)), reduction="sum", weight=weight_meta, activation=activation,
                       negative_slope=negative_slope, **params)  # the in-memory checks, at once
    if pred.shape != target.shape:
        raise ValueError(f"target has shape {target.shape}, pred has shape {pred.shape}")
    if reduction == "batchmean" and pred.ndim == 0:
        raise ValueError("reduction='batchmean' needs pred with a batch axis; pred is 0-d")
    fields = LOSSES[loss].kernel_fields(loss_params(loss, params))
    if weight is not None and not is_number(weight):
        weight = _dask(weight, "weight")
        try:
            weight = da.broadcast_to(weight, pred.shape)
        except ValueError:
            raise ValueError(f"weight of shape {weight.shape} does not broadcast to pred's shape "
                             f"{pred.shape}") from None
    if reduction == "none":  # element by element: any blocks
        arrays = [pred, target.rechunk(pred.chunks)] + ([] if weight is None or is_number(weight) else
                                                        [weight.rechunk(pred.chunks)])
        return da.map_blocks(_elements, *arrays, loss=loss, params=params, activation=activation,
                             negative_slope=negative_slope, weight=weight if len(arrays) == 2 else None,
                             dtype=pred.dtype, meta=np.empty((0,) * pred.ndim, pred.dtype))
    # the flat arrays in blocks of whole kernel chunks, about as large as the given blocks
    piece = Call(meta).backend.SUM_PIECE or pred.size or 1
    size = max(1, round(int(np.prod(pred.chunksize)) / piece)) * piece
    flat = [a.reshape(-1).rechunk(size) for a in (pred, target)]
    w = weight if weight is None or is_number(weight) else weight.reshape(-1).rechunk(size)
    pieces = tuple(-(-n // piece) for n in flat[0].chunks[0])
    arrays = flat + ([] if w is None or is_number(w) else [w])
    sums = da.map_blocks(_pieces, *arrays, weight=w if len(arrays) == 2 else None, loss=loss, fields=fields,
                         activation=activation, negative_slope=negative_slope, chunks=(pieces,),
                         dtype=np.float64, meta=np.empty(0))
    n = pred.size
    count = {"mean": n, "sum": 1, "batchmean": pred.shape[0] if pred.ndim else 1}[reduction]
    value = dask.delayed(_total, pure=True)(sums, 1.0 / count if count else np.nan, pred.dtype)
    return da.from_delayed(value, (), pred.dtype, meta=np.empty((), pred.dtype))


def _pieces(pred, target, weight_block=None, *, weight, loss, fields, activation, negative_slope):
    return _piece_sums(np.ascontiguousarray(pred), np.ascontiguousarray(target),
                       weight if weight_block is None else np.ascontiguousarray(weight_block), loss, fields,
                       activation, negative_slope)


def _elements(pred, target, weight_block=None, *, weight, loss, params, activation, negative_slope):
    return getattr(_fa, loss)(pred, target, reduction="none", weight=weight if weight_block is None else
                              weight_block, activation=activation, negative_slope=negative_slope, **params)


def _public(row):
    def loss(pred, target, *, reduction="mean", weight=None, activation="identity", negative_slope=0.01,
             **params):
        return _pixel(row.name, pred, target, reduction, weight, activation, negative_slope, params)
    loss.__name__ = loss.__qualname__ = row.name
    loss.__doc__ = (f"``fastae.{row.name}`` on Dask arrays (no gradient): reduction 'mean', 'sum' or "
                    "'batchmean' gives a 0-d Dask array bit-identical to the in-memory value whatever the "
                    f"blocks, 'none' the element-wise losses.\n\n{row.doc}")
    return loss


for _row in LOSSES.values():
    globals()[_row.name] = _public(_row)
