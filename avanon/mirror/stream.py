"""The streaming pipeline of the mirror writer, for anonymizers that generate crops on a GPU (realistic).

Three stages, on existing engines:

1. CPU, in worker processes (joblib, as the per-image path): read and hash the source, resume check, keypoints,
   regions, the copy rule, decoding, and the anonymizer's first crops (``prepare_image(..., precut=True)``).
2. The device, in this process: every prepared image's anonymizer coroutine (``Anonymizer.steps``) asks for the
   crops of one wave at a time; requests of many images that share a generator are gathered into one forward pass
   of up to ``stream_batch()`` crops. An image's own order (passes, waves) is kept, so overlapping people stay
   sequential exactly as the recursive stitching needs; wave k of many images shares a batch. On CUDA the next
   batch is queued before the previous one's results are pasted (the device does not wait for the host).
3. CPU, in threads: detail measurement, encoding, the atomic write (OpenCV, hashing and file writes release the
   GIL). The manifest line is written by the caller once the file is in place, as in the per-image path: a run
   killed at any point resumes to the same mirror.

Memory is bounded: at most ``max_active`` images are between stage 1 and the end of stage 3, and the worker pool
dispatches at most two tasks per worker ahead. An image whose crops fail (its coroutine or its forward pass raises)
fails as a whole: no file, a failed manifest line, any stale output removed. A failing batch is retried request by
request, so one bad image does not fail the others. On CPU the pixels equal the per-image path's bit for bit
(tests); on CUDA they may differ in the last bits with the batch composition (cuDNN picks kernels per shape).
"""
from __future__ import annotations

import itertools
import logging
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional

from dataset_adapters.base import ImageRecord
from avanon.mirror.manifest import MirrorError
from avanon.mirror.plan import MirrorJob

log = logging.getLogger("avanon.mirror")

# The high-water marks of the last stream in this process (tests check that memory stays bounded).
STATS: dict = {}


@dataclass
class _Image:
    key: int
    prepared: object  # writer.PreparedImage
    steps: object  # the anonymizer's coroutine
    request: Optional[object] = None  # the GenRequest it waits on


@dataclass
class _Batch:
    items: list  # [(_Image, GenRequest)]
    handle: object = None
    error: Optional[BaseException] = None
    requests: list = field(default_factory=list)


def _prepare_in_worker(job: MirrorJob, record: ImageRecord, previous: Optional[dict]):
    from avanon.mirror.process import _limit_threads, prepare_image

    _limit_threads()
    return prepare_image(job, record, previous=previous, precut=True)


def _prepared(job: MirrorJob, items: Iterable[tuple[ImageRecord, Optional[dict]]], workers: int) -> Iterator:
    from avanon.mirror.process import prepare_image

    if workers <= 1:
        return (prepare_image(job, r, previous=p, precut=True) for r, p in items)
    from joblib import Parallel, delayed

    parallel = Parallel(n_jobs=workers, return_as="generator_unordered", batch_size=1, pre_dispatch="2*n_jobs")
    return parallel(delayed(_prepare_in_worker)(job, r, p) for r, p in items)


