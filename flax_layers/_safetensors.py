"""Safetensors checkpoints in the Hugging Face layouts: lazy reading, sharded writing.

A checkpoint directory holds either one ``model.safetensors`` file or
``model.safetensors.index.json`` (``{"metadata": {"total_size": n},
"weight_map": {key: shard_file}}``) next to its shard files
``model-00001-of-0000N.safetensors`` ...; when both are present the single file
wins, as in ``transformers``.

Reading is lazy: opening a checkpoint reads only the file headers (names,
shapes, dtypes); each tensor is read on demand by opening its file, copying the
tensor out and closing the file again. ``safetensors`` memory-maps the file
while it is open and the mapped pages it touches count towards the process's
resident memory, so keeping one file open while reading every tensor would hold
the weights twice; reopening per tensor holds at most one tensor beyond what the
caller keeps.

Writing splits the tensors into shards like ``huggingface_hub``'s
``split_state_dict_into_shards`` (greedy in the given order; a tensor larger
than the limit gets a shard of its own; a single shard is written as
``model.safetensors`` without an index) and materialises one shard at a time.

Reference: the safetensors format (huggingface/safetensors); ``transformers``
``PreTrainedModel.save_pretrained`` / ``from_pretrained``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_dtypes
import numpy as np

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
SHARD_PATTERN = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")

# The floating safetensors dtypes a weight may be stored in, as numpy dtypes
# (``ml_dtypes`` provides bfloat16; importing it also lets ``safetensors.numpy``
# return BF16 tensors).
FLOAT_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
}
_NUMPY_TO_SAFETENSORS = {v: k for k, v in FLOAT_DTYPES.items()}

_SIZE_UNITS = {
    "TIB": 2**40,
    "GIB": 2**30,
    "MIB": 2**20,
    "KIB": 2**10,
    "TB": 10**12,
    "GB": 10**9,
    "MB": 10**6,
    "KB": 10**3,
}


def load_safe_open() -> Callable[..., Any]:
    """Returns ``safetensors.safe_open`` or raises an ImportError saying how to install it."""
    try:
        import safetensors.numpy  # noqa: F401  (the numpy framework of safe_open)
        from safetensors import safe_open as opener
    except ImportError as err:
        raise ImportError(
            "Reading and writing Hugging Face checkpoints needs the optional 'safetensors' "
            "package: pip install safetensors (or optax-flax-contrib[peers])."
        ) from err
    return opener


def _save_file() -> Callable[..., None]:
    load_safe_open()  # the same ImportError when safetensors is missing
    from safetensors.numpy import save_file

    return save_file


def dtype_name(dtype: Any) -> str:
    """The safetensors name (``"F32"``, ``"BF16"`` ...) of a numpy dtype, else its numpy name."""
    dtype = np.dtype(dtype)
    return _NUMPY_TO_SAFETENSORS.get(dtype, dtype.name)


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """Shape, stored dtype name and file of one checkpoint tensor (``file`` None: in memory)."""

    shape: tuple[int, ...]
    dtype: str
    file: str | None


class TensorReader:
    """The tensors of a checkpoint: headers up front, data one tensor at a time.

    Args:
      infos: ``{key: TensorInfo}`` in the checkpoint's order.
      arrays: in-memory tensors for keys whose ``TensorInfo.file`` is None.
      origin: what the tensors came from, for error messages.
    """

    def __init__(
        self,
        infos: Mapping[str, TensorInfo],
        arrays: Mapping[str, Any] | None = None,
        origin: str = "",
    ):
        self.infos = dict(infos)
        self.arrays = arrays or {}
        self.origin = origin

    @property
    def keys(self) -> tuple[str, ...]:
        """All tensor names, in the checkpoint's order."""
        return tuple(self.infos)

    def read(self, key: str) -> np.ndarray:
        """Reads tensor ``key`` into a new numpy array in its stored dtype."""
        info = self.infos[key]
        if info.file is None:
            return np.array(self.arrays[key])  # a copy: the caller may hand it to JAX
        with _open(info.file) as f:
            return f.get_tensor(key)


