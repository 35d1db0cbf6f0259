"""Load a CLIP model once and turn batches of images and captions into embeddings and scores.

    >>> clip = load_clip("paircurate-tiny", "paircurate-tiny")      # bundled test model
    >>> clip = load_clip("ViT-B-32", "laion2b_s34b_b79k")            # from the local HF cache
    >>> clip = load_clip("ViT-B-32", "/models/vit_b32.safetensors")  # a checkpoint file
    >>> clip = load_clip("ViT-B-32", "local-dir:/models/vit_b32")    # open_clip_config.json + weights
    >>> sims = clip.score(images, captions)       # float32 cosine per (image, caption) row

Every caller (pipeline, demo, tests, benchmarks) goes through :func:`load_clip`,
so all of them build the model the same way: ``open_clip.create_model_and_transforms``
with a checkpoint *file* that has already been found on disk.

Weights on first use: :func:`resolve_weights` looks a pretrained tag or an
``hf-hub:`` repo up in the Hugging Face cache (``HF_HOME`` / ``HF_HUB_CACHE``)
first and, unless offline (``offline=True`` or ``HF_HUB_OFFLINE=1``), fetches
the missing files from ``HF_ENDPOINT`` with ``huggingface_hub.hf_hub_download``
(progress bar, ``HF_TOKEN``, the standard cache layout). Before that it asks
the hub once, with a short timeout and no retries, whether the file is there:
huggingface_hub itself retries an unreachable endpoint for ~23 s per file, and
open_clip tries two file names per tag. The pipeline calls it on the driver
before the run starts, so workers find the files in the cache.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from paircurate.filters.similarity import TINY_MODEL
from PIL import Image

log = logging.getLogger(__name__)

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
TINY_CONFIG_PATH = ASSETS_DIR / f"{TINY_MODEL}.json"  # open_clip names a config after its file stem
TINY_CHECKPOINT_PATH = ASSETS_DIR / "paircurate_tiny.safetensors"

LOCAL_DIR_PREFIX = "local-dir:"
HF_HUB_PREFIX = "hf-hub:"
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")

# open_clip's names for the files of an HF-hub style model folder.
_HF_CONFIG_NAME = "open_clip_config.json"
_HF_WEIGHTS_NAME = "open_clip_pytorch_model.bin"
_HF_SAFE_WEIGHTS_NAME = "open_clip_model.safetensors"


# One request, no retries: long enough for a slow hub, short enough to fail fast.
PROBE_TIMEOUT_S = 5.0
_TRUE_VALUES = {"1", "on", "yes", "true"}


class ModelLoadError(RuntimeError):
    """A CLIP model or its weights could not be found or loaded.

    The first line of the message says what and how to fix it (the command
    line prints only that line); further lines, if any, list every way to
    provide weights.
    """


def hub_offline(offline: bool = False) -> bool:
    """True when nothing may be fetched: ``offline`` asked for, or ``HF_HUB_OFFLINE`` set as huggingface_hub reads it."""
    return offline or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE_VALUES


def hub_endpoint() -> str:
    """The hub that files are fetched from (``HF_ENDPOINT``, else huggingface.co)."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def register_tiny_config() -> None:
    """Make ``paircurate-tiny`` a model name that open_clip knows; safe to call twice."""
    if TINY_MODEL not in open_clip.list_models():
        open_clip.add_model_config(TINY_CONFIG_PATH)


register_tiny_config()


