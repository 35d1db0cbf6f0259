"""One typed configuration, built the same way from CLI flags, YAML files and Python.

    >>> cfg = PipelineConfig.from_dict({"input": {"paths": ["pairs.parquet"]},
    ...                                 "output": {"path": "out"}})
    >>> cfg = cfg.with_overrides({"image.image_size": 384})

Every section is a frozen dataclass validated in ``__post_init__``; a stage
receives the section it needs, never a long list of keyword arguments.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping

from paircurate.schemas.outcomes import Reason

RESIZE_MODES = ("no", "border", "keep_ratio", "keep_ratio_largest", "center_crop")
ENCODE_FORMATS = ("jpg", "png", "webp")
INPUT_FORMATS = ("auto", "parquet", "csv", "tsv", "jsonl", "txt")
# Download failures that may go away on their own: what --retry-failed re-attempts by default.
# host_unavailable: the host was given up on after host_failure_limit attempts without an answer.
DEFAULT_RETRY_REASONS = ("timeout", "connection_error", "http_5xx", "http_429", "host_unavailable")
# Image formats that Pillow decodes in-process (lower-case plugin names); the default allows the web's five.
DECODABLE_IMAGE_FORMATS = ("jpeg", "png", "webp", "gif", "bmp", "tiff", "ico", "ppm", "tga")
DEFAULT_IMAGE_FORMATS = ("jpeg", "png", "webp", "gif", "bmp")
DEFAULT_USER_AGENT = "paircurate/0.1 (+https://github.com/paircurate/paircurate; dataset curation crawler)"


class UserError(ValueError):
    """Bad input from the user (config, files): reported as a message, not a traceback."""


class ConfigError(UserError):
    """A configuration value is missing, unknown or out of range."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def check_types(section: Any, name: str) -> None:
    """Every field of a config section holds its declared type (and a number is finite).

    Runs first in each section's ``__post_init__``, so a section built from
    Python with a wrong value fails with the key's name, not with a
    ``TypeError`` from the range checks that follow.
    """
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if typing.get_origin(hints[f.name]) is tuple and isinstance(value, list):
            value = tuple(value)  # a list from Python code is as good; the section stays hashable
            object.__setattr__(section, f.name, value)
        _check_value(hints[f.name], value, f"{name}.{f.name}")


def _check_value(tp: Any, value: Any, where: str) -> None:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return
        _check_value(next(a for a in args if a is not type(None)), value, where)
    elif origin is tuple:
        check(isinstance(value, tuple), f"{where} must be a list, got {value!r:.100}")
        for item in value:
            _check_value(args[0], item, where)
    elif tp is bool:
        check(isinstance(value, bool), f"{where} must be true or false, got {value!r:.100}")
    elif tp is int:
        check(isinstance(value, int) and not isinstance(value, bool), f"{where} must be a whole number, got {value!r:.100}")
    elif tp is float:
        check(isinstance(value, (int, float)) and not isinstance(value, bool), f"{where} must be a number, got {value!r:.100}")
        check(math.isfinite(value), f"{where} must be a finite number, got {value!r}")
    elif tp is str:
        check(isinstance(value, str), f"{where} must be a string, got {value!r:.100}")


@dataclass(frozen=True)
class InputConfig:
    paths: tuple[str, ...] = ()
    url_col: str = "url"
    caption_col: str = "caption"
    save_cols: tuple[str, ...] = ()
    input_format: str = "auto"

    def __post_init__(self) -> None:
        check_types(self, "input")
        check(self.input_format in INPUT_FORMATS, f"input.input_format must be one of {INPUT_FORMATS}, got {self.input_format!r}")
        check(bool(self.url_col), "input.url_col must not be empty")
        from paircurate.schemas.records import reserved_column_names  # pyarrow, only once a config is built

        reserved = sorted(set(self.save_cols) & reserved_column_names())
        if reserved:
            raise ConfigError(
                f"input.save_cols: {reserved[0]!r} is a column paircurate writes itself "
                f"(reserved: {', '.join(sorted(reserved_column_names()))}); rename that column in the input file to carry it"
            )
        duplicated = sorted({c for c in self.save_cols if self.save_cols.count(c) > 1})
        check(not duplicated, f"input.save_cols names {duplicated[:1]} more than once")


