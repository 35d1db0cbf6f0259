"""Small heads on the CLIP image embedding: an aesthetic score and an NSFW probability.

    >>> head = load_head_for_run("aesthetic", "auto", "ViT-L-14", "openai", embed_dim=768)
    >>> head(image_embeddings)            # float32 (n,): LAION aesthetic score, roughly 1-10
    >>> safety = load_head_for_run("safety", "auto", "ViT-L-14", "openai", embed_dim=768)
    >>> safety(image_embeddings)          # float32 (n,): punsafe in [0, 1]

The heads are read from their published ``.pth`` state-dict layouts, told
apart by their keys:

- ``weight``, ``bias``: LAION-Aesthetics Predictor V1, ``nn.Linear(d, 1)``
  (LAION-AI/aesthetic-predictor, one per OpenAI CLIP architecture);
- ``layers.{0,2,4,6,7}.*``: the improved aesthetic MLP predictor for ViT-L/14
  that built LAION-Aesthetics (christophschuhmann/improved-aesthetic-predictor);
- ``norm.mean``, ``norm.variance``, ``linear_{1..4}.*``: LAION's CLIP-based
  NSFW detector as NeMo Curator converted it from Keras to torch (a
  normalisation layer and four linear layers, sigmoid output).

All of them take the L2-normalised image embedding, which is what
:class:`~paircurate.embeddings.clip.ClipModel` returns. Layer sizes are read
from the weights, so the demo heads for the small bundled model use the same
classes. A head is checked against the CLIP model before a run: its input size
must be the embedding size, and a published file (recognised by its sha256)
only runs on the CLIP weights it was published for.

``PATH|URL|auto``: ``auto`` is the published head for the CLIP weights in use
(:data:`PUBLISHED_HEADS`); URLs are fetched on first use into
``$TORCH_HOME/hub/checkpoints`` (torch.hub's cache for ``.pth`` files) with a
short timeout, never when offline. ``PAIRCURATE_HEADS_ENDPOINT`` replaces the
scheme and host of the published URLs (a mirror, or a test server).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from paircurate.embeddings.clip import ASSETS_DIR, TINY_MODEL, ModelLoadError, hub_offline
from paircurate.filters.similarity import canonical_model, canonical_tag

log = logging.getLogger(__name__)

AESTHETIC = "aesthetic"
SAFETY = "safety"
HEAD_KINDS = (AESTHETIC, SAFETY)
AUTO = "auto"
HEADS_ENDPOINT_ENV = "PAIRCURATE_HEADS_ENDPOINT"
FETCH_TIMEOUT_S = 8.0
MAX_HEAD_BYTES = 64 * 1024 * 1024

# Demo-world heads for the bundled model (embeddings/train_heads.py writes them).
TINY_AESTHETIC_PATH = ASSETS_DIR / "paircurate_tiny_aesthetic_linear.pth"
TINY_SAFETY_PATH = ASSETS_DIR / "paircurate_tiny_nsfw.pth"


@dataclass(frozen=True)
class PublishedHead:
    kind: str
    model: str  # the CLIP weights it was trained on
    pretrained: str
    name: str
    location: str  # URL, or a file bundled with paircurate
    sha256: str | None = None  # of the .pth file (inside the zip for zipped ones)
    zip_member: str | None = None  # the .pth inside a published zip
    licence: str = ""


PUBLISHED_HEADS: tuple[PublishedHead, ...] = (
    PublishedHead(AESTHETIC, "ViT-B-32", "openai", "LAION-Aesthetics Predictor V1 (linear, ViT-B/32)",
                  "https://raw.githubusercontent.com/LAION-AI/aesthetic-predictor/main/sa_0_4_vit_b_32_linear.pth",
                  "c7b14cead230694acc7b9447974d3cad78003c72da032e402a303b6c2429e85f", licence="MIT"),
    PublishedHead(AESTHETIC, "ViT-B-16", "openai", "LAION-Aesthetics Predictor V1 (linear, ViT-B/16)",
                  "https://raw.githubusercontent.com/LAION-AI/aesthetic-predictor/main/sa_0_4_vit_b_16_linear.pth",
                  "8ad3923d7ecf019df20ecd2ab5542a3075fbba0278d239c0371345f3d7fcbde0", licence="MIT"),
    # For ViT-L/14 ``auto`` takes the improved MLP (the one LAION-Aesthetics V2 was built with); the V1
    # linear head for ViT-L/14 is listed after it so that it is still recognised when given as a file.
    PublishedHead(AESTHETIC, "ViT-L-14", "openai", "improved aesthetic predictor (MLP, ViT-L/14)",
                  "https://raw.githubusercontent.com/christophschuhmann/improved-aesthetic-predictor/main/sac+logos+ava1-l14-linearMSE.pth",
                  "21dd590f3ccdc646f0d53120778b296013b096a035a2718c9cb0d511bff0f1e0", licence="Apache-2.0"),
    PublishedHead(AESTHETIC, "ViT-L-14", "openai", "LAION-Aesthetics Predictor V1 (linear, ViT-L/14)",
                  "https://raw.githubusercontent.com/LAION-AI/aesthetic-predictor/main/sa_0_4_vit_l_14_linear.pth",
                  "2cd4e60f4f24ae3bcd57b847b13c1f3ba27edc28cc1a7f9ce74ee9f421243cba", licence="MIT"),
    # The Keras model converted to a torch state dict, as NeMo Curator downloads it.
    PublishedHead(SAFETY, "ViT-L-14", "openai", "LAION CLIP-based NSFW detector (NeMo Curator torch layout)",
                  "https://github.com/LAION-AI/CLIP-based-NSFW-Detector/files/10250461/clip_autokeras_binary_nsfw.zip",
                  zip_member="clip_autokeras_binary_nsfw.pth", licence="MIT"),
    PublishedHead(AESTHETIC, TINY_MODEL, TINY_MODEL, "demo aesthetic head (linear; 'large shape' is beautiful)",
                  str(TINY_AESTHETIC_PATH), licence="Apache-2.0"),
    PublishedHead(SAFETY, TINY_MODEL, TINY_MODEL, "demo safety head (NSFW layout; a red shape is unsafe)",
                  str(TINY_SAFETY_PATH), licence="Apache-2.0"),
)


class Normalization(nn.Module):
    """Keras' Normalization layer as a torch module: ``(x - mean) / sqrt(variance)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("variance", torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.variance.sqrt()


