"""``OUT/datasheet.md``: a Datasheet for the dataset (Gebru et al., "Datasheets for Datasets", 2021).

The sections and questions follow the paper. What the run knows is filled in
from ``stats.json`` and the shards (counts, image sizes, caption lengths and
languages, inputs with their SHA-256, crawl settings, every stage with its
thresholds, the funnel, retries and blocklists); what only the publisher can
know (motivation, consent, intended uses, distribution, maintenance) is left
as questions marked ``PUBLISHER:`` so a release cannot go out with them
silently unanswered (``grep PUBLISHER: datasheet.md``).
"""

from __future__ import annotations

import os

import numpy as np

from paircurate import storage
from paircurate.inspection import QUANTILES, human_bytes, read_schema, read_table
from paircurate.storage.layout import OutputLayout
from paircurate.schemas import records as R

# Captions language-identified (the first ones, in shard order). 500 give each
# language's share with a standard error of at most 2.3 points for ~0.06 s of CPU;
# 2,000 took ~0.3 s, 4 % of a whole 3,000-image run.
LANGUAGE_SAMPLE = 500
_ASK = "PUBLISHER:"


def write_datasheet(out_dir: str, stats: dict) -> str:
    path = OutputLayout(out_dir).datasheet
    storage.write_bytes(path, build_datasheet(out_dir, stats).encode("utf-8"))
    return path


def _q(values: np.ndarray, fmt: str = "{:.0f}") -> str:
    if values.size == 0:
        return "n/a"
    return ", ".join(f"{name} {fmt.format(float(np.quantile(values, q)))}" for name, q in QUANTILES)


def _kept_columns(out_dir: str) -> dict[str, list]:
    wanted = [R.ORIGINAL_WIDTH, R.ORIGINAL_HEIGHT, R.CAPTION, R.CLIP_SCORE, R.BYTE_SIZE]
    cols: dict[str, list] = {c: [] for c in wanted}
    for path in OutputLayout(out_dir).shard_files("parquet"):
        present = [c for c in wanted if c in read_schema(path).names]
        table = read_table(path, columns=present)
        for c in present:
            cols[c].extend(table.column(c).to_pylist())
    return cols


def _languages(captions: list[str | None]) -> list[tuple[str, int]]:
    from paircurate.filters.caption import identify_language

    counts: dict[str, int] = {}
    for caption in captions[:LANGUAGE_SAMPLE]:
        if caption:
            lang = identify_language(caption)[0]
            counts[lang] = counts.get(lang, 0) + 1
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def _ask(*questions: str) -> list[str]:
    return [f"- **{_ASK}** {q}" for q in questions]