@dataclass(frozen=True)
class CaptionConfig:
    max_caption_chars: int = 4000  # longer raw captions -> caption_too_long, before ftfy, regexes or language id
    min_words: int = 0
    min_chars: int = 0
    reject_boilerplate: bool = False  # "image", "IMG_1234.JPG", camera defaults -> boilerplate_caption
    english_only: bool = False  # reject captions confidently identified as another language (py3langid)
    tokenize: bool = False  # store the caption's BPE token ids (Parquet column + .tokens tar member)
    tokenizer: str = "ViT-B-32"  # the open_clip model whose tokenizer is used
    max_text_tokens: int = 77  # token ids kept, start and end tokens included (DALL-E layout: 256)

    def __post_init__(self) -> None:
        check_types(self, "caption")
        check(self.max_caption_chars >= 1, "caption.max_caption_chars must be >= 1")
        check(self.min_words >= 0 and self.min_chars >= 0, "caption.min_words and caption.min_chars must be >= 0")
        check(self.max_text_tokens >= 2, "caption.max_text_tokens must be >= 2 (start and end tokens)")


@dataclass(frozen=True)
class DownloadConfig:
    threads: int = 32  # concurrent downloads per worker, shared by its processes
    # Processes per worker that download and decode (each with threads/processes
    # threads). 0: one per core on the in-process runner, 1 on other runners,
    # whose workers already run one SDK process per core.
    processes: int = 0
    connect_timeout: float = 5.0
    read_timeout: float = 10.0
    deadline: float = 30.0  # whole URL: every retry, redirect and byte
    retries: int = 2
    backoff_base: float = 0.5
    backoff_max: float = 8.0
    max_bytes: int = 20 * 1024 * 1024
    max_redirects: int = 5
    user_agent: str = DEFAULT_USER_AGENT
    batch_size: int = 256  # URLs handed to one thread pool at a time (bigger: fewer straggler waits)
    # Politeness and safety (see README "Crawling politely and safely").
    per_domain_concurrency: int = 32  # most requests in flight to one host, per worker
    adaptive_concurrency: bool = True  # start at 4 per host and grow while the host keeps up (AIMD), up to the above
    per_domain_rps: float = 0.0  # requests per second to one host, per worker; 0 = unlimited
    retry_after_max: float = 30.0  # longest Retry-After we wait for (still bounded by the deadline)
    allow_private_network: bool = False  # loopback/private/link-local targets refused unless set
    opt_out_tags: tuple[str, ...] = ("noai", "noimageai")  # X-Robots-Tag values that mean "do not use"
    respect_robots_txt: bool = False
    robots_user_agent: str = "paircurate"
    # Attempts in a row on one host that get no answer (refused, unresolvable,
    # timed out) before its remaining URLs are rejected as host_unavailable; 0 = never.
    host_failure_limit: int = 8

    def __post_init__(self) -> None:
        check_types(self, "download")
        check(self.threads >= 1, "download.threads must be >= 1")
        check(self.processes >= 0, "download.processes must be >= 0 (0 = one per core on the in-process runner)")
        check(self.connect_timeout > 0 and self.read_timeout > 0, "download timeouts must be > 0")
        check(self.deadline > 0, "download.deadline must be > 0")
        check(self.retries >= 0, "download.retries must be >= 0")
        check(self.max_bytes > 0, "download.max_bytes must be > 0")
        check(self.max_redirects >= 0, "download.max_redirects must be >= 0")
        check(self.batch_size >= 1, "download.batch_size must be >= 1")
        check(self.per_domain_concurrency >= 1, "download.per_domain_concurrency must be >= 1")
        check(self.per_domain_rps >= 0, "download.per_domain_rps must be >= 0 (0 = unlimited)")
        check(self.retry_after_max >= 0, "download.retry_after_max must be >= 0")
        check(self.host_failure_limit >= 0, "download.host_failure_limit must be >= 0 (0 = never give up on a host)")


