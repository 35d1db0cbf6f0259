"""``paircurate demo``: a whole curation run that needs nothing from outside.

It renders captioned synthetic images, serves them (plus broken URLs, an
undecodable file, HTML, bad captions and repeated rows) from a loopback HTTP
server on a free port, runs the real pipeline over them and prints the funnel.
With CLIP on it uses the project's own small model, so some captions that were
deliberately swapped for wrong ones are rejected as ``low_clip_score``, and its
demo heads (``--aesthetic-head auto --safety-head auto``, loaded like LAION's)
reject small shapes as ``low_aesthetic`` and red ones as ``unsafe``.
"""

from __future__ import annotations

import io
import os
import random

import pyarrow as pa
import pyarrow.parquet as pq

from paircurate.schemas.config import PipelineConfig
from paircurate.testing.loopback import LoopbackServer
from paircurate.testing.synthetic import make_samples, mismatched_caption

DEMO_SEED = 1234
SWAPPED_FRACTION = 0.15
TINY_MODEL = "paircurate-tiny"
# The demo world's heads (embeddings/train_heads.py): large shapes score ~7.8, small ones ~3.2.
DEMO_MIN_AESTHETIC = 5.0
DEMO_MAX_PUNSAFE = 0.5  # LAION's cut


def build_demo_input(server: LoopbackServer, out_path: str, num_pairs: int, seed: int = DEMO_SEED) -> dict[str, int]:
    """Register demo images on ``server`` and write the URL + caption list.

    Returns how many rows of each kind were written, so callers can check the funnel.
    """
    rng = random.Random(seed)
    rows: list[dict] = []
    kinds: dict[str, int] = {}

    def add(kind: str, url, caption) -> None:
        rows.append({"url": url, "caption": caption, "kind": kind})
        kinds[kind] = kinds.get(kind, 0) + 1

    for i, sample in enumerate(make_samples(num_pairs, seed=seed, size=rng.choice((160, 224, 288)))):
        width = rng.choice((160, 224, 320, 400))
        height = rng.choice((160, 224, 320))
        image = sample.image.resize((width, height))
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=90)
        path = f"/img/{i:05d}.jpg"
        server.add(path, buf.getvalue(), content_type="image/jpeg")
        if rng.random() < SWAPPED_FRACTION:
            add("swapped_caption", server.url(path), mismatched_caption(rng, sample.scene))
        else:
            add("ok", server.url(path), sample.caption)

    # Copies of the web: the same file elsewhere, re-encoded, resized.
    original = make_samples(1, seed=seed + 2, size=288)[0]
    variants = {"/copies/original.jpg": (original.image, 92), "/copies/mirror.jpg": (original.image, 92),
                "/copies/reencoded.jpg": (original.image, 55), "/copies/resized.jpg": (original.image.resize((200, 200)), 92)}
    for path, (image, quality) in variants.items():
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=quality)
        server.add(path, buf.getvalue(), content_type="image/jpeg")
        add("copy" if path != "/copies/original.jpg" else "ok", server.url(path), original.caption)

    # The web's usual breakage, a few of each.
    for i in range(4):
        add("http_404", server.url(f"/fault/404?i={i}"), "a photo that is gone")
    for i in range(2):
        add("http_5xx", server.url(f"/fault/500?i={i}"), "a server that keeps failing")
    for i in range(2):
        add("not_an_image", server.url(f"/fault/html?i={i}"), "a page, not a picture")
    for i in range(3):
        path = f"/broken/{i}.jpg"
        server.add(path, b"\xff\xd8\xff\xe0 this is not really a jpeg " * 20, content_type="image/jpeg")
        add("decode_error", server.url(path), "a file that does not decode")
    tiny = io.BytesIO()
    make_samples(1, seed=seed + 1, size=32)[0].image.save(tiny, format="PNG")
    server.add("/img/tiny.png", tiny.getvalue(), content_type="image/png")
    add("image_too_small", server.url("/img/tiny.png"), "a very small red circle on a blue background")
    add("invalid_url", "ftp://example.invalid/cat.jpg", "not http")
    add("invalid_url", "no scheme at all", "not a url")
    add("invalid_url", None, "no url")
    add("caption_too_few_words", server.url("/img/00000.jpg"), "image")
    add("caption_too_short", server.url("/img/00001.jpg"), "")
    add("duplicate_row", rows[2]["url"], rows[2]["caption"])
    # Scraped alt text arrives escaped and mis-decoded; ftfy and html.unescape repair it.
    add("ok_after_cleaning", server.url("/img/00003.jpg"), "  a  photo &amp;amp; \u00e2\u20ac\u0153caption\u00e2\u20ac\u009d  ")

    rng.shuffle(rows)
    pq.write_table(pa.Table.from_pylist(rows), out_path)
    return kinds


def demo_config(input_path: str, out_dir: str, clip: bool, beam_args: list[str], progress: bool) -> PipelineConfig:
    return PipelineConfig.from_dict(
        {
            "input": {"paths": [input_path], "save_cols": ["kind"]},
            "caption": {"min_words": 2, "min_chars": 5},
            "download": {"threads": 16, "retries": 1, "backoff_base": 0.1, "deadline": 10, "read_timeout": 5, "allow_private_network": True},
            "image": {"image_size": 224, "resize_mode": "center_crop", "min_image_size": 64},
            "clip": {"enabled": clip, "model": TINY_MODEL, "pretrained": TINY_MODEL, "device": "auto",
                     "aesthetic_head": "auto", "min_aesthetic": DEMO_MIN_AESTHETIC,
                     "safety_head": "auto", "max_punsafe": DEMO_MAX_PUNSAFE},
            "output": {"path": out_dir, "shard_size": 100},
            "runner": {"beam_args": beam_args, "progress": progress},
        }
    )


def run_demo(out_dir: str, num_pairs: int = 300, clip: bool = True, beam_args: list[str] | None = None, progress: bool = True) -> int:
    from paircurate.api import run
    from paircurate.pipeline.stats import format_summary
    from paircurate.storage.layout import OutputLayout

    os.makedirs(out_dir, exist_ok=True)
    input_path = os.path.join(out_dir, "demo_input.parquet")
    with LoopbackServer() as server:
        kinds = build_demo_input(server, input_path, num_pairs)
        cfg = demo_config(input_path, os.path.join(out_dir, "dataset"), clip, beam_args or [], progress)
        print(f"demo: serving {sum(kinds.values())} URLs from {server.base_url}; input list {input_path}")
        summary = run(cfg, overwrite=True)
    print(format_summary(summary.stats))
    dataset = os.path.abspath(cfg.output.path)
    print(f"\noutput: {dataset}")
    out = OutputLayout(dataset)
    print(f"  shards:   {out.tar(0)} ... (webdataset), metadata: {out.parquet(0)} ...")
    print(f"  rejects:  {out.rejected(0)} ...    funnel: {out.run_stats}")
    if cfg.runner.report:
        print(f"  report:   {out.report}")
    return 0
