"""A PNG writer for finished images: rows filtered with numpy, deflated on several threads.

A worker encodes every image it makes before it can store it, and Pillow's PNG writer was a
visible part of a job on a GPU: it chooses a filter for each row in C and deflates the whole image
on one thread, 78 ms of an SDXL job's 1.15 s on the H100 host and 104 ms for a 1024x1024 image on
a 2-core machine. This writer:

- filters every row with PNG's ``Up`` filter (the byte above subtracted), one vectorized numpy
  subtraction. Choosing per row among None, Sub and Up, as Pillow does, cost 30 ms more for a 2%
  smaller file; Paeth in numpy cost 45-85 ms. Against Pillow's files, ``Up`` alone is 0-6% larger;
- deflates the filtered bytes in ``SLICE_BYTES`` slices on a thread pool (zlib releases the GIL),
  with zlib's Huffman-only strategy (no match search: on images most of its time went there for
  0-4% smaller files). Each slice but the last ends on a full flush, which byte-aligns it and resets
  the compressor's state, so the slices concatenate into one valid deflate stream, the way ``pigz``
  parallelizes gzip. The Adler-32 checksum of the whole is computed once;
- writes text chunks as Pillow's ``PngInfo.add_text`` does (``tEXt`` when key and value are
  Latin-1, else an uncompressed UTF-8 ``iTXt``), so readers find the same ``text`` entries.

Images of mode ``L``, ``RGB`` and ``RGBA`` (8 bits a channel) are written; ``encode_png`` raises
``ValueError`` for others, which callers hand to Pillow.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from threading import Lock

import numpy as np
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: PNG colour type and channels of each Pillow mode written here.
COLOUR_TYPES = {"L": (0, 1), "RGB": (2, 3), "RGBA": (6, 4)}
#: The filter type byte that starts every row: Up.
FILTER_UP = 2
#: Bytes deflated by one task: large enough that a slice's flush and Huffman table cost nothing
#: measurable (under 0.1% of the size), small enough that a 512x512 image spreads over 2 threads.
SLICE_BYTES = 512 * 1024
#: Threads that deflate: a worker encodes while the next job generates, so not every core.
DEFLATE_THREADS = max(1, min(4, os.cpu_count() or 1))
#: zlib's compression level; with the Huffman-only strategy it only sizes internal buffers.
ZLIB_LEVEL = 6

_pool: ThreadPoolExecutor | None = None
_pool_lock = Lock()


def encode_png(image: Image.Image, text: Iterable[tuple[str, str]] = ()) -> bytes:
    """``image`` (mode L, RGB or RGBA) as PNG bytes, with ``text`` as text chunks in that order."""
    if image.mode not in COLOUR_TYPES:
        raise ValueError(f"encode_png writes modes {sorted(COLOUR_TYPES)}, not {image.mode!r}")
    colour_type, channels = COLOUR_TYPES[image.mode]
    pixels = np.asarray(image, dtype=np.uint8).reshape(image.height, image.width * channels)
    header = struct.pack(">IIBBBBB", image.width, image.height, 8, colour_type, 0, 0, 0)
    chunks = [_chunk(b"IHDR", header)]
    chunks.extend(_text_chunk(key, value) for key, value in text)
    chunks.append(_chunk(b"IDAT", deflate(filter_rows(pixels))))
    chunks.append(_chunk(b"IEND", b""))
    return PNG_SIGNATURE + b"".join(chunks)


def filter_rows(pixels: np.ndarray) -> bytes:
    """The scanlines of ``pixels`` (height x row bytes, uint8), each filtered with Up and led by its
    filter type byte: the data PNG deflates."""
    height, row_bytes = pixels.shape
    rows = np.empty((height, row_bytes + 1), dtype=np.uint8)
    rows[:, 0] = FILTER_UP
    rows[0, 1:] = pixels[0]  # above the first row is zero
    np.subtract(pixels[1:], pixels[:-1], out=rows[1:, 1:])  # modulo 256, as the filter defines
    return rows.tobytes()


def deflate(data: bytes) -> bytes:
    """``data`` as one zlib stream, its slices compressed in parallel."""
    slices = [data[start : start + SLICE_BYTES] for start in range(0, len(data), SLICE_BYTES)] or [b""]
    finals = [index == len(slices) - 1 for index in range(len(slices))]
    bodies = list(_deflate_pool().map(_deflate_slice, slices, finals))
    # zlib header: deflate, 32 KiB window, no preset dictionary, "fastest" level hint; checked by
    # readers only as a multiple of 31 (0x7801 is).
    return b"\x78\x01" + b"".join(bodies) + struct.pack(">I", zlib.adler32(data))


def _deflate_slice(data: bytes, final: bool) -> bytes:
    compressor = zlib.compressobj(ZLIB_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS, 8, zlib.Z_HUFFMAN_ONLY)
    return compressor.compress(data) + compressor.flush(zlib.Z_FINISH if final else zlib.Z_FULL_FLUSH)


def _deflate_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(DEFLATE_THREADS, thread_name_prefix="png-deflate")
        return _pool


def _forget_pool_after_fork() -> None:
    """A forked child has none of the parent's threads: it makes a pool of its own when it needs one."""
    global _pool, _pool_lock
    _pool, _pool_lock = None, Lock()


os.register_at_fork(after_in_child=_forget_pool_after_fork)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def _text_chunk(key: str, value: str) -> bytes:
    """``tEXt`` for Latin-1 text, else uncompressed ``iTXt`` (UTF-8): as Pillow's ``add_text``."""
    keyword = key.encode("latin-1")  # PNG keywords are Latin-1; ours are fixed ASCII names
    try:
        return _chunk(b"tEXt", keyword + b"\0" + value.encode("latin-1"))
    except UnicodeEncodeError:
        # keyword, compression flag and method (none), empty language tag and translated keyword
        return _chunk(b"iTXt", keyword + b"\0\0\0" + b"\0" + b"\0" + value.encode("utf-8"))