@dataclass
class ClipModel:
    """A loaded CLIP model with the preprocessing and tokenizer that belong to it.

        >>> clip = load_clip("paircurate-tiny", "paircurate-tiny")
        >>> img = clip.encode_images([Image.new("RGB", (64, 64), "red")])   # (1, 128) float32
        >>> clip.score([Image.new("RGB", (64, 64), "red")], ["a red square"])

    Not picklable: build it in a DoFn's ``setup()``, not in its constructor.
    """

    model: torch.nn.Module
    preprocess: Callable[[Image.Image], torch.Tensor]
    tokenizer: Callable[[list[str]], torch.Tensor]
    device: torch.device
    autocast_dtype: torch.dtype | None = None  # None: plain fp32
    model_name: str = ""
    pretrained: str | None = None
    batch_size: int = 256  # caps memory when a caller hands over a huge list
    weights_id: str = ""  # these exact weights on this machine (see weights_identity); '' for random ones
    embed_dim: int = field(init=False)

    def __post_init__(self) -> None:
        self.model.eval()
        self.embed_dim = int(getattr(self.model.visual, "output_dim", 0) or 0)

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """L2-normalised image embeddings, float32 array of shape ``(len(images), embed_dim)``."""
        chunks = []
        for start in range(0, len(images), self.batch_size):
            batch = torch.stack([self.preprocess(im) for im in images[start : start + self.batch_size]])
            if self.device.type == "cuda":
                batch = batch.pin_memory()  # page-locked, so the copy below really is asynchronous
            pixels = batch.to(self.device, non_blocking=True)
            with torch.inference_mode(), self._autocast():
                features = self.model.encode_image(pixels)
            chunks.append(self._normalise(features))
        return self._concat(chunks)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised text embeddings, float32 array of shape ``(len(texts), embed_dim)``."""
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(list(texts[start : start + self.batch_size])).to(self.device, non_blocking=True)
            with torch.inference_mode(), self._autocast():
                features = self.model.encode_text(tokens)
            chunks.append(self._normalise(features))
        return self._concat(chunks)

    def score(self, images: Sequence[Image.Image], texts: Sequence[str]) -> np.ndarray:
        """Cosine similarity of ``images[i]`` with ``texts[i]`` for every i, float32 of shape ``(n,)``."""
        if len(images) != len(texts):
            raise ValueError(f"score() needs one caption per image, got {len(images)} images and {len(texts)} texts")
        image_emb = self.encode_images(images)
        text_emb = self.encode_texts(texts)
        return np.einsum("ij,ij->i", image_emb, text_emb).astype(np.float32, copy=False)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    @staticmethod
    def _normalise(features: torch.Tensor) -> np.ndarray:
        # Normalise in fp32: under fp16 autocast the raw features are half
        # precision, and their squared norms can lose the low-order digits.
        return F.normalize(features.float(), dim=-1).cpu().numpy()

    def _concat(self, chunks: list[np.ndarray]) -> np.ndarray:
        if not chunks:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        return np.concatenate(chunks).astype(np.float32, copy=False)


def load_clip(
    model_name: str,
    pretrained: str | None,
    device: str = "auto",
    precision: str = "auto",
    *,
    cache_dir: str | None = None,
    allow_download: bool = False,
    batch_size: int = 256,
) -> ClipModel:
    """Build a CLIP model for inference, from the local cache (or fetched first when ``allow_download``).

    ``pretrained`` is one of
      - an open_clip pretrained tag (``"laion2b_s34b_b79k"``), found in the HF hub
        cache (``HF_HUB_CACHE``, or ``cache_dir``) or open_clip's ``~/.cache/clip``;
      - a checkpoint file (``.safetensors``, ``.pt``, ``.pth``, ``.bin``);
      - ``"local-dir:/folder"`` holding ``open_clip_config.json`` and the weights
        (``model_name`` is then only a label);
      - ``"hf-hub:org/repo"``, used only if that repo is already in the HF cache;
      - ``"paircurate-tiny"``, the checkpoint in ``embeddings/assets/``;
      - ``None`` for random weights (benchmarks and tests only).

    ``device``: ``"auto"`` takes CUDA when present; ``"cuda"`` without a GPU
    raises :class:`ModelLoadError`. ``precision``: ``"auto"`` runs CUDA
    under bf16 (fp16 where bf16 is unsupported) autocast and CPU in fp32;
    ``"fp16"``/``"bf16"`` force that autocast dtype, ``"fp32"`` disables it.
    The weights stay fp32 either way. ``allow_download=True`` fetches a tag or
    ``hf-hub:`` repo that is not cached yet (see :func:`resolve_weights`);
    it is ignored under ``HF_HUB_OFFLINE=1``.

        >>> clip = load_clip("paircurate-tiny", "paircurate-tiny", device="cpu")
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    torch_device = _pick_device(device)
    autocast_dtype = _pick_autocast(torch_device, precision)

    if pretrained is None and model_name.startswith((LOCAL_DIR_PREFIX, HF_HUB_PREFIX)):
        model_name, pretrained = "", model_name
    source = resolve_weights(model_name, pretrained, cache_dir=cache_dir, offline=not allow_download)

    log.info("loading CLIP %s from %s on %s (autocast %s)", source.open_clip_name, source.describe(),
             torch_device, autocast_dtype or "off")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            source.open_clip_name,
            pretrained=source.checkpoint,
            device=torch_device,
            precision="fp32",
            cache_dir=cache_dir,
            # Base text-tower weights would be a download; we only ever want full CLIP checkpoints.
            pretrained_text=False,
            **source.create_kwargs,
        )
        tokenizer = open_clip.get_tokenizer(source.open_clip_name, cache_dir=cache_dir)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"could not build CLIP model {source.open_clip_name!r} from {source.describe()}: "
            f"{type(exc).__name__}: {exc}\n{_how_to_provide(model_name)}"
        ) from exc
    return ClipModel(
        model=model,
        preprocess=preprocess,
        tokenizer=tokenizer,
        device=torch_device,
        autocast_dtype=autocast_dtype,
        model_name=model_name or source.open_clip_name,
        pretrained=pretrained,
        batch_size=batch_size,
        weights_id=weights_identity(source),
    )


