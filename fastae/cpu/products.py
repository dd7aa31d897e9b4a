"""Row products whose sums run in one fixed order: out = a @ b with each element the chain of fused
multiply-adds over k = 0, 1, ..., d - 1, whatever the rows beside it, the block, the threads or the CPU.

BLAS does not promise that: OpenBLAS picks its kernels by CPU (Haswell's on AMD machines, SkylakeX's on
Intel AVX-512 ones) and by the number of rows, and a row of a block of 7 came back other than the same
row inside 301 (by up to 7.6e-6 in float32), so LASSO codes depended on the Dask block and the batch a
signal was solved in. The products that decide a signal's codes (x D, and y G in each FISTA step) are
taken here instead: tiles of ROWS rows by two vectors of 32 bytes, the accumulators in registers, each
step k one ``llvm.fma`` per accumulator (exact: the same bits as the scalar fma that the tiles at the
edges use, and on any x86-64).
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from ._kernels import ELEMENT_OPTIONS
from ._threads import run_chunks

ROWS = 4             # rows of a tile: each column of b loaded once for them
VECTOR_BYTES = 32    # a vector of the tiles (8 float32, 4 float64): AVX2's, which AVX-512 runs as well
VECTORS = 2          # vectors of a tile's row (ROWS x VECTORS independent chains hide the fma's latency)
ROWS_PER_CHUNK = 64  # rows per piece of work for the threads (any split gives the same bits)
THREADS_FROM = 1 << 24  # multiply-adds from which a product goes over fastae's threads (a thread's hand-over
#                         costs tens of us: FISTA takes a product of a shrinking batch each step)


@intrinsic
def _tile(typingctx, a, b, out, i, j, rows, vectors):
    """out[i:i + rows, j:j + w] = a[i:i + rows] @ b[:, j:j + w] (C-contiguous arrays of one float dtype), each
    element fma(a[r, k], b[k, c], acc) for k = 0 .. d - 1 from acc = 0; ``rows`` and ``vectors`` constants:
    w = vectors vectors of VECTOR_BYTES, or one column for vectors = 0."""
    if not (all(isinstance(t, types.Array) and t.ndim == 2 and t.layout == "C" for t in (a, b, out))
            and a.dtype == b.dtype == out.dtype and isinstance(a.dtype, types.Float)
            and isinstance(rows, types.IntegerLiteral) and isinstance(vectors, types.IntegerLiteral)):
        return None
    n_rows, n_vectors = rows.literal_value, vectors.literal_value

    def codegen(context, builder, signature, args):
        kind = signature.args[0].dtype
        scalar = context.get_data_type(kind)
        width = VECTOR_BYTES * 8 // kind.bitwidth if n_vectors else 1
        vector = ir.VectorType(scalar, width) if width > 1 else scalar
        parts = max(1, n_vectors)
        name = f"llvm.fma.{f'v{width}' if width > 1 else ''}f{kind.bitwidth}"
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vector, [vector] * 3), name)
        arrays = [context.make_array(t)(context, builder, v) for t, v in zip(signature.args[:3], args[:3])]
        (a_, b_, out_), i_, j_ = arrays, args[3], args[4]
        d = builder.extract_value(a_.shape, 1)
        zero = ir.Constant(vector, None)
        accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(parts)] for _ in range(n_rows)]

        def at(array, row, column):
            return cgutils.get_item_pointer2(context, builder, array.data, cgutils.unpack_tuple(builder, array.shape),
                                             cgutils.unpack_tuple(builder, array.strides), "C", [row, column])

        def as_vector(pointer):
            return builder.bitcast(pointer, vector.as_pointer()) if width > 1 else pointer

        def splat(value):
            if width == 1:
                return value
            lanes_ = builder.insert_element(ir.Constant(vector, ir.Undefined), value, ir.IntType(32)(0))
            zeros = ir.Constant(ir.VectorType(ir.IntType(32), width), [0] * width)
            return builder.shuffle_vector(lanes_, lanes_, zeros)

        with cgutils.for_range(builder, d) as loop:
            k = loop.index
            columns = [builder.load(as_vector(at(b_, k, builder.add(j_, j_.type(p * width)))), align=kind.bitwidth // 8)
                       for p in range(parts)]
            for r in range(n_rows):
                v = splat(builder.load(at(a_, builder.add(i_, i_.type(r)), k)))
                for p in range(parts):
                    builder.store(builder.call(fma, [v, columns[p], builder.load(accs[r][p])]), accs[r][p])
        for r in range(n_rows):
            for p in range(parts):
                pointer = as_vector(at(out_, builder.add(i_, i_.type(r)), builder.add(j_, j_.type(p * width))))
                builder.store(builder.load(accs[r][p]), pointer, align=kind.bitwidth // 8)
        return context.get_dummy_value()
    return types.none(a, b, out, i, j, rows, vectors), codegen


@njit(**ELEMENT_OPTIONS)
def _rows_times(a, b, out, first, stop):
    """out[i] = a[i] @ b for the rows of chunks first .. stop - 1 (ROWS_PER_CHUNK rows each)."""
    n, k = a.shape[0], b.shape[1]
    wide = VECTORS * (VECTOR_BYTES // a.itemsize)
    i0, i1 = first * ROWS_PER_CHUNK, min(stop * ROWS_PER_CHUNK, n)
    whole = k - k % wide
    for i in range(i0, i1 - (i1 - i0) % ROWS, ROWS):
        for j in range(0, whole, wide):
            _tile(a, b, out, i, j, ROWS, VECTORS)
        for j in range(whole, k):
            _tile(a, b, out, i, j, ROWS, 0)
    for i in range(i1 - (i1 - i0) % ROWS, i1):
        for j in range(0, whole, wide):
            _tile(a, b, out, i, j, 1, VECTORS)
        for j in range(whole, k):
            _tile(a, b, out, i, j, 1, 0)


def rows_times(a, b, out=None):
    """a @ b for a (n, d) and b (d, k) of one float dtype, each element's sum in one order (see the module):
    a row's products the same bits whatever the rows beside it, the threads or the CPU."""
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    if out is None:
        out = np.empty((a.shape[0], b.shape[1]), a.dtype)
    target = out if out.flags.c_contiguous else np.empty(out.shape, out.dtype)
    n_chunks = -(-a.shape[0] // ROWS_PER_CHUNK)
    if a.shape[0] * a.shape[1] * b.shape[1] < THREADS_FROM:
        _rows_times(a, b, target, 0, n_chunks)
    else:
        run_chunks(lambda first, stop: _rows_times(a, b, target, first, stop), n_chunks)
    if target is not out:
        out[...] = target
    return out