@dataclass(frozen=True)
class ImageConfig:
    image_size: int = 256
    resize_mode: str = "center_crop"
    min_image_size: int = 0
    max_aspect_ratio: float = 0.0  # 0 disables the check
    encode_format: str = "jpg"
    encode_quality: int = 95
    max_pixels: int = 89_478_485  # Pillow's own default bomb limit
    # Formats decoded at all (Pillow plugin names, any case); anything else is
    # unsupported_format before a decoder sees it. EPS/PS/PDF and other
    # formats Pillow hands to outside programs are never allowed.
    image_formats: tuple[str, ...] = DEFAULT_IMAGE_FORMATS
    keep_metadata: bool = False  # keep EXIF/XMP/comments in images passed through unchanged
    max_output_pixels: int = 4096 * 4096  # largest image any resize mode may produce

    def __post_init__(self) -> None:
        check_types(self, "image")
        check(self.resize_mode in RESIZE_MODES, f"image.resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        check(self.encode_format in ENCODE_FORMATS, f"image.encode_format must be one of {ENCODE_FORMATS}, got {self.encode_format!r}")
        check(self.image_size >= 1, "image.image_size must be >= 1")
        check(1 <= self.encode_quality <= 100, "image.encode_quality must be in 1..100")
        check(self.max_aspect_ratio == 0 or self.max_aspect_ratio >= 1, "image.max_aspect_ratio must be 0 (off) or >= 1")
        check(self.max_pixels > 0, "image.max_pixels must be > 0")
        check(self.max_output_pixels > 0, "image.max_output_pixels must be > 0")
        check(bool(self.image_formats), f"image.image_formats must name at least one of {DECODABLE_IMAGE_FORMATS}")
        for name in self.image_formats:
            check(
                str(name).lower() in DECODABLE_IMAGE_FORMATS + ("jpg",),
                f"image.image_formats: {name!r} is not one of {DECODABLE_IMAGE_FORMATS}"
                + (" (its decoder runs an outside program and is never allowed)" if str(name).lower() in ("eps", "ps", "pdf", "wmf", "emf") else ""),
            )


@dataclass(frozen=True)
class ClipConfig:
    enabled: bool = False
    model: str = "ViT-B-32"
    pretrained: str = "laion2b_s34b_b79k"
    device: str = "auto"
    precision: str = "auto"  # auto: bf16/fp16 autocast on CUDA, fp32 on CPU
    batch_size: int = 128
    threshold: float | None = None  # None: the model's published default
    top_percent: float | None = None
    offline: bool = False  # never fetch weights or heads; the cache, files and local-dir: only (also HF_HUB_OFFLINE=1)
    # Heads on the CLIP image embedding: PATH, URL or "auto" (the published head
    # for the CLIP weights in use); "" = off.
    aesthetic_head: str = ""
    min_aesthetic: float | None = None  # reject below (low_aesthetic)
    safety_head: str = ""
    max_punsafe: float | None = None  # reject above (unsafe); LAION used 0.5

    def __post_init__(self) -> None:
        check_types(self, "clip")
        check(self.device in ("auto", "cpu", "cuda"), f"clip.device must be auto, cpu or cuda, got {self.device!r}")
        check(self.min_aesthetic is None or bool(self.aesthetic_head),
              "clip.min_aesthetic needs an aesthetic head: give --aesthetic-head PATH|URL|auto")
        check(self.max_punsafe is None or bool(self.safety_head),
              "clip.max_punsafe needs a safety head: give --safety-head PATH|URL|auto")
        check(self.max_punsafe is None or 0 <= self.max_punsafe <= 1, "clip.max_punsafe must be in [0, 1]")
        check(self.precision in ("auto", "fp32", "fp16", "bf16"), f"clip.precision must be auto, fp32, fp16 or bf16, got {self.precision!r}")
        check(self.batch_size >= 1, "clip.batch_size must be >= 1")
        check(self.top_percent is None or 0 < self.top_percent <= 100, "clip.top_percent must be in (0, 100]")


@dataclass(frozen=True)
class DedupConfig:
    exact: bool = True  # same normalized URL or same image sha256
    perceptual: bool = True  # pHash within phash_threshold bits
    phash_threshold: int = 4  # Hamming distance (of 64 bits) that still counts as a copy
    semantic: bool = True  # SemDeDup on CLIP image embeddings; needs CLIP on
    semantic_threshold: float = 0.95  # cosine similarity at or above which two images are duplicates
    semantic_clusters: int = 0  # k-means clusters; 0 = about sqrt(n)
    semantic_nprobe: int = 2  # clusters each record is compared in; 1 = plain SemDeDup (misses border pairs)
    dedup_against: str = ""  # output folder of an earlier run to deduplicate against
    decontaminate_against: str = ""  # folder or Parquet of evaluation images to remove

    def __post_init__(self) -> None:
        check_types(self, "dedup")
        check(0 <= self.phash_threshold <= 63, "dedup.phash_threshold must be in 0..63")
        check(self.semantic_nprobe >= 1, "dedup.semantic_nprobe must be >= 1")
        check(0 < self.semantic_threshold <= 1, "dedup.semantic_threshold must be in (0, 1]")
        check(self.semantic_clusters >= 0, "dedup.semantic_clusters must be >= 0")


SPOOL_MODES = ("auto", "store", "shuffle")


BALANCE_BY = ("caption", "concepts")


@dataclass(frozen=True)
class ConceptsConfig:
    labels: str = ""  # "imagenet" or a label file; "" = no concept tags
    top_k: int = 3  # labels (and cosines) stored per image

    def __post_init__(self) -> None:
        check(self.top_k >= 1, "concepts.top_k must be >= 1")


@dataclass(frozen=True)
class BalanceConfig:
    cap: int = 0  # MetaCLIP's t: samples kept per entry (in expectation); 0 = no balancing
    entries: str = ""  # "imagenet" or a label file: the entries matched in captions
    by: str = "caption"  # caption: entries named by the caption; concepts: the image's top-1 concept tag
    whole_words: bool = False  # count an entry only as a whole word ("cat" does not match "catalogue")
    drop_unmatched: bool = False  # reject samples that match no entry (no_entry_match), as MetaCLIP does

    @property
    def enabled(self) -> bool:
        return self.cap > 0

    def __post_init__(self) -> None:
        check(self.cap >= 0, "balance.cap must be >= 0 (0 = no balancing)")
        check(self.by in BALANCE_BY, f"balance.by must be one of {BALANCE_BY}, got {self.by!r}")


@dataclass(frozen=True)
class OutputConfig:
    path: str = ""
    shard_size: int = 10_000  # input rows per shard, as img2dataset counts them
    # Where finished samples wait for their shard's writer: "store" (OUT/_spool,
    # on whatever OUT is), "shuffle" (through the runner's shuffle), or "auto"
    # (a local spool on the in-process runner, the output store elsewhere).
    spool: str = "auto"

    def __post_init__(self) -> None:
        check_types(self, "output")
        check(self.shard_size >= 1, "output.shard_size must be >= 1")
        check(self.spool in SPOOL_MODES, f"output.spool must be one of {SPOOL_MODES}, got {self.spool!r}")


@dataclass(frozen=True)
class RunnerConfig:
    beam_args: tuple[str, ...] = ()  # passed through to Beam's PipelineOptions
    progress: bool = True
    report: bool = True  # write OUT/report.html at the end of a run
    # Input rows per pass of the pipeline (rounded to whole shards). 0: 500,000
    # on the in-process runner, which holds a pass's shuffles in memory; one
    # pass on other runners.
    rows_per_pass: int = 0
    # Re-attempt the rows of an existing output folder rejected for one of
    # retry_reasons (see README "Retrying what failed"), instead of a new run.
    retry_failed: bool = False
    retry_reasons: tuple[str, ...] = DEFAULT_RETRY_REASONS
    # Share of input rows that may end as internal_error before the run counts
    # as failed (it still writes everything, then exits non-zero).
    max_error_rate: float = 0.01

    def __post_init__(self) -> None:
        check_types(self, "runner")
        check(0 <= self.max_error_rate <= 1, "runner.max_error_rate must be in [0, 1]")
        check(self.rows_per_pass >= 0, "runner.rows_per_pass must be >= 0 (0 = automatic)")
        known = {r.value for r in Reason}
        unknown = [r for r in self.retry_reasons if r not in known]
        check(not unknown, f"runner.retry_reasons: unknown reason code(s) {unknown}; reason codes are listed in the README")
        check(bool(self.retry_reasons), "runner.retry_reasons must name at least one reason code")


@dataclass(frozen=True)
class BlocklistConfig:
    # Text or Parquet lists of url/prefix/domain/sha256/md5/phash entries
    # (filters/blocklist.py); matching rows are rejected as ``blocklisted``.
    paths: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_types(self, "blocklist")


@dataclass(frozen=True)
class PipelineConfig:
    input: InputConfig = field(default_factory=InputConfig)
    caption: CaptionConfig = field(default_factory=CaptionConfig)
    download: DownloadConfig = field(default_factory=DownloadConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    concepts: ConceptsConfig = field(default_factory=ConceptsConfig)
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    blocklist: BlocklistConfig = field(default_factory=BlocklistConfig)

    def validate_for_run(self) -> None:
        check(bool(self.input.paths), "no input: give one or more files or globs (input.paths)")
        check(bool(self.output.path), "no output folder: give -o/--output (output.path)")
        self._check_concepts_and_balance()

    def _check_concepts_and_balance(self) -> None:
        """Cross-section rules of --concepts and --balance-*; label files are checked by api.run."""
        if self.concepts.labels:
            check(self.clip.enabled, "--concepts tags images with the CLIP model: turn CLIP on with --clip (clip.enabled)")
        b = self.balance
        if not b.enabled:
            check(not b.entries, "--balance-entries needs --balance-cap T (samples kept per entry) to balance")
            return
        if b.by == "caption":
            check(bool(b.entries), "--balance-cap needs --balance-entries imagenet|FILE (or --balance-by concepts)")
        else:
            check(bool(self.concepts.labels), "--balance-by concepts balances on concept tags: give --concepts imagenet|FILE")
            check(not b.entries, "--balance-entries is for --balance-by caption; --balance-by concepts uses the --concepts labels")
            check(not b.whole_words, "--balance-whole-words is for --balance-by caption (concept tags are not matched in text)")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PipelineConfig":
        return _build(cls, data, "")

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))

    def with_overrides(self, overrides: Mapping[str, Any]) -> "PipelineConfig":
        """Apply ``{"section.field": value}`` overrides (CLI flags over a file)."""
        data = self.to_dict()
        for dotted, value in overrides.items():
            section, _, name = dotted.partition(".")
            check(section in data and name in data[section], f"unknown config key {dotted!r}")
            data[section][name] = value
        return PipelineConfig.from_dict(data)


