"""The tensors of llama.cpp's RPC protocol (v7): the `rpc_tensor` record, ggml's types and
graph operations, and what ggml itself would build, checked without any connection state.

Written from ggml.h and ggml-rpc.cpp of the build we ship. The checks are pure: each returns
what is wrong with a tensor (None when nothing is), and `rpcwire.RpcGuard` refuses with it.
"""

from __future__ import annotations

import ctypes
import functools
import struct
from dataclasses import dataclass
from typing import Any

# struct rpc_tensor (packed): id, type, buffer, ne[4] (u32), nb[4] (u32), op, op_params[16],
# flags, src[10], view_src, view_offs, data, name[64], use_count.
TENSOR = struct.Struct("<QIQ4I4II16ii10QQQQ64si")
T = TENSOR.size
assert T == 296
TYPE_COUNT = 43  # GGML_TYPE_COUNT
_MAX_ELEMENTS = 2**62  # ggml_new_tensor asserts the element count fits an int64


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# ggml.h's `enum ggml_op` of this build (RPC 7.0.0 pins GGML_OP_COUNT == 101).
OP_NAMES: tuple[str, ...] = _words(
    "NONE DUP ADD ADD_ID ADD1 ACC SUB MUL DIV SQR SQRT LOG SIN COS SUM SUM_ROWS CUMSUM MEAN "
    "ARGMAX COUNT_EQUAL REPEAT REPEAT_BACK CONCAT SILU_BACK NORM RMS_NORM RMS_NORM_BACK "
    "GROUP_NORM L2_NORM MUL_MAT MUL_MAT_ID OUT_PROD SCALE SET CPY CONT RESHAPE VIEW PERMUTE "
    "TRANSPOSE GET_ROWS GET_ROWS_BACK SET_ROWS DIAG DIAG_MASK_INF DIAG_MASK_ZERO SOFT_MAX "
    "SOFT_MAX_BACK ROPE ROPE_BACK CLAMP CONV_TRANSPOSE_1D IM2COL IM2COL_BACK IM2COL_3D "
    "COL2IM_1D CONV_2D CONV_3D CONV_2D_DW CONV_TRANSPOSE_2D POOL_1D POOL_2D POOL_2D_BACK "
    "UPSCALE PAD PAD_REFLECT_1D ROLL ARANGE TIMESTEP_EMBEDDING ARGSORT TOP_K LEAKY_RELU TRI "
    "FILL FLASH_ATTN_EXT FLASH_ATTN_BACK SSM_CONV SSM_SCAN WIN_PART WIN_UNPART GET_REL_POS "
    "ADD_REL_POS RWKV_WKV6 GATED_LINEAR_ATTN RWKV_WKV7 SOLVE_TRI GATED_DELTA_NET "
    "LIGHTNING_INDEXER DSV4_HC_COMB DSV4_HC_PRE DSV4_HC_POST UNARY MAP_CUSTOM1 MAP_CUSTOM2 "
    "MAP_CUSTOM3 CUSTOM CROSS_ENTROPY_LOSS CROSS_ENTROPY_LOSS_BACK OPT_STEP_ADAMW OPT_STEP_SGD "
    "GLU"
)
assert len(OP_NAMES) == 101
# What llama.cpp's model graphs build for inference (src/ of this build calls these ggml_*
# constructors; ROPE_BACK is deepseek4's inverse rope). Left out: custom and map-custom
# operators (arbitrary function pointers), training (backward, loss, optimiser) and the vision
# and audio encoders' convolutions, which a split text model never sends.
ALLOWED_OPS: frozenset[str] = frozenset(
    _words(
        "NONE ADD ADD_ID SUB MUL DIV SQR SQRT LOG SUM SUM_ROWS CUMSUM MEAN ARGMAX REPEAT CONCAT "
        "NORM RMS_NORM GROUP_NORM L2_NORM MUL_MAT MUL_MAT_ID SCALE SET CPY CONT RESHAPE VIEW "
        "PERMUTE TRANSPOSE GET_ROWS SET_ROWS SOFT_MAX ROPE ROPE_BACK CLAMP IM2COL POOL_2D PAD "
        "ARANGE ARGSORT "
        "TOP_K TRI FILL FLASH_ATTN_EXT SSM_CONV SSM_SCAN RWKV_WKV6 GATED_LINEAR_ATTN RWKV_WKV7 "
        "SOLVE_TRI GATED_DELTA_NET LIGHTNING_INDEXER DSV4_HC_COMB DSV4_HC_PRE DSV4_HC_POST UNARY "
        "GLU"
    )
)
_ALLOWED = frozenset(OP_NAMES.index(name) for name in ALLOWED_OPS)
_OP_UNARY = OP_NAMES.index("UNARY")
_OP_GLU = OP_NAMES.index("GLU")
_UNARY_OP_COUNT = 22  # enum ggml_unary_op
_GLU_OP_COUNT = 7  # enum ggml_glu_op