def _open(file: str) -> Any:
    opener = load_safe_open()
    try:
        return opener(file, framework="numpy")
    except FileNotFoundError:
        raise
    except Exception as err:  # safetensors raises its own SafetensorError
        raise ValueError(f"{file!r} is not a readable safetensors file: {err}") from err


def _file_infos(file: str) -> dict[str, TensorInfo]:
    with _open(file) as f:
        infos = {}
        for key in f.keys():
            s = f.get_slice(key)
            infos[key] = TensorInfo(tuple(int(n) for n in s.get_shape()), s.get_dtype(), file)
        return infos


def reader_from_arrays(arrays: Mapping[str, Any]) -> TensorReader:
    """A :class:`TensorReader` over in-memory arrays (numpy or anything ``np.asarray`` takes)."""
    infos = {}
    for key, value in arrays.items():
        value = np.asarray(value)
        infos[key] = TensorInfo(tuple(value.shape), dtype_name(value.dtype), None)
    return TensorReader(infos, arrays, origin="weights")


def open_checkpoint(path: str | os.PathLike[str]) -> TensorReader:
    """Opens a safetensors file, or a directory with ``model.safetensors`` or a sharded index.

    Reads the headers only. Raises FileNotFoundError when the directory holds
    neither layout or the index names a shard file that does not exist, and
    ValueError for an index without a ``weight_map``, a key the index places in a
    shard that does not hold it, or a file that is not safetensors.
    """
    load_safe_open()
    path = os.fspath(path)
    if os.path.isfile(path):
        return TensorReader(_file_infos(path), origin=path)
    single = os.path.join(path, WEIGHTS_NAME)
    if os.path.isfile(single):
        return TensorReader(_file_infos(single), origin=single)
    index = os.path.join(path, INDEX_NAME)
    if not os.path.isfile(index):
        present = sorted(os.listdir(path)) if os.path.isdir(path) else []
        hint = ""
        if any(n.endswith((".bin", ".pt", ".h5", ".msgpack")) for n in present):
            hint = (
                " Only safetensors checkpoints are read; convert the others with "
                "transformers: Model.from_pretrained(path).save_pretrained(path)."
            )
        raise FileNotFoundError(
            f"no {WEIGHTS_NAME} or {INDEX_NAME} in {path!r} (found: {present}).{hint}"
        )
    try:
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(
            f"{index!r} is not a sharded-checkpoint index with a 'weight_map' "
            f"{{key: shard_file}}: {err!r}"
        ) from err
    if not isinstance(weight_map, dict):
        raise ValueError(f"{index!r}: 'weight_map' must map keys to shard files.")
    infos: dict[str, TensorInfo] = {}
    for shard in dict.fromkeys(weight_map.values()):
        file = os.path.join(path, shard)
        if not os.path.isfile(file):
            raise FileNotFoundError(
                f"shard {shard!r} listed in {index!r} does not exist (missing shard file)."
            )
        for key, info in _file_infos(file).items():
            if weight_map.get(key, shard) == shard:
                infos[key] = info
    for key, shard in weight_map.items():
        if key not in infos or infos[key].file != os.path.join(path, shard):
            raise ValueError(f"{index!r} places {key!r} in {shard!r}, which does not hold it.")
    return TensorReader(infos, origin=index)


def parse_size(size: int | str) -> int:
    """Bytes in ``size``: an int, or a string such as ``"200MB"`` (10^6) or ``"1GiB"`` (2^30).

    Decimal units ``KB``/``MB``/``GB``/``TB`` as in ``huggingface_hub``'s
    ``parse_size_to_int`` and binary ``KiB``/``MiB``/``GiB``/``TiB`` as in
    ``transformers``' ``convert_file_size_to_int``; case-insensitive; the number
    may be fractional.

    Example:
      >>> parse_size("200MB"), parse_size("1MiB"), parse_size(4096)
      (200000000, 1048576, 4096)
    """
    if isinstance(size, bool) or not isinstance(size, (int, str)):
        raise TypeError(
            f"max_shard_size must be an int (bytes) or a str like '200MB', got {size!r}."
        )
    if isinstance(size, int):
        value = size
    else:
        text = size.strip().upper()
        unit = next((u for u in _SIZE_UNITS if text.endswith(u)), None)
        try:
            if unit is None:
                raise ValueError
            value = int(float(text[: -len(unit)].strip()) * _SIZE_UNITS[unit])
        except ValueError:
            raise ValueError(
                "max_shard_size must be an int (bytes) or a number with a unit KB, MB, GB, TB, "
                f"KiB, MiB, GiB or TiB (e.g. '200MB'), got {size!r}."
            ) from None
    if value <= 0:
        raise ValueError(f"max_shard_size must be positive, got {size!r}.")
    return value