def weights_identity(source: WeightSource) -> str:
    """A string that changes whenever the weights a model is built from change; '' for random weights.

    Path, size and modification time of each weights file: enough to key
    what is derived from the weights (label embeddings) without hashing
    hundreds of megabytes in every worker.
    """
    if source.checkpoint:
        files = [Path(source.checkpoint)]
    elif source.open_clip_name.startswith(LOCAL_DIR_PREFIX):
        folder = Path(source.open_clip_name[len(LOCAL_DIR_PREFIX):])
        files = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    else:
        return ""
    if not files:
        return ""
    parts = [source.open_clip_name]
    for path in files:
        try:
            stat = path.stat()
        except OSError:
            return ""
        parts.append(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}")
    return "|".join(parts)


def is_cached(model_name: str, pretrained: str, cache_dir: str | None = None) -> bool:
    """Whether the weights of a built-in tag (or the bundled model) are on this machine; never touches the network."""
    if pretrained == TINY_MODEL:
        return TINY_CHECKPOINT_PATH.is_file()
    tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    return bool(tag_cfg) and _cached_tag_file(tag_cfg, cache_dir) is not None


@dataclass(frozen=True)
class WeightSource:
    """Where a model's weights lie on this machine, and how open_clip is to build it."""

    open_clip_name: str  # what create_model_and_transforms gets as model_name
    checkpoint: str | None  # a file on disk, or None (random init / weights inside a local-dir)
    create_kwargs: dict[str, Any] = field(default_factory=dict)
    origin: str = ""
    downloaded: bool = False  # fetched by this call (False: found on disk)

    def describe(self) -> str:
        return self.origin or (self.checkpoint or "random initialisation")

    @property
    def embed_dim(self) -> int:
        """Size of the image embedding, read from the model config (no model is built)."""
        if self.open_clip_name.startswith(LOCAL_DIR_PREFIX):
            folder = Path(self.open_clip_name[len(LOCAL_DIR_PREFIX):])
            config = json.loads((folder / _HF_CONFIG_NAME).read_text()).get("model_cfg", {})
        else:
            config = open_clip.get_model_config(self.open_clip_name) or {}
        return int(config.get("embed_dim", 0))


def resolve_weights(model_name: str, pretrained: str | None, *, cache_dir: str | None = None,
                    offline: bool = False, timeout: float = PROBE_TIMEOUT_S) -> WeightSource:
    """Find the weights on this machine, fetching them into the HF cache on first use.

    Offline (``offline=True`` or ``HF_HUB_OFFLINE=1``) nothing is requested
    from the network: a cache miss raises :class:`ModelLoadError`. Online, a
    miss is fetched from ``HF_ENDPOINT`` after one short probe request, so an
    unreachable hub or a missing file fails within ``timeout`` seconds.

        >>> resolve_weights("ViT-B-32", "laion2b_s34b_b79k").checkpoint   # downloads once, then cached
    """
    return _resolve_weights(model_name, pretrained, cache_dir, not hub_offline(offline), timeout)