def build_datasheet(out_dir: str, stats: dict) -> str:
    cfg = stats.get("config", {})
    funnel = stats.get("funnel", {})
    dl = cfg.get("download", {})
    cols = _kept_columns(out_dir)
    w = np.array([v for v in cols[R.ORIGINAL_WIDTH] if v is not None], dtype=np.float64)
    h = np.array([v for v in cols[R.ORIGINAL_HEIGHT] if v is not None], dtype=np.float64)
    captions = cols[R.CAPTION]
    chars = np.array([len(c) for c in captions if c], dtype=np.float64)
    words = np.array([len(c.split()) for c in captions if c], dtype=np.float64)
    scores = np.array([v for v in cols[R.CLIP_SCORE] if v is not None], dtype=np.float64)
    langs = _languages(captions)
    sampled = min(len(captions), LANGUAGE_SAMPLE)
    reasons = funnel.get("reasons", {})
    name = out_dir.rstrip("/").rsplit("/", 1)[-1] if storage.is_remote(out_dir) else os.path.basename(os.path.abspath(out_dir))

    lines = [
        f"# Datasheet: {name}",
        "",
        "Following *Datasheets for Datasets* (Gebru et al., 2021). Filled in by paircurate from the run; "
        f"every line marked **{_ASK}** is a question only the dataset's publisher can answer.",
        "",
        "## Motivation",
        "",
        *_ask(
            "For what purpose was the dataset created? Was there a specific task or gap in mind?",
            "Who created the dataset, and on behalf of which entity?",
            "Who funded its creation?",
        ),
        "",
        "## Composition",
        "",
        f"- Instances: image-text pairs. {funnel.get('kept', 0)} kept of {funnel.get('input_rows', 0)} input rows "
        f"({funnel.get('rejected', 0)} rejected, each with a reason in `rejected/`).",
        f"- Shards: {stats.get('shards', 0)} WebDataset tars (`NNNNN.tar`) with Parquet metadata (`NNNNN.parquet`); "
        "`shardindex.json` lists them with sample counts.",
        f"- Original image size (width): {_q(w)} px; (height): {_q(h)} px.",
        f"- Stored images: {cfg.get('image', {}).get('encode_format', '?')}, resize mode "
        f"{cfg.get('image', {}).get('resize_mode', '?')} to {cfg.get('image', {}).get('image_size', '?')} px.",
        f"- Caption length (characters): {_q(chars)}; (words): {_q(words)}.",
        f"- Caption languages (py3langid, first {sampled} captions): "
        + (", ".join(f"{lang} {n}" for lang, n in langs[:10]) if langs else "n/a") + ".",
    ]
    if scores.size:
        lines.append(f"- CLIP score of kept pairs ({stats.get('clip_model', cfg.get('clip', {}).get('model'))}): {_q(scores, '{:.3f}')}.")
    lines += [
        "- Is it a sample of a larger set? It is what survived the filters below from the input lists; "
        "the rejected rows and why are listed in `rejected/`.",
        *_ask(
            "Does the dataset contain data that might be considered confidential, offensive, or that identifies people? "
            "(paircurate does not detect faces, personal data or unsafe content unless a stage for it ran.)",
            "Are there recommended data splits?",
        ),
        "",
        "## Collection process",
        "",
        "- Inputs (URL + caption lists):",
    ]
    for item in stats.get("inputs", []):
        lines.append(f"  - `{item['path']}` ({item.get('format')}, {item.get('rows')} rows, SHA-256 `{item.get('sha256', 'n/a')}`)")
    lines += [
        f"- Downloaded by paircurate {stats.get('versions', {}).get('paircurate', '?')} between {stats.get('started', '?')} and "
        f"{stats.get('finished', '?')} (UTC), User-Agent `{dl.get('user_agent', '?')}`.",
        f"- Politeness: at most {dl.get('per_domain_concurrency')} requests in flight per host per worker"
        f"{' (adaptive: starting lower and growing only while the host keeps up)' if dl.get('adaptive_concurrency') else ''}, "
        f"{dl.get('per_domain_rps') or 'no'} requests/s limit per host, Retry-After honoured up to {dl.get('retry_after_max')} s, "
        f"{dl.get('retries')} retries per URL within a {dl.get('deadline')} s deadline.",
        f"- Opt-out: X-Robots-Tag values {', '.join(dl.get('opt_out_tags', [])) or '(none)'} honoured; "
        f"robots.txt {'honoured for ' + repr(dl.get('robots_user_agent')) if dl.get('respect_robots_txt') else 'not consulted'}; "
        f"{reasons.get('opted_out', 0)} rows opted out.",
        f"- Private and loopback addresses {'allowed' if dl.get('allow_private_network') else 'refused'} ({reasons.get('blocked_address', 0)} rows refused).",
    ]
    for attempt in stats.get("retries", []):
        lines.append(
            f"- Retry at {attempt.get('started')}: {attempt.get('retried')} rows rejected for {', '.join(attempt.get('reasons', []))} "
            f"re-attempted, {attempt.get('recovered')} recovered."
        )
    lines += [
        *_ask(
            "Did the individuals in the images, or the authors of the pages, consent to this use? Were they notified?",
            "Were any ethical review processes conducted?",
        ),
        "",
        "## Preprocessing, cleaning, labeling",
        "",
        "Every input row went through these stages in order; a row rejected at one stage is recorded once, with its reason.",
        "",
        "| stage | in | rejected | out | reasons |",
        "|---|---:|---:|---:|---|",
    ]
    for s in funnel.get("stages", []):
        detail = ", ".join(f"{k} {v}" for k, v in s["rejected"].items()) or "-"
        lines.append(f"| {s['stage']} | {s['in']} | {sum(s['rejected'].values())} | {s['out']} | {detail} |")
    cap, img, clip, dedup = cfg.get("caption", {}), cfg.get("image", {}), cfg.get("clip", {}), cfg.get("dedup", {})
    lines += [
        "",
        f"- Captions: ftfy + HTML unescape + whitespace; min words {cap.get('min_words')}, min characters {cap.get('min_chars')}, "
        f"boilerplate rejected: {cap.get('reject_boilerplate')}, English only: {cap.get('english_only')}.",
        f"- Images: decoded with Pillow, EXIF-oriented; min side {img.get('min_image_size')} px, max aspect ratio "
        f"{img.get('max_aspect_ratio') or 'off'}, decompression-bomb limit {img.get('max_pixels')} pixels.",
    ]
    if clip.get("enabled"):
        lines.append(
            f"- CLIP: open_clip {clip.get('model')} / {clip.get('pretrained')}, threshold {stats.get('clip_threshold', clip.get('threshold'))}"
            f"{', top ' + str(clip.get('top_percent')) + ' %' if clip.get('top_percent') else ''}"
            f"{', weights SHA-256 ' + stats['clip_weights_sha256'] if stats.get('clip_weights_sha256') else ' (weights checksum unknown: not a local file)'}."
        )
    else:
        lines.append("- CLIP scoring: off.")
    lines.append(
        f"- Dedup: exact (URL, SHA-256) {dedup.get('exact')}, perceptual (pHash within {dedup.get('phash_threshold')} bits) "
        f"{dedup.get('perceptual')}, semantic {dedup.get('semantic') and clip.get('enabled')}"
        f"{', against ' + dedup['dedup_against'] if dedup.get('dedup_against') else ''}"
        f"{', decontaminated against ' + dedup['decontaminate_against'] if dedup.get('decontaminate_against') else ''}."
    )
    concepts = cfg.get("concepts", {})
    if concepts.get("labels"):
        lines.append(f"- Concept tags: the top {concepts.get('top_k')} labels of `{concepts['labels']}` per image, zero-shot with the CLIP model above.")
    balance = stats.get("balance")
    if balance:
        before, after = balance["before"], balance["after"]
        lines.append(
            f"- Balanced as MetaCLIP (by {balance['balance_by']}, entries `{balance['balance_entries']}`): about {balance['balance_cap']} samples "
            f"kept per entry; entropy of the entry distribution {before['entropy_bits']} -> {after['entropy_bits']} bits, "
            f"entries over the cap {before['entries_over_cap']} -> {after['entries_over_cap']}; samples naming no entry: {balance['samples_unmatched']}."
        )
    blocklists = stats.get("blocklists") or {}
    if blocklists:
        lines.append("- Blocklists (rows removed; counts only, the matched URLs and images are not part of the release):")
        for list_name, facts in blocklists.items():
            lines.append(f"  - `{list_name}`: {facts.get('rows', 0)} rows")
    for removal in stats.get("removals", []):
        lines.append(f"- Removed after the run ({removal.get('when')}): {removal.get('rows')} rows matching {', '.join(removal.get('lists', []))}.")
    lines += [
        f"- Software: {', '.join(f'{k} {v}' for k, v in sorted(stats.get('versions', {}).items()))}.",
        "- The raw data (the input lists) is kept by the publisher at the paths above; the crawled originals are not kept.",
        "",
        "## Uses",
        "",
        *_ask(
            "What tasks has the dataset been used for, and what should it not be used for?",
            "Is there anything about its composition or collection that might affect future uses (biases, under-represented groups)?",
        ),
        "",
        "## Distribution",
        "",
        f"- Files: {stats.get('shards', 0)} tars, {human_bytes(sum(storage.size(p) for p in OutputLayout(out_dir).shard_files('tar')))}.",
        *_ask(
            "Under which license and terms of use is it distributed? Do third parties hold rights to the images?",
            "Will it be distributed as URLs only, or with images?",
        ),
        "",
        "## Maintenance",
        "",
        "- Removal requests: `paircurate remove OUT --blocklist FILE -o OUT2` writes a new version without the listed "
        "URLs, domains or images; everything else stays byte-identical.",
        *_ask(
            "Who maintains the dataset, and how can they be contacted?",
            "Will it be updated (errata, removals, new versions), how often, and how will users learn of it?",
        ),
        "",
    ]
    return "\n".join(lines)
