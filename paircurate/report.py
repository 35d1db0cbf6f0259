"""A self-contained HTML report of an output folder: ``paircurate report OUT``.

    >>> from paircurate.report import write_report
    >>> write_report("out")          # -> "out/report.html"

One file, nothing fetched when it is opened: plots are inline PNGs drawn with
matplotlib's Agg backend and thumbnails are read from the tars with
``tarfile`` and inlined as base64, so the report can be mailed or archived next
to the release. URLs of the data are shown as text, never as links or sources.
"""

from __future__ import annotations

import base64
import html
import io
import os
import math
import tarfile
from collections import Counter, defaultdict

import numpy as np
from PIL import Image

from paircurate import storage
from paircurate.inspection import human_bytes, inspect_output, read_column, read_schema, read_table
from paircurate.storage.layout import REPORT_FILE, OutputLayout  # noqa: F401  (REPORT_FILE: re-exported for callers)
from paircurate.schemas.outcomes import Reason, Stage
from paircurate.schemas.records import (
    AESTHETIC_SCORE,
    CAPTION,
    CLIP_SCORE,
    CONCEPT_SCORES,
    CONCEPTS,
    DETAIL,
    DUPLICATE_OF,
    ORIGINAL_HEIGHT,
    ORIGINAL_WIDTH,
    PUNSAFE,
    REASON,
    SIMILARITY,
    STAGE,
    UID,
    URL,
)

THUMB_SIDE = 128
KEPT_GRID = 24
EXAMPLES_PER_REASON = 3
GRID_PER_REASON = 6
TOP_CONCEPTS = 50  # concepts listed in the distribution table
THUMBS_PER_CONCEPT = 4
CONCEPT_GRIDS = 12  # concepts (the most frequent) shown with thumbnails
_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
# Rejects counted and plotted but never shown: no caption, URL or image of them lands in the report.
_COUNT_ONLY_REASONS = {Reason.UNSAFE.value}
_SCORE_COLUMNS = (CLIP_SCORE, AESTHETIC_SCORE, PUNSAFE)