def _resolve_weights(model_name: str, pretrained: str | None, cache_dir: str | None,
                     allow_download: bool, timeout: float = PROBE_TIMEOUT_S) -> WeightSource:
    if not pretrained:
        model_name = model_name.replace("/", "-")
        _require_known_model(model_name)
        log.warning("no pretrained weights requested for CLIP %s: using random initialisation", model_name)
        return WeightSource(model_name, None, origin="random initialisation")
    if pretrained.startswith(LOCAL_DIR_PREFIX):
        return _local_dir_source(pretrained[len(LOCAL_DIR_PREFIX):], origin=pretrained)
    if pretrained.startswith(HF_HUB_PREFIX):
        return _hf_hub_source(pretrained[len(HF_HUB_PREFIX):], cache_dir, allow_download, timeout)
    if pretrained == TINY_MODEL:
        if model_name != TINY_MODEL:
            raise ModelLoadError(f"pretrained={TINY_MODEL!r} only fits model_name={TINY_MODEL!r}, got {model_name!r}")
        if not TINY_CHECKPOINT_PATH.is_file():
            raise ModelLoadError(
                f"the bundled {TINY_MODEL} checkpoint is missing: {TINY_CHECKPOINT_PATH}; rebuild it with "
                f"`python -m paircurate.embeddings.train_tiny --out {TINY_CHECKPOINT_PATH}`"
            )
        return WeightSource(TINY_MODEL, str(TINY_CHECKPOINT_PATH))

    model_name = model_name.replace("/", "-")  # "ViT-B/32" is open_clip's "ViT-B-32"
    _require_known_model(model_name)
    if os.path.isfile(pretrained):
        return WeightSource(model_name, pretrained)
    if _looks_like_path(pretrained):
        raise ModelLoadError(f"checkpoint file not found: {pretrained}\n{_how_to_provide(model_name)}")

    tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not tag_cfg:
        known = open_clip.list_pretrained_tags_by_model(model_name)
        raise ModelLoadError(
            f"{pretrained!r} is neither a file nor a known open_clip pretrained tag for {model_name!r} "
            f"(known tags: {', '.join(known) or 'none'})\n{_how_to_provide(model_name)}"
        )
    kwargs = _tag_create_kwargs(model_name, tag_cfg)
    cached = _cached_tag_file(tag_cfg, cache_dir)
    if cached is not None:
        return WeightSource(model_name, cached, kwargs, origin=f"tag {pretrained!r} ({cached})")
    hub = tag_cfg.get("hf_hub") or ""
    label = f"CLIP {model_name} / {pretrained}"
    if allow_download and hub:
        repo_id, filename = os.path.split(hub)
        found = _fetch_from_hub(repo_id, _hub_weight_names(filename or _HF_WEIGHTS_NAME), cache_dir, timeout, label)
        return WeightSource(model_name, found, kwargs, origin=f"tag {pretrained!r} ({found})", downloaded=True)
    wanted = hub or tag_cfg.get("url") or "?"
    why = "offline (--offline or HF_HUB_OFFLINE=1)" if hub else "it has no hub location"
    raise ModelLoadError(
        f"weights for {label} are not in the local cache ({wanted} in {_cache_label(cache_dir)}) and {why}: "
        f"run once with network (without --offline) to fetch them, or give a checkpoint file or local-dir:\n"
        f"{_how_to_provide(model_name, tag_cfg)}"
    )


def _local_dir_source(folder: str, origin: str) -> WeightSource:
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise ModelLoadError(f"{origin}: folder not found\n{_how_to_provide('')}")
    if not (path / _HF_CONFIG_NAME).is_file():
        raise ModelLoadError(f"{origin}: {path / _HF_CONFIG_NAME} is missing\n{_how_to_provide('')}")
    weights = [p.name for p in path.iterdir() if p.suffix in CHECKPOINT_SUFFIXES]
    if not weights:
        # open_clip would build a randomly initialised model here with only a warning.
        raise ModelLoadError(
            f"{origin}: no weights file ({', '.join(CHECKPOINT_SUFFIXES)}) next to {_HF_CONFIG_NAME}\n"
            f"{_how_to_provide('')}"
        )
    return WeightSource(f"{LOCAL_DIR_PREFIX}{path}", None, origin=f"{origin} ({', '.join(sorted(weights))})")