class NSFWHead(nn.Module):
    """LAION's CLIP-based NSFW detector in NeMo Curator's layout; sizes from the weights (768, 64, 512, 256 published)."""

    def __init__(self, dims: tuple[int, int, int, int]) -> None:
        super().__init__()
        d, h1, h2, h3 = dims
        self.norm = Normalization(d)
        self.linear_1 = nn.Linear(d, h1)
        self.linear_2 = nn.Linear(h1, h2)
        self.linear_3 = nn.Linear(h2, h3)
        self.linear_4 = nn.Linear(h3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        x = F.relu(self.linear_1(x))
        x = F.relu(self.linear_2(x))
        x = F.relu(self.linear_3(x))
        return torch.sigmoid(self.linear_4(x))


class AestheticMLP(nn.Module):
    """The improved aesthetic predictor's ``layers`` (dropout is inactive at inference); sizes from the weights."""

    def __init__(self, dims: tuple[int, int, int, int, int]) -> None:
        super().__init__()
        d, h1, h2, h3, h4 = dims
        self.layers = nn.Sequential(
            nn.Linear(d, h1), nn.Dropout(0.2), nn.Linear(h1, h2), nn.Dropout(0.2),
            nn.Linear(h2, h3), nn.Dropout(0.1), nn.Linear(h3, h4), nn.Linear(h4, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


@dataclass
class Head:
    """A loaded head: call it on L2-normalised image embeddings."""

    kind: str
    layout: str  # "linear", "mlp" or "nsfw"
    module: nn.Module
    in_dim: int
    source: str
    sha256: str

    def to(self, device: torch.device | str) -> "Head":
        """Run on ``device`` (the CLIP model's: on a GPU the MLP heads would otherwise cost more than CLIP)."""
        self.module.to(device)
        return self

    def __call__(self, embeddings: np.ndarray) -> np.ndarray:
        """One float32 per row of ``embeddings`` (n, in_dim): aesthetic score, or punsafe in [0, 1]."""
        x = torch.as_tensor(np.asarray(embeddings, dtype=np.float32))
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"{self.kind} head wants (n, {self.in_dim}) embeddings, got {tuple(x.shape)}")
        device = next(self.module.parameters()).device
        # Stored embeddings are float16 in flight; the heads were trained on unit vectors. fp32 on every device.
        x = F.normalize(x.to(device), dim=-1)
        with torch.inference_mode():
            return self.module(x).reshape(-1).float().cpu().numpy()

    @property
    def published(self) -> PublishedHead | None:
        return next((p for p in PUBLISHED_HEADS if p.sha256 == self.sha256), None)


def load_head(kind: str, path: str | os.PathLike) -> Head:
    """Read a head from its published ``.pth`` layout; ModelLoadError naming the file when it is not one."""
    if kind not in HEAD_KINDS:
        raise ValueError(f"kind must be one of {HEAD_KINDS}, got {kind!r}")
    data = Path(path).read_bytes()
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(f"{kind} head {path}: not a torch state dict ({type(exc).__name__}: {_one_line(exc)})") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"{kind} head {path}: not a torch state dict of tensors")
    keys = set(state)
    layout = "expected"
    try:
        if keys == {"weight", "bias"}:
            layout, module = "linear", nn.Linear(state["weight"].shape[1], 1)
        elif keys == {f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")}:
            dims = tuple(state[f"layers.{i}.weight"].shape[1] for i in (0, 2, 4, 6, 7))
            layout, module = "mlp", AestheticMLP(dims)  # type: ignore[arg-type]
        elif {"norm.mean", "norm.variance", "linear_1.weight", "linear_4.weight"} <= keys:
            dims = tuple(state[f"linear_{i}.weight"].shape[1] for i in (1, 2, 3, 4))
            layout, module = "nsfw", NSFWHead(dims)  # type: ignore[arg-type]
        else:
            raise ModelLoadError(
                f"{kind} head {path}: unknown layout (keys {sorted(keys)[:6]}...); expected LAION's linear "
                "(weight, bias), the improved MLP (layers.N.*) or the NSFW detector (norm.*, linear_1..4.*)"
            )
        module.load_state_dict(state)
    except ModelLoadError:
        raise
    except Exception as exc:  # shapes that do not chain
        raise ModelLoadError(f"{kind} head {path}: weights do not fit the {layout} layout: {_one_line(exc)}") from exc
    wanted = ("linear", "mlp") if kind == AESTHETIC else ("nsfw",)
    if layout not in wanted:
        raise ModelLoadError(f"{kind} head {path}: has the {layout} layout, the wrong kind for the {kind} head "
                             f"(expected {' or '.join(wanted)})")
    module.eval()
    in_dim = int(next(iter(module.parameters())).shape[1])
    return Head(kind, layout, module, in_dim, str(path), hashlib.sha256(data).hexdigest())


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def published_head(kind: str, model: str, pretrained: str | None) -> PublishedHead | None:
    """The head ``auto`` means for these CLIP weights, or None."""
    key = (canonical_model(model), canonical_tag(pretrained or ""))
    return next((p for p in PUBLISHED_HEADS if p.kind == kind and (p.model, p.pretrained) == key), None)


def resolve_head(kind: str, spec: str, model: str, pretrained: str | None, *, offline: bool = False,
                 timeout: float = FETCH_TIMEOUT_S) -> str:
    """The local file for ``spec`` (PATH, URL or ``auto``), fetched into the cache on first use."""
    published = None
    if spec == AUTO:
        published = published_head(kind, model, pretrained)
        if published is None:
            have = ", ".join(f"{p.model}/{p.pretrained}" for p in PUBLISHED_HEADS if p.kind == kind)
            raise ModelLoadError(
                f"--{kind}-head auto: no published {kind} head for CLIP {model}/{pretrained} "
                f"(published for: {have}); give --{kind}-head PATH or URL"
            )
        spec = published.location
    if not spec.startswith(("http://", "https://")):
        if not os.path.isfile(spec):
            raise ModelLoadError(f"{kind} head file not found: {spec} (give an existing .pth file, a URL or auto)")
        return spec
    url = _mirrored(spec) if published else spec
    member = published.zip_member if published else None
    cached = Path(torch.hub.get_dir()) / "checkpoints" / (member or os.path.basename(urlsplit(spec).path))
    if cached.is_file():
        return str(cached)
    if hub_offline(offline):
        raise ModelLoadError(
            f"{kind} head {spec} is not in the local cache ({cached}) and offline (--offline or HF_HUB_OFFLINE=1): "
            "run once with network to fetch it, or give a file"
        )
    _fetch(url, cached, member, published.sha256 if published else None, timeout, kind)
    return str(cached)


def load_head_for_run(kind: str, spec: str, model: str, pretrained: str | None, embed_dim: int, *,
                      offline: bool = False) -> Head:
    """Resolve, load and check a head against the CLIP model in use; ModelLoadError (one line) on a mismatch."""
    head = load_head(kind, resolve_head(kind, spec, model, pretrained, offline=offline))
    if embed_dim and head.in_dim != embed_dim:
        raise ModelLoadError(
            f"{kind} head {head.source} takes {head.in_dim}-d embeddings but CLIP {model}/{pretrained} "
            f"gives {embed_dim}-d ones: use the head made for this CLIP model (or --{kind}-head auto)"
        )
    origin = head.published
    if origin and (origin.model, origin.pretrained) != (canonical_model(model), canonical_tag(pretrained or "")):
        raise ModelLoadError(
            f"{kind} head {head.source} is {origin.name}, published for CLIP {origin.model}/{origin.pretrained}, "
            f"but the run uses {model}/{pretrained}: its scores would mean nothing; use "
            f"--clip-model {origin.model} --clip-pretrained {origin.pretrained}, or --{kind}-head auto"
        )
    return head


def _mirrored(url: str) -> str:
    mirror = os.environ.get(HEADS_ENDPOINT_ENV, "").rstrip("/")
    if not mirror:
        return url
    parts = urlsplit(url)
    return mirror + parts.path


def _fetch(url: str, target: Path, zip_member: str | None, sha256: str | None, timeout: float, kind: str) -> None:
    import urllib3

    log.warning("downloading %s head %s into %s", kind, url, target)
    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=timeout, read=timeout), retries=urllib3.Retry(
        total=0, redirect=5, raise_on_redirect=True))
    try:
        response = http.request("GET", url, preload_content=False)
        try:
            if response.status != 200:
                raise ModelLoadError(f"{kind} head {url}: HTTP {response.status}; check the URL, or give a file")
            data = response.read(MAX_HEAD_BYTES + 1)
        finally:
            response.release_conn()
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"{kind} head: cannot fetch {url} ({type(exc).__name__}); check the network "
            f"(or {HEADS_ENDPOINT_ENV}), or give a file"
        ) from exc
    if len(data) > MAX_HEAD_BYTES:
        raise ModelLoadError(f"{kind} head {url}: larger than {MAX_HEAD_BYTES} bytes; not a head")
    if zip_member:
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                data = archive.read(zip_member)
        except (zipfile.BadZipFile, KeyError) as exc:
            raise ModelLoadError(f"{kind} head {url}: no {zip_member} in the zip ({exc})") from exc
    if sha256 and hashlib.sha256(data).hexdigest() != sha256:
        raise ModelLoadError(f"{kind} head {url}: sha256 differs from the published file; not using it")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.tmp-")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, target)