_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
h1,h2{font-weight:600} h2{margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0} td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.grid{display:flex;flex-wrap:wrap;gap:10px} .card{width:180px;border:1px solid #ddd;padding:6px;font-size:12px;word-wrap:break-word}
.card img{display:block;margin:0 auto 4px} .muted{color:#777} .url{font-family:monospace;font-size:11px;color:#555}
.pair{display:flex;gap:6px} .removed{background:#fff4f4}
"""


def write_report(out_dir: str) -> str:
    """Write ``OUT/report.html`` (local or on a store) in one piece and return its path."""
    page = build_report(out_dir)
    path = OutputLayout(out_dir).report
    storage.write_bytes(path, page.encode("utf-8"))
    return path


def _shown(out_dir: str) -> str:
    return out_dir if storage.is_remote(out_dir) else os.path.abspath(out_dir)


def build_report(out_dir: str) -> str:
    ins = inspect_output(out_dir)
    stats = ins.stats or {}
    funnel = stats.get("funnel")
    by_reason, reject_scores = _reject_examples(ins.reject_files, GRID_PER_REASON)
    kept_scores = {c: read_column(ins.parquets, c) for c in _SCORE_COLUMNS}
    kept_head = _first_rows(ins.parquets, [UID, CAPTION, URL, CLIP_SCORE], KEPT_GRID)
    keeper_uids = {r[DUPLICATE_OF] for rs in by_reason.values() for r in rs[:GRID_PER_REASON] if r.get(DUPLICATE_OF)}
    concept_counts, concept_examples = _concept_distribution(ins.parquets)
    grid_concepts = [label for label, _ in concept_counts.most_common(CONCEPT_GRIDS)]
    concept_uids = {r[UID] for label in grid_concepts for r in concept_examples[label]}
    thumbs = read_thumbnails(ins.tars, {r[UID] for r in kept_head} | keeper_uids | concept_uids)
    keeper_captions = _captions_of(ins.parquets, keeper_uids)

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>paircurate report: {_e(_shown(out_dir))}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>paircurate report</h1><p class=\"muted\">{_e(_shown(out_dir))}</p>",
        _overview(ins),
    ]
    if funnel:
        parts += [_funnel_section(funnel), _reasons_section(funnel, by_reason)]
    else:
        parts.append("<p>No stats.json: the run did not finish, so there is no funnel.</p>")
    parts.append(_hosts_section(stats.get("hosts")))
    parts.append(_blocklist_section(stats.get("blocklists")))
    parts.append(_history_section(stats))
    parts.append(_clip_section(kept_scores[CLIP_SCORE], reject_scores[CLIP_SCORE], stats.get("clip_threshold")))
    parts.append(_heads_section(kept_scores, reject_scores, stats, (funnel or {}).get("reasons", {})))
    parts.append(_size_section(ins.parquets))
    if stats.get("balance"):
        parts.append(_balance_section(stats["balance"]))
    if concept_counts:
        parts.append(_concepts_section(concept_counts, {c: concept_examples[c] for c in grid_concepts}, thumbs))
    parts.append(_kept_grid(kept_head, thumbs))
    parts.append(_reject_grids(by_reason, thumbs, keeper_captions))
    parts.append("</body></html>")
    return "\n".join(parts)


# --- data -------------------------------------------------------------------------------------------


def _reject_examples(paths: list[str], per_reason: int) -> tuple[dict[str, list[dict]], dict[str, np.ndarray]]:
    """The first ``per_reason`` rejects of each reason, and every reject's scores (CLIP and heads).

    One shard's reject file at a time, keeping only the examples, so memory
    does not grow with the number of rejects of a large run. Reasons in
    ``_COUNT_ONLY_REASONS`` (unsafe) keep no examples at all.
    """
    columns = [UID, URL, CAPTION, STAGE, REASON, DETAIL, DUPLICATE_OF, SIMILARITY, *_SCORE_COLUMNS]
    examples: dict[str, list[dict]] = defaultdict(list)
    scores: dict[str, list[np.ndarray]] = {c: [] for c in _SCORE_COLUMNS}
    for p in paths:
        present = [c for c in columns if c in read_schema(p).names]
        table = read_table(p, columns=present)
        for c in _SCORE_COLUMNS:
            if c in present:
                scores[c].append(table.column(c).drop_null().to_numpy().astype(np.float64))
        for r in table.to_pylist():
            if r[REASON] not in _COUNT_ONLY_REASONS and len(examples[r[REASON]]) < per_reason:
                examples[r[REASON]].append(r)
    return examples, {c: (np.concatenate(v) if v else np.zeros(0)) for c, v in scores.items()}


def _first_rows(paths: list[str], columns: list[str], n: int) -> list[dict]:
    rows: list[dict] = []
    for p in paths:
        if len(rows) >= n:
            break
        present = [c for c in columns if c in read_schema(p).names]
        rows += read_table(p, columns=present).slice(0, n - len(rows)).to_pylist()
    return rows


def _concept_distribution(paths: list[str]) -> tuple[Counter, dict[str, list[dict]]]:
    """Kept samples per top-1 concept tag, and the first few samples of each (one shard at a time)."""
    counts: Counter = Counter()
    examples: dict[str, list[dict]] = defaultdict(list)
    for p in paths:
        if CONCEPTS not in read_schema(p).names:
            continue
        for r in read_table(p, columns=[UID, CAPTION, CONCEPTS, CONCEPT_SCORES]).to_pylist():
            if not r[CONCEPTS]:
                continue
            label = r[CONCEPTS][0]
            counts[label] += 1
            if len(examples[label]) < THUMBS_PER_CONCEPT:
                examples[label].append(r)
    return counts, examples


def flatness(counts) -> float:
    """Entropy of a distribution over its maximum, log2(number of labels): 1 when every label is equally frequent."""
    values = [c for c in counts if c > 0]
    total = sum(values)
    if len(values) < 2:
        return 1.0
    entropy = -sum(c / total * math.log2(c / total) for c in values)
    return entropy / math.log2(len(values))


def _captions_of(paths: list[str], uids: set[str]) -> dict[str, str]:
    if not uids:
        return {}
    found = {}
    for p in paths:
        for r in read_table(p, columns=[UID, CAPTION]).to_pylist():
            if r[UID] in uids:
                found[r[UID]] = r[CAPTION]
    return found


def read_thumbnails(tars: list[str], uids: set[str], side: int = THUMB_SIDE) -> dict[str, str]:
    """uid -> ``data:image/jpeg;base64,...`` for the samples of ``uids`` found in the tars."""
    found: dict[str, str] = {}
    if not uids:
        return found
    for path in tars:
        with storage.open_read(path) as fh, tarfile.open(fileobj=fh) as tf:
            for member in tf:
                if not member.isfile():
                    continue
                base = os.path.basename(member.name)
                key, _, ext = base.partition(".")
                if key not in uids or key in found or ext.lower() not in _IMAGE_EXTS:
                    continue
                data = tf.extractfile(member).read()
                try:
                    found[key] = _thumbnail(data, side)
                except OSError:
                    continue  # a sample whose bytes Pillow cannot reopen just shows no picture
        if len(found) == len(uids):
            break
    return found


def _thumbnail(data: bytes, side: int) -> str:
    img = Image.open(io.BytesIO(data))
    img.thumbnail((side, side))
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _plot(draw) -> str:
    """Run ``draw(ax)`` on a fresh Agg figure and return it as an inline ``<img>``."""
    import matplotlib

    matplotlib.use("Agg", force=True)  # never a display: the report is built on servers
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.2), dpi=90)
    try:
        draw(ax)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return f'<img class="plot" alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode("ascii")}">'


# --- sections ---------------------------------------------------------------------------------------


def _e(value) -> str:
    return html.escape("" if value is None else str(value))


def _overview(ins) -> str:
    version = ins.schema_version or "unknown"
    return (
        '<h2>Output</h2><table id="overview">'
        f'<tr><th>shards</th><td class="num" id="overview-shards">{len(ins.tars)}</td></tr>'
        f'<tr><th>samples</th><td class="num" id="overview-samples">{ins.samples}</td></tr>'
        f'<tr><th>tar bytes</th><td class="num" id="overview-tar-bytes">{ins.tar_bytes} ({_e(human_bytes(ins.tar_bytes))})</td></tr>'
        f"<tr><th>schema version</th><td>{_e(version)}</td></tr></table>"
    )


def _funnel_section(funnel: dict) -> str:
    rows = []
    for s in funnel["stages"]:
        stage = _e(s["stage"])
        rejected = sum(s["rejected"].values())
        rows.append(
            f'<tr><td>{stage}</td><td class="num funnel-in" data-stage="{stage}">{s["in"]}</td>'
            f'<td class="num funnel-rejected" data-stage="{stage}">{rejected}</td>'
            f'<td class="num funnel-out" data-stage="{stage}">{s["out"]}</td></tr>'
        )
    stages = [s["stage"] for s in funnel["stages"]]
    outs = [s["out"] for s in funnel["stages"]]

    def draw(ax):
        labels = ["input"] + stages
        values = [funnel["input_rows"]] + outs
        bars = ax.bar(labels, values, color=["#888"] + ["#4878a8"] * len(stages))
        ax.bar_label(bars, fontsize=8)
        ax.set_ylabel("rows remaining")
        ax.set_title("rows remaining after each stage")

    return (
        "<h2>Funnel</h2>"
        f'<p>input rows <span id="funnel-input-rows">{funnel["input_rows"]}</span> &rarr; kept '
        f'<span id="funnel-kept">{funnel["kept"]}</span>, rejected <span id="funnel-rejected">{funnel["rejected"]}</span></p>'
        '<table id="funnel"><tr><th>stage</th><th class="num">in</th><th class="num">rejected</th><th class="num">out</th></tr>'
        + "".join(rows)
        + "</table>"
        + _plot(draw)
    )


def _reasons_section(funnel: dict, by_reason: dict[str, list[dict]]) -> str:
    stage_of = {reason: s["stage"] for s in funnel["stages"] for reason in s["rejected"]}
    order = {st.value: i for i, st in enumerate(Stage)}
    reasons = sorted(funnel["reasons"].items(), key=lambda kv: (order.get(stage_of.get(kv[0], ""), 99), -kv[1], kv[0]))
    rows = []
    for reason, count in reasons:
        examples = "".join(
            f'<div><span class="url">{_e(r.get(URL))}</span><br>&ldquo;{_e(r.get(CAPTION))}&rdquo; '
            f'<span class="muted">{_e(r.get(DETAIL))}</span></div>'
            for r in by_reason.get(reason, [])[:EXAMPLES_PER_REASON]
        )
        rows.append(
            f'<tr><td>{_e(stage_of.get(reason, ""))}</td><td>{_e(reason)}</td>'
            f'<td class="num reason-count" data-reason="{_e(reason)}">{count}</td><td>{examples}</td></tr>'
        )
    if not rows:
        return "<h2>Reject reasons</h2><p>No rejects.</p>"
    return (
        '<h2>Reject reasons</h2><table id="reasons"><tr><th>stage</th><th>reason</th><th class="num">count</th>'
        "<th>examples (url, caption, detail)</th></tr>" + "".join(rows) + "</table>"
    )


def _score_histogram(column: str, kept: np.ndarray, rejected: np.ndarray, threshold) -> str:
    """Kept vs rejected histogram of one score column, with the threshold applied to it."""
    both = np.concatenate([kept, rejected])
    bins = np.linspace(both.min(), both.max(), 31) if both.max() > both.min() else 10

    def draw(ax):
        if kept.size:
            ax.hist(kept, bins=bins, alpha=0.6, label=f"kept ({kept.size})", color="#4878a8")
        if rejected.size:
            ax.hist(rejected, bins=bins, alpha=0.6, label=f"rejected with a score ({rejected.size})", color="#d0604d")
        if threshold is not None:
            ax.axvline(threshold, color="k", linestyle="--", label=f"threshold {threshold:g}")
        ax.set_xlabel(column)
        ax.set_ylabel("pairs")
        ax.legend(fontsize=8)

    return _plot(draw)


def _clip_section(kept: np.ndarray, rejected: np.ndarray, threshold) -> str:
    if kept.size == 0 and rejected.size == 0:
        return "<h2>CLIP scores</h2><p>No CLIP scores (the run was made without --clip).</p>"
    note = f'<p>threshold applied: <span id="clip-threshold">{_e(threshold)}</span></p>' if threshold is not None else ""
    return "<h2>CLIP scores</h2>" + note + _score_histogram(CLIP_SCORE, kept, rejected, threshold)


def _heads_section(kept: dict[str, np.ndarray], rejected: dict[str, np.ndarray], stats: dict, reasons: dict) -> str:
    """Aesthetic and safety heads: histograms only; unsafe rejects are never shown, only counted."""
    out = []
    for column, title, key, reason, head in (
        (AESTHETIC_SCORE, "Aesthetic scores", "min_aesthetic", Reason.LOW_AESTHETIC.value, "aesthetic_head"),
        (PUNSAFE, "Safety (punsafe)", "max_punsafe", Reason.UNSAFE.value, "safety_head"),
    ):
        if kept[column].size == 0 and rejected[column].size == 0:
            continue
        threshold = stats.get(key)
        head_info = stats.get(head) or {}
        source = head_info.get("source") if isinstance(head_info, dict) else head_info
        note = (f'<p>head: <span class="url">{_e(source)}</span>; threshold ({key}): '
                f'<span id="{key}">{_e(threshold)}</span>; rejected as {reason}: '
                f'<span id="{reason}-count">{reasons.get(reason, 0)}</span></p>')
        if column == PUNSAFE:
            note += "<p class=\"muted\">Images, captions and URLs of unsafe rejects are never shown in this report.</p>"
        out.append(f"<h2>{title}</h2>" + note + _score_histogram(column, kept[column], rejected[column], threshold))
    return "".join(out)


def _size_section(parquets: list[str]) -> str:
    w = read_column(parquets, ORIGINAL_WIDTH)
    h = read_column(parquets, ORIGINAL_HEIGHT)
    if w.size == 0 or w.size != h.size:
        return "<h2>Image sizes</h2><p>No kept images.</p>"
    aspect = np.maximum(w, h) / np.maximum(np.minimum(w, h), 1)

    def sizes(ax):
        # Crawled sizes repeat a lot (320x240, 1024x768): marker area shows how many share one.
        pairs, counts = np.unique(np.stack([w, h], axis=1), axis=0, return_counts=True)
        ax.scatter(pairs[:, 0], pairs[:, 1], s=8 + 120 * counts / counts.max(), alpha=0.5, color="#4878a8")
        ax.set_xlabel("original_width")
        ax.set_ylabel("original_height")
        ax.set_title("original size of kept images")

    def ratios(ax):
        ax.hist(aspect, bins=30, color="#4878a8")
        ax.set_xlabel("aspect ratio (longer / shorter side)")
        ax.set_ylabel("images")

    return "<h2>Image sizes (as downloaded)</h2>" + _plot(sizes) + _plot(ratios)


def _balance_section(balance: dict) -> str:
    rows = []
    for key, label in (("entries", "entries matched"), ("matches", "(sample, entry) matches"), ("entropy_bits", "entropy (bits)"),
                       ("flatness", "flatness (entropy / log2 entries)"), ("entries_at_cap", "entries at or over the cap"),
                       ("entries_over_cap", "entries over the cap")):
        before, after = balance["before"].get(key), balance["after"].get(key)
        rows.append(f'<tr><th>{_e(label)}</th><td class="num balance-before" data-key="{key}">{_e(before)}</td>'
                    f'<td class="num balance-after" data-key="{key}">{_e(after)}</td></tr>')
    tops = []
    for side in ("before", "after"):
        items = "".join(f"<tr><td>{_e(entry)}</td><td class=\"num\">{count}</td></tr>" for entry, count in balance[side]["top"])
        tops.append(f'<div><b>{side}</b><table class="balance-top" data-side="{side}">{items}</table></div>')
    return (
        f"<h2>Balancing</h2><p>cap T = <span id=\"balance-cap\">{_e(balance.get('balance_cap'))}</span> samples per entry, "
        f"entries: {_e(balance.get('balance_entries'))} (by {_e(balance.get('balance_by'))}); "
        f"samples matching an entry: {_e(balance.get('samples_matched'))}, matching none: {_e(balance.get('samples_unmatched'))}</p>"
        '<table id="balance"><tr><th></th><th>before</th><th>after</th></tr>' + "".join(rows) + "</table>"
        '<div class="pair">' + "".join(tops) + "</div>"
    )


def _concepts_section(counts: Counter, examples: dict[str, list[dict]], thumbs: dict[str, str]) -> str:
    top = counts.most_common(TOP_CONCEPTS)
    rows = "".join(f'<tr><td>{_e(label)}</td><td class="num concept-count" data-concept="{_e(label)}">{n}</td></tr>' for label, n in top)

    def draw(ax):
        shown = top[:20]
        ax.barh([label for label, _ in shown][::-1], [n for _, n in shown][::-1], color="#4878a8")
        ax.set_xlabel("kept samples (top-1 concept)")
        ax.tick_params(axis="y", labelsize=7)

    grids = []
    for label, rows_of in examples.items():
        cards = []
        for r in rows_of:
            img = f'<img src="{thumbs[r[UID]]}" alt="sample tagged {_e(label)}">' if r[UID] in thumbs else ""
            tags = ", ".join(f"{c} {s:.2f}" for c, s in zip(r[CONCEPTS], r[CONCEPT_SCORES] or []))
            cards.append(f'<div class="card">{img}{_e(r.get(CAPTION))}<br><span class="muted">{_e(tags)}</span></div>')
        cards = "".join(cards)
        grids.append(f'<h3>{_e(label)} ({counts[label]})</h3><div class="grid concept-grid" data-concept="{_e(label)}">{cards}</div>')
    return (
        "<h2>Concepts of kept samples</h2>"
        f'<p>{len(counts)} distinct top-1 concepts over {sum(counts.values())} samples; flatness '
        f'<span id="concept-flatness">{flatness(counts.values()):.3f}</span> (entropy / log2 labels seen: 1 = every label equally frequent)</p>'
        f'<table id="concepts"><tr><th>concept (top {len(top)})</th><th class="num">kept samples</th></tr>{rows}</table>'
        + _plot(draw)
        + "".join(grids)
    )


def _kept_grid(rows: list[dict], thumbs: dict[str, str]) -> str:
    cards = []
    for r in rows:
        img = f'<img src="{thumbs[r[UID]]}" alt="kept sample">' if r[UID] in thumbs else ""
        score = f'<br><span class="muted">clip {r[CLIP_SCORE]:.3f}</span>' if r.get(CLIP_SCORE) is not None else ""
        cards.append(f'<div class="card kept">{img}{_e(r.get(CAPTION))}{score}</div>')
    return f'<h2>Kept samples (first {len(rows)})</h2><div class="grid" id="kept-grid">' + "".join(cards) + "</div>"


def _reject_grids(by_reason: dict[str, list[dict]], thumbs: dict[str, str], keeper_captions: dict[str, str]) -> str:
    """Rejected images are never stored, so a reject shows its text; a duplicate shows the sample it copies."""
    out = ["<h2>Rejects by reason</h2>"]
    for reason in sorted(by_reason):
        cards = []
        for r in by_reason[reason][:GRID_PER_REASON]:
            score = f'<br><span class="muted">clip {r[CLIP_SCORE]:.3f}</span>' if r.get(CLIP_SCORE) is not None else ""
            if r.get(AESTHETIC_SCORE) is not None:
                score += f'<br><span class="muted">aesthetic {r[AESTHETIC_SCORE]:.2f}</span>'

            removed = (
                f'<div class="removed"><b>removed</b>: &ldquo;{_e(r.get(CAPTION))}&rdquo;{score}'
                f'<br><span class="url">{_e(r.get(URL))}</span><br><span class="muted">{_e(r.get(DETAIL))}</span></div>'
            )
            keeper = r.get(DUPLICATE_OF)
            if keeper:
                img = f'<img src="{thumbs[keeper]}" alt="kept duplicate">' if keeper in thumbs else ""
                sim = f" (similarity {r[SIMILARITY]:.3f})" if r.get(SIMILARITY) is not None else ""
                kept_caption = keeper_captions.get(keeper)
                kept_text = f"&ldquo;{_e(kept_caption)}&rdquo;" if kept_caption is not None else f"uid {_e(keeper)} (not in this output)"
                cards.append(f'<div class="card dup">{img}<b>kept</b>{_e(sim)}: {kept_text}{removed}</div>')
            else:
                cards.append(f'<div class="card">{removed}</div>')
        out.append(
            f'<h3>{_e(reason)} ({len(by_reason[reason])})</h3><div class="grid reject-grid" data-reason="{_e(reason)}">'
            + "".join(cards)
            + "</div>"
        )
    return "".join(out)


def _hosts_section(hosts: dict | None) -> str:
    """Top hosts by failures: a table, a stacked bar per host by failure class, and the plain diagnosis."""
    if not hosts or not hosts.get("top_by_volume"):
        return ""
    from paircurate.pipeline.ledger import FAILURE_CLASSES

    classes = [c for c in FAILURE_CLASSES if hosts["failures_by_class"].get(c)]
    diagnosis = "".join(f"<li>{_e(line)}</li>" for line in hosts.get("diagnosis", []))
    parts = [
        "<h2>Hosts</h2>",
        f'<p>{hosts["hosts"]} hosts, {hosts["attempts"]} rows sent to them, {hosts["failed"]} failed to download.</p>',
        f'<ul id="host-diagnosis">{diagnosis}</ul>' if diagnosis else "",
    ]
    for title, key in (("by failures", "top_by_failures"), ("by volume", "top_by_volume")):
        rows = hosts.get(key) or []
        if not rows:
            continue
        head = "".join(f'<th class="num">{_e(c)}</th>' for c in classes)
        body = "".join(
            f'<tr><td>{_e(r["host"])}</td><td class="num">{r["attempts"]}</td><td class="num">{r["kept"]}</td>'
            f'<td class="num host-failed" data-host="{_e(r["host"])}">{r["failed"]}</td><td class="num">{r["filtered"]}</td>'
            + "".join(f'<td class="num">{r["failures"].get(c, 0)}</td>' for c in classes)
            + "</tr>"
            for r in rows
        )
        parts.append(
            f'<h3>Top hosts {title}</h3><table id="hosts-{key}"><tr><th>host</th><th class="num">attempts</th><th class="num">kept</th>'
            f'<th class="num">failed</th><th class="num">filtered</th>{head}</tr>{body}</table>'
        )
    worst = (hosts.get("top_by_failures") or [])[:10]
    if worst and classes:

        def draw(ax):
            left = np.zeros(len(worst))
            names = [r["host"] for r in worst][::-1]
            for c in classes:
                values = np.array([r["failures"].get(c, 0) for r in worst][::-1], dtype=float)
                if values.any():
                    ax.barh(names, values, left=left[: len(values)], label=c)
                    left = left + values
            ax.set_xlabel("failed rows")
            ax.set_title("failures of the top hosts, by class")
            ax.legend(fontsize=7)

        parts.append(_plot(draw))
    return "".join(parts)


def _blocklist_section(blocklists: dict | None) -> str:
    """Counts per list only: the rows a blocklist removed are never shown."""
    if not blocklists:
        return ""
    rows = "".join(
        f'<tr><td>{_e(name)}</td><td class="num">{sum((facts.get("entries") or {}).values()) if facts.get("entries") else ""}</td>'
        f'<td class="num blocklist-rows" data-list="{_e(name)}">{facts.get("rows", 0)}</td>'
        f'<td>{_e(", ".join(f"{k} {v}" for k, v in facts.get("by_kind", {}).items()))}</td></tr>'
        for name, facts in blocklists.items()
    )
    return (
        '<h2>Blocklists</h2><p>Rows removed per list. The removed rows\' URLs and images are not part of the output.</p>'
        '<table id="blocklists"><tr><th>list</th><th class="num">entries</th><th class="num">rows removed</th><th>by entry kind</th></tr>'
        + rows + "</table>"
    )


def _history_section(stats: dict) -> str:
    retries, removals = stats.get("retries") or [], stats.get("removals") or []
    if not retries and not removals:
        return ""
    rows = "".join(
        f'<tr><td>retry</td><td>{_e(r.get("started"))}</td><td class="num">{r.get("retried")}</td>'
        f'<td class="num retry-recovered">{r.get("recovered")}</td><td>{_e(", ".join(r.get("reasons", [])))}</td></tr>'
        for r in retries
    ) + "".join(
        f'<tr><td>remove</td><td>{_e(r.get("when"))}</td><td class="num">{r.get("rows")}</td><td></td>'
        f'<td>{_e(", ".join(r.get("lists", [])))}</td></tr>'
        for r in removals
    )
    return (
        '<h2>Retries and removals</h2><table id="history"><tr><th>what</th><th>when (UTC)</th><th class="num">rows</th>'
        '<th class="num">recovered</th><th>reasons / lists</th></tr>' + rows + "</table>"
    )
