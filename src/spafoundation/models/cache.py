"""On-disk cache of spot embeddings: atomic, chunked and resumable.

An entry is a folder named by a hash of everything the embeddings depend on: the slide file (resolved path,
size, mtime), pixel size, spot coordinates, encoder identity (name + weights hash), patch geometry, TTA and the
stain normalisation (method and reference digest; absent without one, so entries made before it stay valid).
Chunks of ``CHUNK`` spots are written as they finish (temp file + rename), so a killed run resumes from the last
complete chunk; when all are done they are merged into one ``embeddings.npz`` and the chunks are removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import numpy as np

from spafoundation.errors import InputError
from spafoundation.utils.atomic import atomic_path

CACHE_VERSION = 2  # bump when embeddings or tissue fractions change for the same inputs (2: masked glass is no tissue)
CHUNK = 256
COMPLETE = "embeddings.npz"
META = "meta.json"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``sf.settings.cache_dir``, else ``$SPAFOUNDATION_CACHE``, else ``~/.cache/spafoundation``;
    an InputError naming where it came from when it (or a folder on its path) is a file."""
    from spafoundation._settings import settings

    env = os.environ.get("SPAFOUNDATION_CACHE")
    if cache_dir:
        root, source = Path(cache_dir).expanduser(), "--cache-dir"
    elif settings.cache_dir:
        root, source = Path(settings.cache_dir).expanduser(), "sf.settings.cache_dir"
    elif env:
        root, source = Path(env).expanduser(), "$SPAFOUNDATION_CACHE"
    else:
        root, source = Path.home() / ".cache" / "spafoundation", "cache folder"
    for p in (root, *root.parents):
        if p.exists():
            if not p.is_dir():
                raise InputError(p, source, f"is a file, not a folder{'' if p == root else f' (on the path {root})'}: "
                                 "the embedding cache needs a folder")
            break
    return root


def slide_identity(path: str | os.PathLike, scale: float = 1.0) -> dict:
    """Resolved path, size and modification time of an image file (an InputError when it is missing), and its
    scale where it is a downscaled copy read in the full-resolution frame (``io/downscaled.py``): the same file at
    another scale gives other patches."""
    p = Path(path).resolve()
    try:
        st = p.stat()
    except FileNotFoundError:
        raise InputError(path, "image", "file not found") from None
    identity = {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return identity if scale == 1.0 else {**identity, "scale": round(float(scale), 9)}


def coords_digest(xy: np.ndarray) -> str:
    """A digest of spot coordinates (as float64), for cache keys."""
    return hashlib.sha256(np.ascontiguousarray(np.asarray(xy, dtype=np.float64)).tobytes()).hexdigest()


def cache_key(desc: dict) -> str:
    """The entry name of everything an output depends on (a JSON-able dict)."""
    return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:32]


def stain_key(reference) -> dict:
    """The part of a cache key that a stain normalisation adds (``io.stain.StainReference``): nothing without one."""
    return {} if reference is None else {"stain": {"method": reference.method, "reference": reference.digest()}}


def embedding_key(*, slide: dict, mpp: float, xy: np.ndarray, encoder: str, patch_um: float, input_size: int,
                  tta: bool, stain=None) -> str:
    """The entry name of a section's embeddings (``stain``: the ``StainReference`` its patches were normalised to)."""
    desc = {
        "version": CACHE_VERSION,
        "slide": slide,
        "mpp": round(float(mpp), 9),
        "coords": coords_digest(xy),
        "n": len(xy),
        "encoder": encoder,
        "patch_um": round(float(patch_um), 6),
        "input_size": int(input_size),
        "tta": bool(tta),
        **stain_key(stain),
    }
    return cache_key(desc)


def save_npz(path: Path, **arrays) -> None:
    """``np.savez`` to a temporary name, then renamed: a reader never sees half a file."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def load_npz(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """The arrays ``keys`` of a cache file, or None when it is absent, damaged or lacks one (then the caller
    recomputes it)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in keys}
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError):  # FileNotFoundError is an OSError
        return None


def _load_npz(path: Path, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(embeddings, tissue_fraction) with ``n`` rows, or None when absent, unreadable or of the wrong shape."""
    z = load_npz(path, ("embeddings", "tissue_fraction"))
    if z is None:
        return None
    emb, tf = z["embeddings"], z["tissue_fraction"]
    if emb.ndim != 2 or len(emb) != n or tf.shape != (n,) or not np.isfinite(emb).all():
        return None
    return emb, tf


class EmbeddingCache:
    """One cache entry: ``n`` spots in chunks of ``CHUNK``."""

    def __init__(self, root: str | os.PathLike, key: str, n: int, meta: dict | None = None):
        self.dir = Path(root) / "embeddings" / key
        self.key, self.n, self.meta = key, n, dict(meta or {})

    @property
    def n_chunks(self) -> int:
        return (self.n + CHUNK - 1) // CHUNK

    def chunk_slice(self, i: int) -> slice:
        return slice(i * CHUNK, min((i + 1) * CHUNK, self.n))

    def _chunk_path(self, i: int) -> Path:
        return self.dir / f"chunk_{i:06d}.npz"

    def load(self) -> tuple[np.ndarray, np.ndarray] | None:
        return _load_npz(self.dir / COMPLETE, self.n)

    def load_chunk(self, i: int) -> tuple[np.ndarray, np.ndarray] | None:
        s = self.chunk_slice(i)
        return _load_npz(self._chunk_path(i), s.stop - s.start)

    def save_chunk(self, i: int, embeddings: np.ndarray, tissue_fraction: np.ndarray) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        save_npz(self._chunk_path(i), embeddings=embeddings, tissue_fraction=tissue_fraction)

    def finalize(self, embeddings: np.ndarray, tissue_fraction: np.ndarray) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.dir / META) as tmp:
            tmp.write_text(json.dumps(self.meta, indent=2, default=str))
        save_npz(self.dir / COMPLETE, embeddings=embeddings, tissue_fraction=tissue_fraction)
        for i in range(self.n_chunks):
            self._chunk_path(i).unlink(missing_ok=True)