def stream_results(job: MirrorJob, items: Iterable[tuple[ImageRecord, Optional[dict]]], workers: int = 1,
                   max_active: Optional[int] = None, writers: int = 2) -> Iterator[dict]:
    """Manifest lines of `items` (record, previous manifest line) through the three stages (module docstring), in
    completion order. Raises MirrorError when the mirror cannot be written."""
    from avanon.mirror.process import PreparedImage, _tools, fail_prepared, finish_image

    _, anonymizer, _ = _tools(job)
    anonymizer.last_hmlo = []
    max_batch = anonymizer.stream_batch()
    max_active = max_active or max(4, 2 * max_batch, 2 * workers)
    source = _prepared(job, items, workers)
    STATS.clear()
    STATS.update(max_active=0, batches=0, crops=0, max_batch_crops=0, images=0, requests=0)
    keys = itertools.count()
    active: set[int] = set()  # keys of the images between stage 1 and the end of stage 3
    waiting: deque = deque()  # (_Image, GenRequest) in arrival order
    writes: dict[Future, int] = {}
    done_lines: deque = deque()
    exhausted = False
    inflight: Optional[_Batch] = None

    def advance(img: _Image, answer=None, error: Optional[BaseException] = None) -> None:
        """Feed a coroutine its crops (or the error of its batch); queue its next request, or hand the finished
        image to a writer thread, or record it as failed."""
        try:
            if error is not None:
                raise error
            img.request = next(img.steps) if answer is None else img.steps.send(answer)
            waiting.append((img, img.request))
            STATS["requests"] += 1
        except StopIteration as stop:
            writes[pool.submit(finish_image, job, img.prepared, stop.value)] = img.key
        except MirrorError:
            raise
        except Exception as exc:  # privacy first: the image fails as a whole, nothing of it is written
            img.steps.close()
            active.discard(img.key)
            done_lines.append(fail_prepared(img.prepared, exc))

    def take_batch() -> Optional[_Batch]:
        """The oldest waiting request's generator; its requests in arrival order up to max_batch crops."""
        if not waiting:
            return None
        model = waiting[0][1].model
        items, size, rest = [], 0, deque()
        while waiting:
            img, req = waiting.popleft()
            if req.model == model and (not items or size + len(req.jobs) <= max_batch):
                items.append((img, req))
                size += len(req.jobs)
            else:
                rest.append((img, req))
        waiting.extendleft(reversed(rest))
        STATS["batches"] += 1
        STATS["crops"] += size
        STATS["max_batch_crops"] = max(STATS["max_batch_crops"], size)
        return _Batch(items)

    def launch(batch: _Batch) -> _Batch:
        anonymizer.last_hmlo = []  # diagnostics of the last batch only: memory stays flat on long runs
        try:
            batch.handle = anonymizer.launch([req for _, req in batch.items], max_batch)
        except MirrorError:
            raise
        except Exception as exc:
            batch.error = exc
        return batch

    def complete(batch: _Batch) -> None:
        answers = None
        if batch.error is None:
            try:
                answers = anonymizer.collect(batch.handle)
            except MirrorError:
                raise
            except Exception as exc:
                batch.error = exc
        if batch.error is not None and len(batch.items) > 1:
            # one bad request (or a batch too large for the device) must not fail the others: one by one
            for item in batch.items:
                complete(launch(_Batch([item])))
            return
        for k, (img, req) in enumerate(batch.items):
            error = batch.error
            if error is None and (answers is None or k >= len(answers) or len(answers[k]) != len(req.jobs)):
                # an answer that does not cover every crop would leave a person unpasted: fail the image instead
                error = RuntimeError(f"the generator returned {len(answers[k]) if answers and k < len(answers) else 0}"
                                     f" crops for a request of {len(req.jobs)}")
            advance(img, answers[k] if error is None else None, error)

    def collect_writes(block: bool) -> None:
        if not writes:
            return
        finished, _ = wait(list(writes), timeout=None if block else 0, return_when=FIRST_COMPLETED)
        for f in finished:
            active.discard(writes.pop(f))
            done_lines.append(f.result())  # MirrorError (the mirror cannot be written) propagates

    with ThreadPoolExecutor(max_workers=max(1, writers), thread_name_prefix="avanon-write") as pool:
        try:
            while True:
                while not exhausted and len(active) < max_active:
                    try:
                        item = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    if not isinstance(item, PreparedImage):
                        done_lines.append(item)  # copied, resumed, failed before the pixels
                        continue
                    STATS["images"] += 1
                    img = _Image(next(keys), item, anonymizer.steps(item.loaded.pixels, item.regions, item.seed, waves=True,
                                                        precut=item.precut))
                    active.add(img.key)
                    STATS["max_active"] = max(STATS["max_active"], len(active))
                    advance(img)
                collect_writes(block=False)
                while done_lines:
                    yield done_lines.popleft()
                batch = take_batch()
                launched = launch(batch) if batch is not None else None
                if inflight is not None:  # the device works on `launched` while the host pastes these
                    complete(inflight)
                inflight = launched
                if inflight is None and not waiting:
                    if writes:
                        collect_writes(block=True)
                    elif exhausted and not done_lines:
                        break
                while done_lines:
                    yield done_lines.popleft()
        finally:
            for img_id in list(writes.values()):
                active.discard(img_id)
            for f in list(writes):  # let finished writes land; their lines are lost only if the caller stopped
                f.cancel()