@functools.cache
def type_table() -> tuple[tuple[int, int], ...]:
    """(block size, bytes per block) of every ggml type, from the ggml we run."""
    import llama_cpp.llama_cpp as L

    import mongars_edge.inference.lowlevel  # noqa: F401  (it closes what llama_cpp opens)

    lib = L._lib
    blck, size = lib.ggml_blck_size, lib.ggml_type_size
    blck.argtypes, blck.restype = [ctypes.c_int], ctypes.c_int64
    size.argtypes, size.restype = [ctypes.c_int], ctypes.c_size_t
    return tuple((int(blck(t)), int(size(t))) for t in range(TYPE_COUNT))


@dataclass(frozen=True)
class RpcTensor:
    """The fields of an `rpc_tensor` the guard checks."""

    id: int
    type: int
    buffer: int
    ne: tuple[int, int, int, int]
    nb: tuple[int, int, int, int]
    op: int
    op_param0: int
    src: tuple[int, ...]
    view_src: int
    data: int
    name_ok: bool


def unpack_tensor(raw: bytes | memoryview, offset: int = 0) -> RpcTensor:
    f = TENSOR.unpack_from(raw, offset)
    return tensor_of(f)


def tensor_of(f: tuple[Any, ...]) -> RpcTensor:
    """The tensor of one `TENSOR.unpack` (or `iter_unpack`) result."""
    name = f[42]
    assert isinstance(name, bytes)
    return RpcTensor(
        id=f[0],
        type=f[1],
        buffer=f[2],
        ne=f[3:7],
        nb=f[7:11],
        op=f[11],
        op_param0=f[12],
        src=f[29:39],
        view_src=f[39],
        data=f[41],
        name_ok=b"\0" in name,
    )


def tensor_problem(t: RpcTensor, types: tuple[tuple[int, int], ...]) -> str | None:
    """What makes `t` no tensor llama.cpp would send, whatever buffer it is in (None: nothing);
    `types` is `type_table()`."""
    if t.type >= TYPE_COUNT or types[t.type][0] == 0:
        return f"tensor type {t.type} is not a ggml type"
    if t.op >= len(OP_NAMES):
        return f"unknown graph operation {t.op}"
    if t.op not in _ALLOWED:
        return f"graph operation {OP_NAMES[t.op]} is not one a split model uses"
    if (t.op == _OP_UNARY and not 0 <= t.op_param0 < _UNARY_OP_COUNT) or (
        t.op == _OP_GLU and not 0 <= t.op_param0 < _GLU_OP_COUNT
    ):
        return f"{OP_NAMES[t.op]} of unknown kind {t.op_param0}"
    if not t.name_ok:
        return "tensor name not terminated"
    blck = types[t.type][0]
    ne0, ne1, ne2, ne3 = t.ne
    if ne0 % blck:
        return f"row of {ne0} elements is not whole blocks of {blck}"
    if ne0 * ne1 * ne2 * ne3 >= _MAX_ELEMENTS:
        return f"tensor of {t.ne} elements is too large"
    return None