def _hf_hub_source(repo_id: str, cache_dir: str | None, allow_download: bool, timeout: float) -> WeightSource:
    # open_clip's own hf-hub: path asks the Hub on every load; instead use the
    # cached snapshot folder, which has exactly the local-dir: layout.
    config = _hf_cached(repo_id, _HF_CONFIG_NAME, cache_dir)
    weights = next((w for w in (_HF_SAFE_WEIGHTS_NAME, _HF_WEIGHTS_NAME) if _hf_cached(repo_id, w, cache_dir)), None)
    downloaded = False
    if config is None or weights is None:
        label = f"CLIP hf-hub:{repo_id}"
        if not allow_download:
            raise ModelLoadError(
                f"weights for {label} are not in the local cache ({_cache_label(cache_dir)}) and offline "
                f"(--offline or HF_HUB_OFFLINE=1): run once with network to fetch them, or give local-dir:\n"
                f"{_how_to_provide('')}"
            )
        config = _fetch_from_hub(repo_id, [_HF_CONFIG_NAME], cache_dir, timeout, label)
        _fetch_from_hub(repo_id, [_HF_SAFE_WEIGHTS_NAME, _HF_WEIGHTS_NAME], cache_dir, timeout, label)
        downloaded = True
    source = _local_dir_source(str(Path(config).parent), origin=f"hf-hub:{repo_id}")
    return dataclasses.replace(source, downloaded=downloaded)


