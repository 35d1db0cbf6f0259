"""Download stage: fetch, decode, validate and resize images, many URLs at a time.

A thread pool inside the DoFn keeps many requests in flight per worker; the
decode and resize run in the same threads because Pillow releases the GIL
while it works on pixels, so both cores stay busy even in one process.
"""

from __future__ import annotations

import io
import logging
from concurrent.futures import ThreadPoolExecutor

import apache_beam as beam
from PIL import Image

from paircurate.config import DownloadConfig, ImageConfig
from paircurate.filters.decision import Reason, RejectError, Stage
from paircurate.filters.duplicates import phash
from paircurate.filters.image import prepare_image
from paircurate.pipeline.fetch import download_image, make_pool
from paircurate.pipeline.progress import ProgressReporter
from paircurate.pipeline.stage import REJECTED, StageCounters, StageOutputs, make_reject
from paircurate.schemas import records as R

log = logging.getLogger(__name__)


def fetch_and_prepare(record: dict, download_cfg: DownloadConfig, image_cfg: ImageConfig, pool, with_phash: bool = False) -> dict:
    """One record through download and image preparation.

    Returns the enriched record, or a reject row (it has a ``reason`` field).
    """
    try:
        fetched = download_image(record[R.URL], download_cfg, pool)
    except RejectError as err:
        return make_reject(record, Stage.DOWNLOAD, err.reason, err.detail)
    except Exception as exc:
        log.exception("unexpected download failure for %s", record.get(R.URL))
        return make_reject(record, Stage.DOWNLOAD, Reason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
    try:
        image = prepare_image(fetched.data, image_cfg)
    except RejectError as err:
        return make_reject(record, Stage.IMAGE, err.reason, err.detail)
    except Exception as exc:
        log.exception("unexpected image failure for %s", record.get(R.URL))
        return make_reject(record, Stage.IMAGE, Reason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
    image_hash = None
    if with_phash:
        # Hashed from the stored image, so copies at other resolutions compare alike.
        with Image.open(io.BytesIO(image.data)) as stored:
            image_hash = phash(stored.convert("RGB"))
    out = dict(record)
    out.update(
        {
            R.PHASH: image_hash,
            R.IMAGE: image.data,
            R.IMAGE_FORMAT: image.format,
            R.WIDTH: image.width,
            R.HEIGHT: image.height,
            R.ORIGINAL_WIDTH: image.original_width,
            R.ORIGINAL_HEIGHT: image.original_height,
            R.SHA256: image.sha256,
            R.BYTE_SIZE: len(image.data),
            R.CONTENT_TYPE: fetched.content_type,
            R.HTTP_STATUS: fetched.status,
            R.DOWNLOAD_SECONDS: fetched.seconds,
        }
    )
    return out


class _FetchBatchFn(beam.DoFn):
    def __init__(self, download_cfg: DownloadConfig, image_cfg: ImageConfig, progress_dir: str | None, with_phash: bool) -> None:
        self._download_cfg = download_cfg
        self._image_cfg = image_cfg
        self._progress_dir = progress_dir
        self._with_phash = with_phash

    def setup(self) -> None:
        self._pool = make_pool(self._download_cfg)
        self._executor = ThreadPoolExecutor(max_workers=self._download_cfg.threads, thread_name_prefix="fetch")
        self._download = StageCounters(Stage.DOWNLOAD)
        self._image = StageCounters(Stage.IMAGE)
        self._progress = ProgressReporter(self._progress_dir)

    def process(self, batch: list[dict]):
        results = self._executor.map(
            lambda r: fetch_and_prepare(r, self._download_cfg, self._image_cfg, self._pool, self._with_phash), batch
        )
        for result in results:
            self._progress.add(1)
            if R.REASON in result:
                (self._download if result[R.STAGE] == Stage.DOWNLOAD.value else self._image).rejected(result[R.REASON])
                yield beam.pvalue.TaggedOutput(REJECTED, result)
            else:
                self._download.kept()
                self._image.kept()
                yield result

    def finish_bundle(self) -> None:
        self._progress.flush()

    def teardown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._pool.clear()
        self._progress.flush()


class DownloadImages(beam.PTransform):
    """Pairs -> pairs with encoded image bytes and image metadata.

    Rejects carry stage ``download`` (HTTP: ``timeout``, ``http_404``, ...) or
    ``image`` (``decode_error``, ``image_too_small``, ...).
    """

    def __init__(self, download_cfg: DownloadConfig, image_cfg: ImageConfig, progress_dir: str | None = None, with_phash: bool = False) -> None:
        super().__init__()
        self._download_cfg = download_cfg
        self._image_cfg = image_cfg
        self._progress_dir = progress_dir
        self._with_phash = with_phash

    def expand(self, pairs) -> StageOutputs:
        size = self._download_cfg.batch_size
        out = (
            pairs
            | "Batch" >> beam.BatchElements(min_batch_size=size, max_batch_size=size)
            | "FetchAndPrepare" >> beam.ParDo(_FetchBatchFn(self._download_cfg, self._image_cfg, self._progress_dir, self._with_phash)).with_outputs(REJECTED, main="kept")
        )
        return StageOutputs(out.kept, out[REJECTED])