def tensor_nbytes(t: RpcTensor, blck: int, type_size: int) -> int:
    """ggml_nbytes, in exact integers."""
    if 0 in t.ne:
        return 0
    ne, nb = t.ne, t.nb
    if blck == 1:
        total = type_size
        first = 0
    else:
        total = ne[0] * nb[0] // blck
        first = 1
    for i in range(first, 4):
        total += (ne[i] - 1) * nb[i]
    return total


# Operations whose result has its first source's shape, and the element-wise binary ones
# (whose second source repeats into the first). ggml's constructors assert these shapes and its
# CPU kernels rely on them: a result smaller than its sources would be written past its end.
_SAME_SHAPE = frozenset(
    OP_NAMES.index(name)
    for name in _words(
        "SQR SQRT LOG NORM RMS_NORM L2_NORM GROUP_NORM SCALE CLAMP UNARY SOFT_MAX ROPE CUMSUM "
        "TRI FILL ARGSORT ADD SUB MUL DIV"
    )
)
_BINARY = frozenset(OP_NAMES.index(name) for name in ("ADD", "SUB", "MUL", "DIV"))
_OP = {
    name: OP_NAMES.index(name) for name in ("MUL_MAT", "GET_ROWS", "SET_ROWS", "GLU", "CPY", "CONT")
}
_OP_FLASH = OP_NAMES.index("FLASH_ATTN_EXT")


def shape_problem(t: RpcTensor, src: list[RpcTensor | None]) -> str | None:
    """What makes graph node `t` a shape ggml's constructor for its operation would not make,
    for the operations whose kernels write by their sources' shapes (None: nothing)."""
    op, ne = t.op, t.ne
    a, b = src[0], src[1]
    ok = True
    if op in _SAME_SHAPE:
        ok = a is not None and ne == a.ne
        if ok and op in _BINARY:
            ok = b is not None and all(y and x % y == 0 for x, y in zip(a.ne, b.ne, strict=True))  # type: ignore[union-attr]
    elif op == _OP["MUL_MAT"]:
        ok = (
            a is not None
            and b is not None
            and a.ne[0] == b.ne[0]
            and a.ne[2] > 0
            and a.ne[3] > 0
            and b.ne[2] % a.ne[2] == 0
            and b.ne[3] % a.ne[3] == 0
            and ne == (a.ne[1], b.ne[1], b.ne[2], b.ne[3])
        )
    elif op == _OP["GET_ROWS"]:
        ok = a is not None and b is not None and ne == (a.ne[0], b.ne[0], b.ne[1], b.ne[2])
    elif op == _OP["SET_ROWS"]:  # sources: the rows, their indices; the result views the target
        ok = a is not None and b is not None and a.ne[0] == ne[0] and b.ne[0] == a.ne[1]
    elif op == _OP["GLU"]:
        ok = a is not None and ne[1:] == a.ne[1:] and ne[0] <= a.ne[0]
    elif op == _OP["CPY"]:
        ok = a is not None and b is not None and _count(a) == _count(b) and ne == b.ne
    elif op == _OP["CONT"]:
        ok = a is not None and _count(a) == _count(t)
    elif op == _OP_FLASH:
        q, k, v = src[0], src[1], src[2]
        ok = (
            q is not None
            and k is not None
            and v is not None
            and q.ne[0] == k.ne[0]
            and k.ne[1] == v.ne[1]
            and ne == (v.ne[0], q.ne[2], q.ne[1], q.ne[3])
        )
    if ok:
        return None
    shapes = ", ".join(str(s.ne) for s in src if s is not None)
    return f"{OP_NAMES[op]} of shape {ne} from sources of shapes {shapes} is not one ggml builds"


def _count(t: RpcTensor) -> int:
    return t.ne[0] * t.ne[1] * t.ne[2] * t.ne[3]