def _fetch_from_hub(repo_id: str, names: list[str], cache_dir: str | None, timeout: float, label: str) -> str:
    """Download the first of ``names`` the hub has into the HF cache; ModelLoadError within ~``timeout`` s otherwise."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.errors import EntryNotFoundError, GatedRepoError, RepositoryNotFoundError

    endpoint = hub_endpoint()
    for name in names:
        cached = _hf_cached(repo_id, name, cache_dir)
        if cached:
            return cached
        url = hf_hub_url(repo_id, name, endpoint=endpoint)
        try:
            # One HEAD, no retries: says quickly whether the hub answers and has the file.
            get_hf_file_metadata(url, timeout=timeout, retry_on_errors=False)
        except EntryNotFoundError:
            continue  # open_clip's next file name for the same weights
        except GatedRepoError as exc:
            raise ModelLoadError(f"weights for {label}: {repo_id} on {endpoint} is gated; accept its terms on the hub "
                                 f"and set HF_TOKEN ({type(exc).__name__})") from exc
        except RepositoryNotFoundError as exc:
            raise ModelLoadError(f"weights for {label}: repository {repo_id} not found on {endpoint} "
                                 f"(private repositories need HF_TOKEN)") from exc
        except Exception as exc:
            status = getattr(getattr(exc, "response", None), "status_code", None)
            if status is not None:
                raise ModelLoadError(f"weights for {label}: {endpoint} answered HTTP {status} for {repo_id}/{name}; "
                                     "check HF_TOKEN and HF_ENDPOINT, or try again later") from exc
            raise ModelLoadError(
                f"weights for {label}: cannot reach {endpoint} to fetch {repo_id}/{name} "
                f"({type(exc).__name__}: {_first_line(exc)}); check the network or HF_ENDPOINT, "
                f"or use --offline with weights already in {_cache_label(cache_dir)}"
            ) from exc
        log.warning("downloading %s: %s/%s from %s into %s", label, repo_id, name, endpoint, _cache_label(cache_dir))
        try:
            return hf_hub_download(repo_id, name, cache_dir=cache_dir, endpoint=endpoint, etag_timeout=timeout)
        except Exception as exc:
            raise ModelLoadError(f"weights for {label}: download of {repo_id}/{name} from {endpoint} failed "
                                 f"({type(exc).__name__}: {_first_line(exc)})") from exc
    raise ModelLoadError(f"weights for {label}: {repo_id} on {endpoint} has none of {', '.join(names)}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""


def _cache_label(cache_dir: str | None) -> str:
    if cache_dir:
        return cache_dir
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE


def _tag_create_kwargs(model_name: str, tag_cfg: dict) -> dict[str, Any]:
    # Passing a file path makes open_clip skip the tag's own settings, so carry them over.
    kwargs: dict[str, Any] = {}
    for key, arg in (("mean", "image_mean"), ("std", "image_std"),
                     ("interpolation", "image_interpolation"), ("resize_mode", "image_resize_mode")):
        if key in tag_cfg:
            kwargs[arg] = tag_cfg[key]
    model_cfg = open_clip.get_model_config(model_name) or {}
    if tag_cfg.get("quick_gelu") and not model_cfg.get("quick_gelu"):
        # OpenAI's weights were trained with QuickGELU; open_clip only warns and
        # runs them with GELU under the plain name, which shifts every score.
        log.info("pretrained weights for %s use QuickGELU: enabling it", model_name)
        kwargs["force_quick_gelu"] = True
    return kwargs


def _cached_tag_file(tag_cfg: dict, cache_dir: str | None) -> str | None:
    if "file" in tag_cfg and os.path.isfile(tag_cfg["file"]):
        return tag_cfg["file"]
    hub = tag_cfg.get("hf_hub", "")
    if hub:
        # "org/repo/" means the repo's default weights file, "org/repo/file.bin" that file.
        repo_id, filename = os.path.split(hub)
        for name in _hub_weight_names(filename or _HF_WEIGHTS_NAME):
            found = _hf_cached(repo_id, name, cache_dir)
            if found:
                return found
    url = tag_cfg.get("url", "")
    if url:
        candidate = Path(cache_dir or os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if candidate.is_file():
            return str(candidate)
    return None


def _hub_weight_names(filename: str) -> list[str]:
    # Same preference as open_clip's downloader: a safetensors twin first.
    names = []
    if filename == _HF_WEIGHTS_NAME:
        names.append(_HF_SAFE_WEIGHTS_NAME)
    elif filename.endswith((".bin", ".pth")):
        names.append(filename[:-4] + ".safetensors")
    names.append(filename)
    return names


def _hf_cached(repo_id: str, filename: str, cache_dir: str | None) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    # try_to_load_from_cache reads only the local cache: no request is made.
    found = try_to_load_from_cache(repo_id=repo_id, filename=filename, cache_dir=cache_dir)
    return found if isinstance(found, str) and os.path.isfile(found) else None


def _require_known_model(model_name: str) -> None:
    if model_name.replace("/", "-") not in open_clip.list_models():
        raise ModelLoadError(
            f"unknown CLIP model name {model_name!r}: not an open_clip config "
            f"(see open_clip.list_models(); {TINY_MODEL!r} is registered by paircurate)"
        )


def _looks_like_path(value: str) -> bool:
    return os.sep in value or "/" in value or value.endswith(CHECKPOINT_SUFFIXES) or value.startswith((".", "~"))


def _how_to_provide(model_name: str, tag_cfg: dict | None = None) -> str:
    hub = (tag_cfg or {}).get("hf_hub", "")
    repo = os.path.split(hub)[0] if hub else "<org>/<repo>"
    name = model_name or "<model>"
    return (
        "How to provide weights (fetched on first use unless offline):\n"
        f"  1. a local checkpoint file: load_clip({name!r}, '/path/to/weights.safetensors') (.safetensors, .pt, .pth, .bin);\n"
        "  2. a local folder: load_clip(name, 'local-dir:/path/to/folder'), the folder holding "
        f"{_HF_CONFIG_NAME} and {_HF_SAFE_WEIGHTS_NAME} (or {_HF_WEIGHTS_NAME});\n"
        f"  3. pre-populate the Hugging Face cache on a machine with network, e.g. `hf download {repo}`, "
        "and copy it here (HF_HOME / HF_HUB_CACHE, or pass cache_dir);\n"
        f"  4. for tests and demos: load_clip({TINY_MODEL!r}, {TINY_MODEL!r}), bundled with paircurate."
    )


def _pick_device(device: str) -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        log.info("CLIP device auto: no CUDA device available, running on CPU")
        return torch.device("cpu")
    requested = torch.device(device)
    if requested.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"CLIP device {device!r} requested but CUDA is not available here: "
                             "use --device cpu (or auto)")
    return requested


def check_device(device: str) -> str:
    """The device ``device`` means on this machine ("cpu"/"cuda"); ModelLoadError for CUDA without a GPU."""
    return _pick_device(device).type


def _pick_autocast(device: torch.device, precision: str) -> torch.dtype | None:
    if precision == "fp32":
        return None
    if device.type == "cuda":
        if precision == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float16 if precision == "fp16" else torch.bfloat16
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        # fp16 autocast on CPU is slow and partly unsupported.
        log.warning("fp16 autocast is not used on CPU: running CLIP in fp32")
    return None
