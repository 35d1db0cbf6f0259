"""``paircurate verify-train OUT``: feed the shards, unmodified, to open_clip's own training entry point.

Runs ``open_clip_train.main`` for one epoch on the CPU with the bundled small
model (or any open_clip model and weights), with ``--train-data`` pointing at
the output's tars, and records every sample key the training data pipeline
reads. The check passes when it read exactly the kept samples, each once.

    >>> result = verify_train("out/")
    >>> result["consumed"] == result["kept"] and result["matches"]
"""

from __future__ import annotations

import logging
import tarfile
import tempfile

from paircurate import storage
from paircurate.inspection import read_table
from paircurate.schemas import records as R
from paircurate.storage.layout import OutputLayout, parse_shard_file


def _shards_with_samples(out_dir: str) -> list[str]:
    shards = []
    for path in OutputLayout(out_dir).shard_files("tar"):
        with tarfile.open(path) as tar:
            if tar.next() is not None:
                shards.append(path)
    return shards


def _batch_size_for(n: int, largest: int = 32) -> int:
    # open_clip drops a partial last batch in training; a divisor of n means
    # every kept sample lands in a batch.
    return max(d for d in range(1, min(n, largest) + 1) if n % d == 0)


def verify_train(out_dir: str, model: str | None = None, pretrained: str | None = None, batch_size: int | None = None) -> dict:
    """On a store, the tars are first copied to a local temporary folder: open_clip_train reads local shards."""
    kept = [u for p in OutputLayout(out_dir).shard_files("parquet") for u in read_table(p, columns=[R.UID]).column(R.UID).to_pylist()]
    with storage.local_copy(out_dir, lambda name: (parse_shard_file(name) or (0, ""))[1] == "tar") as local:
        return _verify_local(local, out_dir, kept, model, pretrained, batch_size)


def _verify_local(local_dir: str, out_dir: str, kept: list[str], model: str | None, pretrained: str | None, batch_size: int | None) -> dict:
    from open_clip_train import data as train_data
    from open_clip_train import main as train_main

    from paircurate.embeddings.clip import (  # registers the small model's config
        TINY_CHECKPOINT_PATH,
        TINY_MODEL,
    )

    model = model or TINY_MODEL
    pretrained = pretrained or (str(TINY_CHECKPOINT_PATH) if model == TINY_MODEL else None)
    shards = _shards_with_samples(local_dir)
    if not kept or not shards:
        raise ValueError(f"{out_dir}: no kept samples to train on")
    batch = batch_size or _batch_size_for(len(kept))

    seen: list[str] = []
    original = train_data.tarfile_to_samples_nothrow

    def recording(src, handler=train_data.log_and_continue):
        for sample in original(src, handler=handler):
            seen.append(sample["__key__"])
            yield sample

    with tempfile.TemporaryDirectory() as logs:
        argv = [
            "--train-data", "::".join(shards), "--train-num-samples", str(len(kept)), "--dataset-type", "webdataset",
            "--batch-size", str(batch), "--epochs", "1", "--model", model, "--workers", "0", "--device", "cpu",
            "--precision", "fp32", "--lr", "1e-5", "--warmup", "0", "--logs", logs, "--name", "verify",
            "--save-frequency", "0", "--report-to", "", "--seed", "0",
        ]
        if pretrained:
            argv += ["--pretrained", pretrained]
        expander = train_data.tar_file_expander
        train_data.tarfile_to_samples_nothrow = recording
        # open_clip_train 3.x groups files with its own copy of webdataset
        # 0.2's grouping, which does not know the end-of-shard marker that
        # webdataset 1.x yields; turning the marker off is that version's
        # behaviour (open_clip's training requirements pin webdataset<=0.2.86).
        train_data.tar_file_expander = lambda *a, **kw: expander(*a, eof_value=None, **kw)
        root = logging.getLogger()
        saved_level, saved_handlers = root.level, list(root.handlers)
        saved_levels = {name: lg.level for name, lg in logging.root.manager.loggerDict.items() if isinstance(lg, logging.Logger)}
        try:
            train_main.main(argv)
        finally:
            train_data.tarfile_to_samples_nothrow = original
            train_data.tar_file_expander = expander
            # open_clip_train configures root logging for its own run; give ours back.
            root.handlers[:] = saved_handlers
            root.setLevel(saved_level)
            for name, lg in logging.root.manager.loggerDict.items():
                if isinstance(lg, logging.Logger):
                    lg.setLevel(saved_levels.get(name, logging.NOTSET))
    return {
        "kept": len(kept),
        "consumed": len(seen),
        "unique": len(set(seen)),
        "steps": len(kept) // batch,
        "batch_size": batch,
        "matches": set(seen) == set(kept) and len(seen) == len(kept),
    }
