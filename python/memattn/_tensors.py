"""Operands for the extension (numpy arrays as they are, torch tensors as zero-copy descriptors),
the numpy/torch kind of a call, and allocation of outputs of that kind.

A descriptor is (data address, dtype name, shape, strides in elements). Nothing here copies or
reorders data: an operand is described exactly as it lies in memory, or rejected with a message.
"""
import sys

NUMPY = "numpy"
TORCH = "torch"

def _torch_dtypes(torch):
    # A torch bool tensor holds bytes 0/1, which is exactly memattn's u8 mask.
    return {
        torch.float32: "f32",
        torch.float16: "f16",
        torch.bfloat16: "bf16",
        torch.float64: "f64",
        torch.bool: "u8",
        torch.uint8: "u8",
        torch.int32: "i32",
        torch.int64: "i64",
    }


def _torch():
    """The torch module if the caller has imported it (memattn never imports torch itself)."""
    return sys.modules.get("torch")


def _numpy():
    """The numpy module if the caller has imported it: a caller holding numpy arrays has, and
    one using only torch tensors (or nothing yet) need not have numpy installed at all."""
    return sys.modules.get("numpy")


def _is_ndarray(x):
    np = _numpy()
    return np is not None and isinstance(x, np.ndarray)


def kind_of(x, name):
    """NUMPY or TORCH for an operand; TypeError for anything else."""
    if _is_ndarray(x):
        return NUMPY
    torch = _torch()
    if torch is not None and isinstance(x, torch.Tensor):
        return TORCH
    raise TypeError(f"{name}: expected a numpy.ndarray or a torch.Tensor, got {type(x).__module__}."
                    f"{type(x).__qualname__}")


def common_kind(operands):
    """The one kind shared by all given operands ({name: array or None}); TypeError on a mix."""
    kind, first = None, None
    for name, x in operands.items():
        if x is None:
            continue
        k = kind_of(x, name)
        if kind is None:
            kind, first = k, name
        elif k != kind:
            raise TypeError(f"all arrays of one call must be numpy arrays or all torch tensors; "
                            f"{first} is a {_kind_label(kind)} but {name} is a {_kind_label(k)}")
    return kind


def _kind_label(kind):
    return "numpy.ndarray" if kind == NUMPY else "torch.Tensor"


def operand(x, name):
    """What the extension takes for `x`: a numpy array itself (read in C++, where its dtype,
    strides and writability are checked), or a torch tensor's descriptor
    (data address, dtype name, shape, element strides). Neither copies anything."""
    return x if _is_ndarray(x) else _describe_torch(x, name)


def _describe_torch(x, name):
    torch = _torch()
    if x.device.type != "cpu":
        raise ValueError(f"{name}: memattn runs on the CPU; got a tensor on {x.device}")
    if x.layout != torch.strided:
        raise ValueError(f"{name}: expected a strided (dense) tensor, got layout {x.layout}")
    if x.is_neg() or x.is_conj():
        # The lazy negation / conjugation bit is not in the memory memattn would read.
        raise ValueError(f"{name}: the tensor carries a lazy negation or conjugation; call "
                         f".resolve_neg() / .resolve_conj() first")
    dtype = _torch_dtypes(torch).get(x.dtype)
    if dtype is None:
        raise TypeError(f"{name}: torch dtype {x.dtype} is not supported; expected torch.float32, "
                        f"torch.float16, torch.bfloat16, torch.float64 (torch.bool or torch.uint8 "
                        f"for a mask, torch.int32 or torch.int64 for cu_seqlens)")
    return (x.data_ptr(), dtype, tuple(x.shape), x.stride())


def empty(kind, shape, like):
    """A new contiguous array of `shape` and `like`'s dtype, of the given kind."""
    if kind == NUMPY:
        return _numpy().empty(shape, dtype=like.dtype)
    return _torch().empty(shape, dtype=like.dtype)


def empty_f32(kind, shape):
    """A new contiguous float32 array of the given kind (for lse)."""
    if kind == NUMPY:
        np = _numpy()
        return np.empty(shape, dtype=np.float32)
    torch = _torch()
    return torch.empty(shape, dtype=torch.float32)


def default_threads(kind, num_threads):
    """num_threads=0 means torch's intra-op thread count for torch operands, so memattn stays
    within the budget the program gave torch; for numpy it means the library's default (all)."""
    if num_threads == 0 and kind == TORCH:
        return _torch().get_num_threads()
    return num_threads
