"""Can two prefills overlap on this CPU? The target's prefill timed alone, and beside the draft's.

What ``evspec spec --parallel-prefill`` needs from a CPU: the draft's prefill (read the events,
preprocess, encode, the prompt pass) running while the target's runs, without slowing it. Here
the draft's prefills loop without pause beside the target's, a harsher case than a run (there the
draft's prefill is a third of the target's), in three arrangements:

    alone     the target's prefill, nothing beside it
    thread    the draft in a thread of this process (as the engine runs it), one intra-op thread
    process   the draft in a forked process, one intra-op thread

each with the main process on ``--main-threads`` intra-op threads (the default: 2 and 1). Each
figure is the median over the clips of one clip's target prefill (read the MP4, preprocess,
encode, the prompt pass on an eager cache), after one warm-up pass.

    python benchmarks/cpu_prefill_overlap.py --dataset data/heldout --clips 20
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import threading
import time
from collections.abc import Callable, Sequence

import torch
import transformers

from evspec.data.dataset import Sample, load_dataset
from evspec.models.base import VisionLanguageModel
from evspec.models.registry import load_model
from evspec.run.rundir import cpu_name
from evspec.runtime.decode import EagerState


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--dataset", required=True, help="an evspec clip dataset with video and events")
    parser.add_argument("--clips", type=int, default=20, help="samples timed per figure")
    parser.add_argument("--target", default="demo-videollava")
    parser.add_argument("--draft", default="demo-eventgpt")
    parser.add_argument("--main-threads", default="2,1", help="intra-op threads of the main process, comma-separated")
    return parser.parse_args()


def prefill(model: VisionLanguageModel, sample: Sample) -> None:
    prepared = model.preprocess(model.load(sample), sample.query)
    embeds = model.splice(prepared, model.encode(prepared))
    EagerState(model.language_model).extend(embeds=embeds, last_only=True)


def draft_loop(name: str, samples: Sequence[Sample], ready: threading.Event, stop: threading.Event) -> None:
    """The draft's prefills, one after the other until ``stop``, on one intra-op thread."""
    torch.set_num_threads(1)  # this thread's (or process's) own setting
    draft = load_model(name)
    prefill(draft, samples[0])
    ready.set()
    while not stop.is_set():
        for sample in samples:
            prefill(draft, sample)


def median_prefill_ms(target: VisionLanguageModel, samples: Sequence[Sample]) -> float:
    times = []
    for sample in samples:
        start = time.perf_counter()
        prefill(target, sample)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def beside(run: Callable[[], float], start_draft: Callable[[threading.Event, threading.Event], object]) -> float:
    ctx = multiprocessing.get_context("fork")
    ready, stop = ctx.Event(), ctx.Event()
    worker = start_draft(ready, stop)
    ready.wait()
    try:
        return run()
    finally:
        stop.set()
        worker.join()  # type: ignore[attr-defined]


def main() -> None:
    args = parse()
    samples = load_dataset(args.dataset)[: args.clips]
    if not samples:
        raise SystemExit(f"error: {args.dataset} holds no samples")
    target = load_model(args.target)
    prefill(target, samples[0])  # warm-up
    print(f"CPU {cpu_name()}, {os.cpu_count()} cores, float32, torch {torch.__version__}, "
          f"transformers {transformers.__version__}; target {args.target}, draft {args.draft}, {len(samples)} clips "
          f"of {args.dataset}; target prefill, median ms")

    def in_thread(ready: threading.Event, stop: threading.Event) -> threading.Thread:
        worker = threading.Thread(target=draft_loop, args=(args.draft, samples, ready, stop))
        worker.start()
        return worker

    def in_process(ready: threading.Event, stop: threading.Event) -> multiprocessing.Process:
        worker = multiprocessing.get_context("fork").Process(target=draft_loop, args=(args.draft, samples, ready, stop))
        worker.start()
        return worker

    run = lambda: median_prefill_ms(target, samples)  # noqa: E731
    for threads in (int(n) for n in args.main_threads.split(",")):
        torch.set_num_threads(threads)
        alone = run()
        thread = beside(run, in_thread)
        process = beside(run, in_process)
        print(f"main process on {threads} intra-op thread(s): alone {alone:.1f}, draft in a thread beside {thread:.1f}, "
              f"draft in a process beside {process:.1f}", flush=True)


if __name__ == "__main__":
    main()
