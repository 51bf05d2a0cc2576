"""Wire frames, I/O-free: length-prefixed msgpack with out-of-band tensor buffers.

A frame on the wire is::

    u32 big-endian  total length of what follows (header + buffers)
    u32 big-endian  header length
    header          msgpack (strict size limits; no ext types, no pickle)
    buffers         raw bytes of every tensor the header refers to, back to back

Tensors (and raw ``bytes`` fields too large to inline) travel as buffers: the header holds a
``{"__t": [dtype, shape, index]}`` placeholder and the bytes follow, so a 1 MB activation is
neither msgpack-escaped nor copied more than once on each side. ``FrameDecoder`` is a small
state machine in the style of h11: feed it bytes, take whole frames out; it raises
``FrameError`` on anything malformed or over the limits, and never allocates more than the
declared (and bounded) frame size.
"""

from __future__ import annotations

import gc
import struct
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import msgpack

from swarmlm.errors import SwarmError

_LEN = struct.Struct(">II")
PREFIX_BYTES = _LEN.size

# dtype names on the wire -> (torch dtype name, itemsize)
_DTYPES = {
    "f32": ("float32", 4), "f16": ("float16", 2), "bf16": ("bfloat16", 2),
    "i64": ("int64", 8), "i32": ("int32", 4), "u8": ("uint8", 1), "bool": ("bool", 1),
    "raw": ("bytes", 1),  # a large ``bytes`` value, carried out of band and decoded as bytes
}
INLINE_BYTES_MAX = 16 * 1024  # larger bytes travel out of band: headers stay small (untrusted peers: 32 KiB)
_TORCH_TO_WIRE = {v[0]: k for k, v in _DTYPES.items()}


class FrameError(SwarmError):
    """A frame that is malformed or breaks a limit; the peer gets an error frame or a reset."""


class HostileFrame(FrameError):
    """A frame no honest encoder writes: a header that does not decode (over a secure channel the
    bytes are exactly what the peer's encoder produced) or one past a cap that a peer without
    standing must keep (``net.rpc_server``: such a peer is refused at once, not after 8 strikes)."""


@dataclass(frozen=True)
class Limits:
    max_frame_bytes: int = 64 * 1024 * 1024
    max_header_bytes: int = 256 * 1024  # tensors and bytes over 16 KiB travel out of band, not in the header
    max_str_len: int = 1024 * 1024
    max_bin_len: int = 1024 * 1024
    max_array_len: int = 65536
    max_map_len: int = 4096
    max_buffers: int = 64
    max_tensor_dims: int = 8
    max_walk_nodes: int = 65536  # values visited looking for tensor placeholders, per frame
    read_timeout_s: float = 30.0  # a frame's body must arrive within this (+ its size at min_rate_bps)
    write_timeout_s: float = 30.0  # a peer must take a frame within this (+ its size at min_rate_bps)
    min_rate_bps: float = 256 * 1024

    def io_deadline(self, nbytes: int, base: float) -> float:
        """Seconds a frame of ``nbytes`` may take on the wire (trickling peers are cut off)."""
        return base + nbytes / self.min_rate_bps


DEFAULT_LIMITS = Limits()


def _torch():
    import torch  # lazy: torch takes ~1 s to import; frames without bfloat16 tensors never need it

    return torch


