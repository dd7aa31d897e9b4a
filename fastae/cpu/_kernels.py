"""Machinery every CPU kernel family shares: compile options, the fixed chunking, and
helpers that resolve at compile time whether an argument is an array, a scalar or None."""
from numba import types
from numba.extending import intrinsic, overload

KERNEL_OPTIONS = dict(
    cache=True,
    nogil=True,
    error_model="numpy",
    boundscheck=False,
    # No nnan/ninf: NaN and Inf must propagate. reassoc lets the sums vectorise.
    fastmath={"contract", "reassoc", "arcp", "nsz"},
)
# An element's maths without reassoc and arcp. With reassoc, LLVM may regroup max(z, 0) - z t + log1p(e)
# into max(z, 0) + (log1p(e) - z t) and lose log1p(e), or t log y + (1 - t) log(1 - y) into
# log(1 - y) + t (log y - log(1 - y)); with arcp, the loop that also computes the gradient may divide by
# way of a reciprocal the other loop never forms, and the two give different values. Compiled apart and
# inlined by LLVM, the element's instructions keep their flags: only a loop's sum reassociates.
ELEMENT_OPTIONS = dict(KERNEL_OPTIONS, fastmath={"contract", "nsz"})
# A loop along a row whose columns are independent (no sum across them): contract (one fma) but no reassoc nor
# arcp, so that a column's arithmetic is the same whether it falls in the vectorised body or in the last columns
# LLVM finishes otherwise (with reassoc, AVX2 builds gave the columns past the body other bits: a plane's SSIM
# gradient then depended on how many planes shared its strip)
COLUMN_OPTIONS = ELEMENT_OPTIONS
CHUNK = 1 << 16  # elements per parallel task: fixed, so results do not depend on threads
BLOCK = 1024     # elements summed in the data's dtype before adding into float64


def window(a, start, stop):
    """``a[start:stop]`` for an array; None or a scalar as it is (resolved at compile time)."""


@overload(window, inline="always")
def _window(a, start, stop):
    if isinstance(a, types.Array):
        return lambda a, start, stop: a[start:stop]
    return lambda a, start, stop: a


def item(a, i):
    """``a[i]`` for an array, a scalar as it is (resolved at compile time)."""


@overload(item, inline="always")
def _item(a, i):
    if isinstance(a, types.Array):
        return lambda a, i: a[i]
    return lambda a, i: a


def run(a, start, stop):
    """Elements start .. stop - 1 of a C-contiguous array in its flat order (a view), None as it is (resolved
    at compile time)."""


@overload(run, inline="always")
def _run(a, start, stop):
    if isinstance(a, types.Array):
        return lambda a, start, stop: a.reshape(-1)[start:stop]
    return lambda a, start, stop: a


@intrinsic
def runtime(typingctx, value):
    """``value`` as a value known only at run time: a kernel of its own called with a constant (0, False)
    is compiled again for each constant (Numba types them as literals), with this once for all."""
    kind = types.unliteral(value)

    def codegen(context, builder, signature, args):
        return context.cast(builder, args[0], signature.args[0], kind)
    return kind(value), codegen