def plan_shards(sizes: Sequence[tuple[str, int]], max_shard_size: int | None) -> list[list[str]]:
    """Groups ``(key, nbytes)`` into shards of at most ``max_shard_size`` bytes, greedily.

    The algorithm of ``huggingface_hub``'s ``split_state_dict_into_shards``: keys
    are added in order to the current shard, which is closed when the next key
    would overflow it; a key larger than the limit gets a shard of its own,
    placed before the current one.

    Example:
      >>> plan_shards([("a", 6), ("b", 6), ("c", 2), ("d", 12), ("e", 2)], 10)
      [['a'], ['d'], ['b', 'c', 'e']]
    """
    if max_shard_size is None:
        return [[k for k, _ in sizes]]
    shards: list[list[str]] = []
    current: list[str] = []
    current_size = 0
    for key, nbytes in sizes:
        if nbytes > max_shard_size:
            shards.append([key])
            continue
        if current and current_size + nbytes > max_shard_size:
            shards.append(current)
            current, current_size = [], 0
        current.append(key)
        current_size += nbytes
    if current or not shards:
        shards.append(current)
    return shards


def write_checkpoint(
    directory: str,
    sizes: Sequence[tuple[str, int]],
    produce: Callable[[str], np.ndarray],
    max_shard_size: int | None = None,
) -> list[str]:
    """Writes tensors as ``model.safetensors`` or as shards plus ``model.safetensors.index.json``.

    Args:
      directory: an existing directory. Weight files of an earlier save there
        (``model.safetensors``, the index, ``model-XXXXX-of-XXXXX.safetensors``)
        that this save does not rewrite are removed, as ``save_pretrained`` does,
        so that a stale file cannot shadow the new one.
      sizes: ``(key, nbytes)`` in the order to write.
      produce: returns the C-contiguous numpy array for a key; it is called one
        shard at a time.
      max_shard_size: the shard limit in bytes, or None for a single file.

    Returns:
      The names of the files written, relative to ``directory``.
    """
    save_file = _save_file()
    shards = plan_shards(sizes, max_shard_size)
    if len(shards) == 1:
        names = [WEIGHTS_NAME]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    written = set(names) | ({INDEX_NAME} if len(shards) > 1 else set())
    for name in os.listdir(directory):
        stale = name in (WEIGHTS_NAME, INDEX_NAME) or SHARD_PATTERN.match(name)
        if stale and name not in written:
            os.remove(os.path.join(directory, name))
    for name, keys in zip(names, shards):
        tensors = {}
        for key in keys:
            array = produce(key)
            if not array.flags.c_contiguous:
                raise ValueError(f"write_checkpoint: {key!r} is not C-contiguous.")
            tensors[key] = array
        save_file(tensors, os.path.join(directory, name), metadata={"format": "pt"})
        del tensors
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": int(sum(n for _, n in sizes))},
            "weight_map": {k: name for name, keys in zip(names, shards) for k in keys},
        }
        with open(os.path.join(directory, INDEX_NAME), "w", encoding="utf-8") as f:
            json.dump(index, f, indent=2, sort_keys=True)
            f.write("\n")
        names.append(INDEX_NAME)
    return names


def nbytes(shape: Sequence[int], dtype: Any) -> int:
    """Bytes of a dense array of ``shape`` and ``dtype``."""
    return math.prod(shape) * np.dtype(dtype).itemsize