def _build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    check(isinstance(data, Mapping), f"config section {prefix or '<root>'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - known
    check(not unknown, f"unknown config key(s) {sorted(prefix + str(k) for k in unknown)}; known: {sorted(known)}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, prefix + name)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return _build(tp, value or {}, where + ".")
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, where)
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        check(isinstance(value, (list, tuple)), f"{where} must be a list, got {value!r}")
        return tuple(_coerce(args[0], v, where) for v in value)
    try:
        if tp is bool:
            if isinstance(value, str):
                lowered = value.strip().lower()
                check(lowered in ("true", "false", "1", "0", "yes", "no"), f"{where} must be true/false, got {value!r}")
                return lowered in ("true", "1", "yes")
            check(isinstance(value, (bool, int)), f"{where} must be true/false, got {value!r:.100}")
            return bool(value)
        if tp is float:
            check(not isinstance(value, bool), f"{where} must be a number, got {value!r}")
            number = float(value)
            check(math.isfinite(number), f"{where} must be a finite number, got {value!r}")
            return number
        if tp is int:
            check(not isinstance(value, bool), f"{where} must be a whole number, got {value!r}")
            if isinstance(value, float):  # YAML 1e6 is a float; .inf, .nan and 2.5 are not whole numbers
                check(math.isfinite(value) and value.is_integer(), f"{where} must be a whole number, got {value!r}")
            return int(value)
        if tp is str:
            check(isinstance(value, (str, int, float)), f"{where} must be a string, got {value!r}")
            return str(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ConfigError(f"{where}: cannot use {value!r:.100} as {tp.__name__}") from exc
    return value


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value
