"""The ``paircurate`` command line.

    paircurate run pairs.parquet -o out --image-size 256 --clip
    paircurate run 'lists/*.csv' -o out --config curate.yaml --runner DirectRunner --direct_num_workers 2
    paircurate run pairs.parquet -o out --preset clip --config curate.yaml
    paircurate demo
    paircurate inspect out && paircurate report out

Flags map one-to-one onto config keys (``--image-size`` -> ``image.image_size``);
values given on the command line override those from ``--config``, which
override those of ``--preset``. Options this parser does not know are handed
to Beam only if Beam declares them; any other is an error naming the closest
known option.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import sys
from typing import Any, Callable

from paircurate.config import PRESETS, load_config
from paircurate.schemas.config import (
    BALANCE_BY,
    ENCODE_FORMATS,
    INPUT_FORMATS,
    RESIZE_MODES,
    SPOOL_MODES,
    PipelineConfig,
    UserError,
)

EXIT_ERROR_RATE = 3  # the run finished and wrote everything, but too many rows were internal errors

# (flag, config key, argparse kwargs). The help text is the documentation.
_RUN_FLAGS: list[tuple[str, str, dict[str, Any]]] = [
    ("--url-col", "input.url_col", dict(help="input column holding the image URL (default: url)")),
    ("--caption-col", "input.caption_col", dict(help="input column holding the caption (default: caption)")),
    ("--save-cols", "input.save_cols", dict(help="comma-separated input columns to carry into the output metadata")),
    ("--input-format", "input.input_format", dict(choices=INPUT_FORMATS, help="input format (default: from the extension)")),
    ("--max-caption-chars", "caption.max_caption_chars", dict(type=int, help="reject raw captions longer than this as caption_too_long, before any other caption work (default: 4000)")),
    ("--min-words", "caption.min_words", dict(type=int, help="reject captions with fewer words (default: 0)")),
    ("--min-chars", "caption.min_chars", dict(type=int, help="reject captions with fewer characters (default: 0)")),
    ("--english-only", "caption.english_only", dict(action="store_const", const=True, help="reject captions confidently identified as not English (non_english_caption)")),
    ("--reject-boilerplate", "caption.reject_boilerplate", dict(action="store_const", const=True, help="reject captions like 'image', 'untitled', 'IMG_1234.JPG' as boilerplate_caption")),
    ("--tokenize", "caption.tokenize", dict(action="store_const", const=True, help="store caption BPE token ids (Parquet column + .tokens member)")),
    ("--tokenizer", "caption.tokenizer", dict(help="open_clip model whose tokenizer --tokenize uses (default: ViT-B-32)")),
    ("--max-text-tokens", "caption.max_text_tokens", dict(type=int, help="token ids kept per caption, start/end included (default: 77)")),
    ("--threads", "download.threads", dict(type=int, help="concurrent downloads per worker (default: 32)")),
    ("--download-processes", "download.processes", dict(type=int, help="processes per worker that download and decode (default 0: one per core on the in-process runner, 1 on other runners)")),
    ("--connect-timeout", "download.connect_timeout", dict(type=float, help="seconds to connect (default: 5)")),
    ("--read-timeout", "download.read_timeout", dict(type=float, help="seconds without a byte before giving up (default: 10)")),
    ("--deadline", "download.deadline", dict(type=float, help="seconds for a URL in all, retries included (default: 30)")),
    ("--retries", "download.retries", dict(type=int, help="retries on connection errors, timeouts and 5xx (default: 2)")),
    ("--max-bytes", "download.max_bytes", dict(type=int, help="largest body accepted, enforced while streaming (default: 20 MiB)")),
    ("--max-redirects", "download.max_redirects", dict(type=int, help="redirect hops followed (default: 5)")),
    ("--user-agent", "download.user_agent", dict(help="User-Agent header sent with every request")),
    ("--per-domain-concurrency", "download.per_domain_concurrency", dict(type=int, help="most requests in flight to one host per worker (default: 32)")),
    ("--no-adaptive-concurrency", "download.adaptive_concurrency", dict(action="store_const", const=False, help="use --per-domain-concurrency from the start instead of growing towards it while the host keeps up")),
    ("--per-domain-rps", "download.per_domain_rps", dict(type=float, help="requests per second to one host per worker (default: unlimited)")),
    ("--allow-private-network", "download.allow_private_network", dict(action="store_const", const=True, help="allow URLs on loopback/private/link-local addresses (refused by default)")),
    ("--opt-out-tags", "download.opt_out_tags", dict(help="comma-separated X-Robots-Tag values that reject a response as opted_out (default: noai,noimageai)")),
    ("--respect-robots-txt", "download.respect_robots_txt", dict(action="store_const", const=True, help="check each host's robots.txt for --robots-user-agent")),
    ("--robots-user-agent", "download.robots_user_agent", dict(help="user agent token looked up in robots.txt (default: paircurate)")),
    ("--host-failure-limit", "download.host_failure_limit", dict(type=int, help="attempts in a row without an answer before a host's remaining URLs are rejected as host_unavailable (default: 8; 0 = never)")),
    ("--image-size", "image.image_size", dict(type=int, help="target size in pixels (default: 256)")),
    ("--resize-mode", "image.resize_mode", dict(choices=RESIZE_MODES, help="how to reach --image-size (default: center_crop)")),
    ("--min-image-size", "image.min_image_size", dict(type=int, help="reject images whose smaller side is below this (default: 0)")),
    ("--max-aspect-ratio", "image.max_aspect_ratio", dict(type=float, help="reject images with a larger aspect ratio (default: off)")),
    ("--encode-format", "image.encode_format", dict(choices=ENCODE_FORMATS, help="output image format (default: jpg)")),
    ("--encode-quality", "image.encode_quality", dict(type=int, help="jpg/webp quality (default: 95)")),
    ("--max-pixels", "image.max_pixels", dict(type=int, help="decompression-bomb guard: largest declared pixel count")),
    ("--max-output-pixels", "image.max_output_pixels", dict(type=int, help="largest image any resize mode may produce; more is output_too_large (default: 4096x4096)")),
    ("--image-formats", "image.image_formats", dict(help="comma-separated formats decoded at all, others unsupported_format (default: jpeg,png,webp,gif,bmp; also tiff,ico,ppm,tga)")),
    ("--keep-metadata", "image.keep_metadata", dict(action="store_const", const=True, help="keep EXIF/XMP/comments in images passed through unchanged (stripped by default; bytes after the image end are always cut)")),
    ("--clip", "clip.enabled", dict(action="store_const", const=True, help="score every pair with CLIP and filter on it")),
    ("--clip-model", "clip.model", dict(help="open_clip model name (default: ViT-B-32)")),
    ("--clip-pretrained", "clip.pretrained", dict(help="open_clip pretrained tag, checkpoint path or local-dir:PATH")),
    ("--device", "clip.device", dict(choices=("auto", "cpu", "cuda"), help="where CLIP runs (default: auto)")),
    ("--clip-batch-size", "clip.batch_size", dict(type=int, help="images per CLIP batch (default: 128)")),
    ("--clip-threshold", "clip.threshold", dict(type=float, help="reject pairs scoring below (default: the model's published value)")),
    ("--clip-top-percent", "clip.top_percent", dict(type=float, help="keep the top P%% of the run by CLIP score")),
    ("--offline", "clip.offline", dict(action="store_const", const=True, help="never fetch model weights or heads: local cache, files and local-dir: only (same as HF_HUB_OFFLINE=1)")),
    ("--aesthetic-head", "clip.aesthetic_head", dict(help="aesthetic head on the CLIP image embedding: PATH, URL or auto (the published LAION head for the CLIP weights in use); adds aesthetic_score")),
    ("--min-aesthetic", "clip.min_aesthetic", dict(type=float, help="reject images whose aesthetic_score is below (low_aesthetic)")),
    ("--safety-head", "clip.safety_head", dict(help="NSFW head on the CLIP image embedding: PATH, URL or auto (LAION's CLIP-based NSFW detector for ViT-L/14 openai); adds punsafe")),
    ("--max-punsafe", "clip.max_punsafe", dict(type=float, help="reject images whose punsafe is above (unsafe); LAION used 0.5")),
    ("--no-dedup-exact", "dedup.exact", dict(action="store_const", const=False, help="keep exact duplicates (same URL or same image bytes)")),
    ("--no-dedup-perceptual", "dedup.perceptual", dict(action="store_const", const=False, help="keep perceptual (pHash) near-duplicates")),
    ("--phash-threshold", "dedup.phash_threshold", dict(type=int, help="pHash Hamming distance counted as a copy (default: 4)")),
    ("--no-dedup-semantic", "dedup.semantic", dict(action="store_const", const=False, help="keep semantic (CLIP embedding) near-duplicates")),
    ("--semantic-dedup-threshold", "dedup.semantic_threshold", dict(type=float, help="cosine similarity counted as a duplicate (default: 0.95)")),
    ("--dedup-against", "dedup.dedup_against", dict(help="output folder of an earlier run: also drop samples it already holds")),
    ("--decontaminate-against", "dedup.decontaminate_against", dict(help="folder or Parquet of evaluation images to remove (eval_contamination)")),
    ("--concepts", "concepts.labels", dict(help="tag every image with its top labels: 'imagenet' (open_clip's class names) or a label file (.txt one per line, .json list, .csv/.tsv/.parquet with label[,prompt]); turns CLIP on")),
    ("--concept-top-k", "concepts.top_k", dict(type=int, help="labels (and cosines) stored per image (default: 3)")),
    ("--balance-entries", "balance.entries", dict(help="MetaCLIP balancing: entries matched in captions, 'imagenet' or a label file")),
    ("--balance-cap", "balance.cap", dict(type=int, help="MetaCLIP's t: keep about T samples per entry; rarer entries keep all (default: off)")),
    ("--balance-whole-words", "balance.whole_words", dict(action="store_const", const=True, help="match entries as whole words only (default: substrings, as MetaCLIP)")),
    ("--balance-drop-unmatched", "balance.drop_unmatched", dict(action="store_const", const=True, help="reject samples matching no entry (no_entry_match), as MetaCLIP does (default: keep them)")),
    ("--balance-by", "balance.by", dict(choices=BALANCE_BY, help="balance on the entries a caption names, or on the image's top-1 concept tag (default: caption)")),
    ("--shard-size", "output.shard_size", dict(type=int, help="input rows per shard (default: 10000)")),
    ("--blocklist", "blocklist.paths", dict(nargs="+", metavar="FILE", help="text or Parquet lists of url:/prefix:/domain:/sha256:/md5:/phash: entries; matching rows are rejected as blocklisted (URL entries before any request)")),
    ("--retry-failed", "runner.retry_failed", dict(action="store_const", const=True, help="re-attempt only the rows of the existing OUT rejected for a --retry-reasons reason; recovered rows become new shards")),
    ("--retry-reasons", "runner.retry_reasons", dict(metavar="REASONS", help="comma-separated reason codes --retry-failed re-attempts (default: timeout,connection_error,http_5xx,http_429,host_unavailable)")),
    ("--max-error-rate", "runner.max_error_rate", dict(type=float, help="share of rows that may end as internal_error; above it the run still writes everything, then exits with status 3 (default: 0.01)")),
    ("--spool", "output.spool", dict(choices=SPOOL_MODES, help="where finished samples wait for their shard: store (OUT/_spool), shuffle (through the runner's shuffle), auto (default: a local spool on the in-process runner, the output store on others)")),
    ("--rows-per-pass", "runner.rows_per_pass", dict(type=int, help="input rows per pass of the pipeline, in whole shards; bounds memory on one machine (default 0: 500,000 on the in-process runner, one pass elsewhere)")),
]


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("curation options (override --config)")
    for flag, key, kwargs in _RUN_FLAGS:
        if "choices" not in kwargs and "action" not in kwargs:
            kwargs = {"metavar": key.split(".")[1].upper(), **kwargs}
        group.add_argument(flag, dest=key, default=None, **kwargs)
    parser.add_argument("--config", help="YAML file with config sections (input, download, image, clip, output, ...)")
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="starting defaults, under --config and flags: clip (DataComp basic filtering: >2 words, >5 chars, "
        "min side 200, aspect <= 3, CLIP on) or dalle (256 center crop, min side 256, aspect <= 2, >= 2 words, no boilerplate captions)",
    )
    parser.add_argument("--overwrite", action="store_true", help="delete OUT first instead of resuming into it")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-report", action="store_true", help="do not write OUT/report.html at the end")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {key: getattr(args, key) for _, key, _ in _RUN_FLAGS if getattr(args, key) is not None}


def build_config(args: argparse.Namespace, beam_args: list[str]) -> PipelineConfig:
    cfg = load_config(preset=getattr(args, "preset", None), yaml_path=args.config)
    overrides = _overrides(args)
    if getattr(args, "inputs", None):
        overrides["input.paths"] = list(args.inputs)
    if getattr(args, "output", None):
        overrides["output.path"] = args.output
    if beam_args:
        overrides["runner.beam_args"] = list(cfg.runner.beam_args) + beam_args
    if args.no_progress:
        overrides["runner.progress"] = False
    if getattr(args, "no_report", False):
        overrides["runner.report"] = False
    if any(k.startswith("clip.") and k not in ("clip.enabled", "clip.device", "clip.offline") for k in overrides) and "clip.enabled" not in overrides:
        overrides["clip.enabled"] = True  # naming a model or threshold means "score"
    if overrides.get("concepts.labels") and "clip.enabled" not in overrides:
        overrides["clip.enabled"] = True  # concept tags come from the CLIP image embeddings
    return cfg.with_overrides(overrides)


def _cmd_run(args: argparse.Namespace, beam_args: list[str]) -> int:
    cfg = build_config(args, beam_args)
    if cfg.download.processes != 1 and not any(a.startswith("--runner") for a in cfg.runner.beam_args):
        # The in-process runner will start download processes: let their fork
        # server import the download code while this process imports Beam.
        from paircurate.crawl import start_forkserver_early

        start_forkserver_early()
    from paircurate.api import run
    from paircurate.pipeline.stats import format_error_rate_failure, format_summary

    summary = run(cfg, overwrite=args.overwrite)
    print(format_summary(summary.stats))
    if summary.error_rate_exceeded:
        print(f"paircurate: error: {format_error_rate_failure(summary.stats)}", file=sys.stderr)
        return EXIT_ERROR_RATE
    return 0


def _cmd_demo(args: argparse.Namespace, beam_args: list[str]) -> int:
    from paircurate.demo import run_demo

    return run_demo(
        out_dir=args.output,
        num_pairs=args.num_pairs,
        clip=not args.no_clip,
        beam_args=beam_args,
        progress=not args.no_progress,
    )


def _cmd_inspect(args: argparse.Namespace, beam_args: list[str]) -> int:
    from paircurate.inspection import format_inspection, inspect_output

    print(format_inspection(inspect_output(args.output_dir)))
    return 0


def _cmd_models(args: argparse.Namespace, beam_args: list[str]) -> int:
    from paircurate.embeddings.catalog import format_models, list_models
    from paircurate.embeddings.clip import _cache_label

    print(format_models(list_models(model_filter=args.model or "", only_cached=args.cached)))
    print(f"cached = found in {_cache_label(None)} (HF_HOME / HF_HUB_CACHE) or ~/.cache/clip")
    return 0


def _cmd_report(args: argparse.Namespace, beam_args: list[str]) -> int:
    from paircurate.report import write_report

    print(write_report(args.output_dir))
    return 0


def _cmd_remove(args: argparse.Namespace, beam_args: list[str]) -> int:
    from paircurate.remove import remove_blocklisted

    entry = remove_blocklisted(args.output_dir, args.blocklist, args.output)
    per_list = ", ".join(f"{name}: {n}" for name, n in entry["by_list"].items()) or "no matches"
    print(f"paircurate remove: {entry['rows']} samples removed ({per_list}); new version in {args.output}")
    return 0


def _cmd_verify_train(args: argparse.Namespace, beam_args: list[str]) -> int:
    from paircurate.verify_train import verify_train

    result = verify_train(args.output_dir, model=args.model, pretrained=args.pretrained, batch_size=args.batch_size)
    verdict = "OK" if result["matches"] else "MISMATCH"
    print(
        f"verify-train {verdict}: open_clip_train read {result['consumed']} samples ({result['unique']} distinct) "
        f"of {result['kept']} kept, {result['steps']} steps of batch {result['batch_size']}"
    )
    return 0 if result["matches"] else 1


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="paircurate", description="Curate image-text pair datasets with Apache Beam.")
    sub = parser.add_subparsers(dest="command", required=True)

    run_p = sub.add_parser(
        "run",
        help="download, filter and shard URL + caption lists",
        description="Curate URL + caption lists into WebDataset tar shards with Parquet metadata. "
        "Other --options that Beam declares are passed to Beam (e.g. --runner, --direct_num_workers, --direct_running_mode); "
        "any other option is an error.",
    )
    run_p.add_argument("inputs", nargs="*", metavar="INPUT", help="Parquet/CSV/TSV/JSONL/TXT files or globs")
    run_p.add_argument("-o", "--output", help="output folder (resumed if it holds an unfinished run)")
    _add_run_flags(run_p)
    run_p.set_defaults(handler=_cmd_run)

    demo_p = sub.add_parser(
        "demo",
        help="generate captioned images, serve them on 127.0.0.1 and curate them end to end",
        description="Self-contained demo: needs no network and no downloaded model.",
    )
    demo_p.add_argument("-o", "--output", default="paircurate-demo", help="output folder (default: ./paircurate-demo)")
    demo_p.add_argument("--num-pairs", type=int, default=300, help="generated pairs (default: 300)")
    demo_p.add_argument("--no-clip", action="store_true", help="skip CLIP scoring")
    demo_p.add_argument("--no-progress", action="store_true", help="no progress bar")
    demo_p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    demo_p.set_defaults(handler=_cmd_demo)

    inspect_p = sub.add_parser("inspect", help="print a one-screen summary of an output folder")
    inspect_p.add_argument("output_dir", metavar="OUT", help="output folder of a run")
    inspect_p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    inspect_p.set_defaults(handler=_cmd_inspect)

    models_p = sub.add_parser(
        "models",
        help="list open_clip architectures and pretrained weights: embedding size, cached here, published CLIP-score threshold, heads",
    )
    models_p.add_argument("--model", help="only architectures whose name contains this")
    models_p.add_argument("--cached", action="store_true", help="only weights already on this machine")
    models_p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    models_p.set_defaults(handler=_cmd_models)

    report_p = sub.add_parser("report", help="write OUT/report.html: funnel, rejects, score and size plots, sample grids")
    report_p.add_argument("output_dir", metavar="OUT", help="output folder of a run")
    report_p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    report_p.set_defaults(handler=_cmd_report)

    remove_p = sub.add_parser(
        "remove",
        help="write a new version of a finished output without the samples a blocklist names",
        description="Shards holding a match are rewritten without it (the rows join rejected/ as blocklisted); "
        "every other file is carried over byte for byte; stats.json, report.html, datasheet.md and shardindex.json are recomputed.",
    )
    remove_p.add_argument("output_dir", metavar="OUT", help="output folder of a finished run (left unchanged)")
    remove_p.add_argument("--blocklist", nargs="+", required=True, metavar="FILE", help="text or Parquet blocklists (see paircurate run --blocklist)")
    remove_p.add_argument("-o", "--output", required=True, metavar="OUT2", help="new folder for the new version")
    remove_p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    remove_p.set_defaults(handler=_cmd_remove)

    train_p = sub.add_parser(
        "verify-train",
        help="train one epoch with open_clip's own training entry point on the shards and check it read exactly the kept samples",
    )
    train_p.add_argument("output_dir", metavar="OUT", help="output folder of a run")
    train_p.add_argument("--model", default=None, help="open_clip model (default: the bundled paircurate-tiny)")
    train_p.add_argument("--pretrained", default=None, help="weights for --model (default: the bundled checkpoint)")
    train_p.add_argument("--batch-size", type=int, default=None, help="default: the largest divisor of the sample count up to 32")
    train_p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    train_p.set_defaults(handler=_cmd_verify_train)
    return parser


def _drop_known_noise(record: logging.LogRecord) -> bool:
    # Beam warns at import time about optional GCP client libraries we never use.
    return "apitools not found" not in record.getMessage()


def _known_flags(parser: argparse.ArgumentParser) -> set[str]:
    flags = set()
    for action in parser._actions:
        flags.update(o for o in action.option_strings if o.startswith("--"))
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                flags |= _known_flags(sub)
    return flags


def unknown_option_error(parser: argparse.ArgumentParser, beam_args: list[str]) -> str | None:
    """The error for the first option neither we nor Beam declare (with the closest known one), or None."""
    options = [a.split("=", 1)[0] for a in beam_args if a.startswith("-")]
    if not options:
        return None
    from paircurate.runners import beam_option_names

    beam_names = beam_option_names()
    for option in options:
        if option not in beam_names:
            close = difflib.get_close_matches(option, sorted(_known_flags(parser) | beam_names), n=1, cutoff=0.75)
            hint = f"; did you mean {close[0]}?" if close else "; see paircurate run --help (Beam options: see Beam's PipelineOptions)"
            return f"unknown option {option}{hint}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args, beam_args = parser.parse_known_args(argv)
    stray = [a for a in beam_args if not a.startswith("-")]
    if stray and all(not a.startswith("-") for a in beam_args):
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    problem = unknown_option_error(parser, beam_args)
    if problem:
        print(f"paircurate: error: {problem}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for h in logging.getLogger().handlers:
        h.addFilter(_drop_known_noise)
    handler: Callable[[argparse.Namespace, list[str]], int] = args.handler
    try:
        return handler(args, beam_args)
    except UserError as exc:
        print(f"paircurate: error: {exc}", file=sys.stderr)
        return 2


def entry_point() -> None:
    """The ``paircurate`` command: ``main``, then an exit that skips the interpreter's teardown.

    Every output file is written, renamed and closed before ``main`` returns,
    and the download processes watch this one; tearing down Beam, pandas, gRPC
    and Arrow module by module only costs time (over a second on 2 cores).
    """
    # Beam asks whether it runs inside IPython by importing it (half a second
    # when IPython is installed); a command-line process never does.
    sys.modules.setdefault("IPython", None)
    try:
        code = main()
    except SystemExit as exc:  # argparse errors and --help
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    entry_point()