def _extract(obj: Any, buffers: list[Any], depth: int = 0) -> Any:
    """Replace tensors by placeholders, appending their raw bytes to ``buffers``."""
    if depth > 32:
        raise FrameError("value nests deeper than 32 levels")
    if isinstance(obj, dict):
        return {k: _extract(v, buffers, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_extract(v, buffers, depth + 1) for v in obj]
    if isinstance(obj, (bytes, bytearray, memoryview)) and memoryview(obj).nbytes > INLINE_BYTES_MAX:
        buffers.append(obj)
        return {"__t": ["raw", [memoryview(obj).nbytes], len(buffers) - 1]}
    if type(obj).__name__ == "Tensor" and type(obj).__module__.startswith("torch"):
        t = obj.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.contiguous()
        name = str(t.dtype).removeprefix("torch.")
        if name not in _TORCH_TO_WIRE:
            raise FrameError(f"tensor dtype {t.dtype} cannot travel on the wire")
        idx = len(buffers)
        if name == "bfloat16":  # numpy has no bfloat16: view the bits as int16
            t = t.view(_torch().int16)
        arr = t.numpy().reshape(-1)
        buffers.append(memoryview(arr.view("uint8")) if arr.size else b"")
        return {"__t": [_TORCH_TO_WIRE[name], list(t.shape), idx]}
    return obj


def encode_frame(obj: Any, limits: Limits = DEFAULT_LIMITS) -> list[bytes | memoryview]:
    """Encode a value (dicts, lists, scalars, str, bytes, tensors) as wire chunks to write in order."""
    buffers: list[Any] = []
    header_obj = _extract(obj, buffers)
    header = msgpack.packb(header_obj, use_bin_type=True)
    if len(header) > limits.max_header_bytes:
        raise FrameError(f"frame header of {len(header)} bytes exceeds {limits.max_header_bytes}")
    body = len(header) + sum(memoryview(b).nbytes for b in buffers)
    if body > limits.max_frame_bytes:
        raise FrameError(f"frame of {body} bytes exceeds the {limits.max_frame_bytes} byte limit")
    return [_LEN.pack(body, len(header)), header, *buffers]


def encode_frame_bytes(obj: Any, limits: Limits = DEFAULT_LIMITS) -> bytes:
    return b"".join(encode_frame(obj, limits))


def _restore(obj: Any, bufs: list[memoryview], limits: Limits, depth: int = 0) -> Any:
    if depth > 32:
        raise FrameError("frame nests deeper than 32 levels")
    if isinstance(obj, dict):
        if len(obj) == 1 and "__t" in obj:
            return _tensor_from(obj["__t"], bufs, limits)
        return {k: _restore(v, bufs, limits, depth + 1) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_restore(v, bufs, limits, depth + 1) for v in obj]
    return obj


def _tensor_from(spec: Any, bufs: list[memoryview], limits: Limits) -> Any:
    if not (isinstance(spec, list) and len(spec) == 3 and isinstance(spec[0], str)
            and isinstance(spec[1], list) and isinstance(spec[2], int)):
        raise FrameError("malformed tensor placeholder")
    dtype, shape, idx = spec
    if dtype not in _DTYPES:
        raise FrameError(f"unknown tensor dtype {dtype!r}")
    if len(shape) > limits.max_tensor_dims or not all(isinstance(d, int) and 0 <= d < 2**31 for d in shape):
        raise FrameError("malformed tensor shape")
    if not 0 <= idx < len(bufs):
        raise FrameError("tensor refers to a missing buffer")
    name, itemsize = _DTYPES[dtype]
    if dtype == "raw":
        if len(shape) != 1 or bufs[idx].nbytes != shape[0]:
            raise FrameError("raw buffer length mismatch")
        return bytes(bufs[idx])
    torch = _torch()
    numel = 1
    for d in shape:
        numel *= d
    buf = bufs[idx]
    if buf.nbytes != numel * itemsize:
        raise FrameError(f"tensor buffer has {buf.nbytes} bytes, shape {shape} of {dtype} needs {numel * itemsize}")
    if numel == 0:
        return torch.empty(shape, dtype=getattr(torch, name))
    if name == "bfloat16":
        return torch.frombuffer(buf, dtype=torch.int16).view(torch.bfloat16).reshape(shape)
    return torch.frombuffer(buf, dtype=getattr(torch, name)).reshape(shape)


_PLACEHOLDER = b"\xa3__t"  # the msgpack encoding of the placeholder key


@contextmanager
def _gc_paused():
    """Python's cyclic collector off while msgpack builds a header. A hostile header is one
    container per byte; each allocation counts toward a collection, and the containers (alive
    until the decode ends) get promoted until a *full* collection runs over the whole process
    (~260k objects in a node: torch, libp2p), 0.1-1 s of stalled event loop per few frames.
    msgpack output holds no reference cycles, so reference counting alone frees it."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class _ContainerCount:
    """msgpack's list and map hook: counts the containers a header builds and stops the decode
    past ``cap`` (a header of one empty list per byte is rejected after ``cap`` of them)."""

    def __init__(self, cap: int) -> None:
        self.left = cap

    def __call__(self, value: Any) -> Any:
        self.left -= 1
        if self.left < 0:
            raise ValueError("too many lists and maps")
        return value


def decode_body(body: bytearray | bytes, header_len: int, limits: Limits = DEFAULT_LIMITS,
                max_containers: int | None = None) -> Any:
    """Decode one frame body (header + buffers), checking every limit.

    Container limits are proportional to the header's size (an element takes at least one byte),
    and a header without a tensor placeholder is never walked in Python: the cost of a hostile
    header is one C-level msgpack decode of at most ``max_header_bytes``. ``max_containers`` (for
    peers without standing) caps the lists and maps of the whole header: the decode stops there,
    before the containers could outlive it and make the cyclic collector walk them."""
    if header_len > len(body) or header_len > limits.max_header_bytes:
        raise FrameError("frame header length out of range")
    view = memoryview(body)
    hooks: dict[str, Any] = {}
    if max_containers is not None:
        count = _ContainerCount(max_containers)
        hooks = {"list_hook": count, "object_hook": count}
    try:
        with _gc_paused():
            header = msgpack.unpackb(
                view[:header_len], raw=False, strict_map_key=True, use_list=True,
                max_str_len=min(limits.max_str_len, header_len), max_bin_len=min(limits.max_bin_len, header_len),
                max_array_len=min(limits.max_array_len, header_len),
                max_map_len=min(limits.max_map_len, header_len // 2), max_ext_len=0, **hooks,
            )
    except Exception as exc:  # msgpack raises ValueError, ExtraData, StackError, ...
        raise HostileFrame(f"frame header does not decode: {type(exc).__name__}: {exc}") from None
    if _PLACEHOLDER not in bytes(view[:header_len]):  # no tensors: nothing to walk
        if header_len != len(body):
            raise FrameError(f"{len(body) - header_len} stray bytes after the frame's header")
        return header
    # split buffers by walking placeholders in index order
    specs: dict[int, int] = {}
    budget = [limits.max_walk_nodes]
    _collect(header, specs, 0, budget)
    if len(specs) > limits.max_buffers:
        raise FrameError("too many tensors in one frame")
    bufs: list[memoryview] = []
    off = header_len
    for i in range(len(specs)):
        if i not in specs:
            raise FrameError("tensor buffer indices are not contiguous")
        n = specs[i]
        if n < 0 or off + n > len(body):
            raise FrameError("tensor buffers overrun the frame")
        bufs.append(view[off:off + n])
        off += n
    if off != len(body):
        raise FrameError(f"{len(body) - off} stray bytes after the frame's buffers")
    return _restore(header, bufs, limits)


def _collect(obj: Any, specs: dict[int, int], depth: int, budget: list[int]) -> None:
    if depth > 32:
        raise FrameError("frame nests deeper than 32 levels")
    budget[0] -= 1
    if budget[0] < 0:
        raise FrameError("frame header holds too many values next to its tensors")
    if isinstance(obj, dict):
        t = obj.get("__t") if len(obj) == 1 else None
        if t is not None:
            if not (isinstance(t, list) and len(t) == 3 and isinstance(t[0], str) and t[0] in _DTYPES
                    and isinstance(t[1], list)
                    and isinstance(t[2], int) and all(isinstance(d, int) and 0 <= d < 2**31 for d in t[1])):
                raise FrameError("malformed tensor placeholder")
            n = _DTYPES[t[0]][1]
            for d in t[1][:8]:
                n *= d
            if t[2] in specs:
                raise FrameError("two tensors share one buffer index")
            specs[t[2]] = n
            return
        for v in obj.values():
            _collect(v, specs, depth + 1, budget)
    elif isinstance(obj, list):
        for v in obj:
            _collect(v, specs, depth + 1, budget)


class FrameDecoder:
    """Feed bytes in, take decoded frames out. Raises FrameError on bad input (then discard it)."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def needed(self) -> int:
        """How many more bytes the next frame needs (at least 1 when nothing is known yet)."""
        if len(self._buf) < PREFIX_BYTES:
            return PREFIX_BYTES - len(self._buf)
        total, _ = _LEN.unpack_from(self._buf)
        return max(0, PREFIX_BYTES + total - len(self._buf))

    def next_frame(self) -> tuple[bool, Any]:
        """(True, value) when a whole frame is buffered, else (False, None)."""
        if len(self._buf) < PREFIX_BYTES:
            return False, None
        total, header_len = _LEN.unpack_from(self._buf)
        if total > self.limits.max_frame_bytes:
            raise FrameError(f"frame of {total} bytes exceeds the {self.limits.max_frame_bytes} byte limit")
        if header_len > total:
            raise FrameError("frame header is longer than the frame")
        if len(self._buf) < PREFIX_BYTES + total:
            return False, None
        body = self._buf[PREFIX_BYTES:PREFIX_BYTES + total]
        del self._buf[:PREFIX_BYTES + total]
        return True, decode_body(body, header_len, self.limits)
