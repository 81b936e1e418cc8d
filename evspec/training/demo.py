"""The shipped demo pair: how ``demo-videollava`` (target) and ``demo-eventgpt`` (draft) are made.

    python -m evspec.training.demo --workdir WORK --device cuda --workers 16

1. ``evspec data synth WORK/train`` (a seeded synthetic dataset of 1 s clips at 160x120, the size of
   the built-in set ``evspec spec`` runs on: the towers see 128x128, so larger frames add synthesis
   and event-reading time, not detail);
2. ``evspec train`` of Video-LLaVA at size ``demo-target`` on the full answers and of EventGPT at
   ``demo-draft`` on the event-visible answers (sensor-sized event canvas), one after the other, each clip
   also learnt mirrored and played backwards (four views of it, directions turned in the answers);
   with ``--init-from DIR`` (an earlier build's output) both start from its weights, and the new
   manifest keeps the earlier one, so the chain of commands that made the weights is on record;
   ``--keep NAME`` takes one model from that build as it is and trains only the other;
3. the trained model files, in float16, into ``evspec/models/demo/<name>/`` with ``MANIFEST.json``:
   the sha256 and size of each file, this exact command, the dataset's config, each training's
   config and final evaluation, the evspec commit, the machine and the time.

Training is seeded: the same command on the same machine and software gives the same weights on
a CPU. On CUDA, bf16 autocast and atomics in the backward passes (embedding gradients, reductions)
make runs differ in the last bits, so weights are reproducible up to that, not bit for bit.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evspec.run.rundir import file_sha256

if TYPE_CHECKING:
    from evspec.data.synth.builder import SynthConfig

DEMO_DIR = Path(__file__).resolve().parent.parent / "models" / "demo"
MANIFEST_NAME = "MANIFEST.json"
# name -> (family, size)
DEMO_MODELS = {
    "demo-videollava": ("videollava", "demo-target"),
    "demo-eventgpt": ("eventgpt", "demo-draft"),
}


def model_files(folder: Path) -> list[Path]:
    """A trained checkpoint's files, without its training run (``training/``)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and "training" not in p.relative_to(folder).parts
                  and not p.name.startswith("."))


def manifest_entries(root: Path) -> dict[str, dict[str, Any]]:
    return {str(p.relative_to(root)): {"sha256": file_sha256(p), "bytes": p.stat().st_size}
            for name in DEMO_MODELS for p in model_files(root / name)}


def source_sha256() -> str:
    """One hash over evspec's Python sources (paths and contents): names the code that ran even
    where a copy of the repository carries no or stale git metadata."""
    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _git_commit() -> dict[str, Any]:
    repo = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True)
        return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


def _train_command(args: argparse.Namespace, name: str, dataset: Path, out: Path) -> list[str]:
    family, size = DEMO_MODELS[name]
    size = args.target_size if family == "videollava" else args.draft_size
    steps = args.target_steps if family == "videollava" else args.draft_steps
    lr = args.lr if family == "videollava" else args.draft_lr
    command = [
        sys.executable, "-m", "evspec", "train", "--family", family, "--size", size, "--dataset", str(dataset),
        "--out", str(out), "--steps", str(steps), "--batch-size", str(args.batch_size), "--lr", str(lr),
        "--warmup-steps", str(args.warmup_steps), "--seed", str(args.seed), "--eval-every", str(args.eval_every),
        "--eval-questions", "64", "--checkpoint-every", str(args.checkpoint_every), "--workers", str(args.workers),
        "--save-dtype", "float16", "--device", args.device,
    ]
    # Named only when asked for, so a command from before they existed still reads the same.
    if args.pixel_cache_dtype != "float32":
        command += ["--pixel-cache-dtype", args.pixel_cache_dtype]
    if args.mirror:
        command += ["--mirror"]
    if args.reverse:
        command += ["--reverse"]
    if args.compile:
        command += ["--compile"]
    if args.init_from:
        command += ["--init-from", f"{family}:{Path(args.init_from) / name}"]
    if family == "eventgpt" and args.colour_context:
        command += ["--colour-context"]
    if family == "eventgpt":
        # The demo draft sees its events on one sensor-sized canvas: upstream's per-chunk canvas
        # stretches each chunk to its own extent, so shapes and speeds change from frame to frame.
        command += ["--event-canvas", "sensor"]
    return command


@contextlib.contextmanager
def _terminating_on_sigterm(children: list[subprocess.Popen]) -> Iterator[None]:
    """A SIGTERM (``timeout``, a job scheduler) stops the trainings too, instead of leaving them
    running without their parent; each resumes from its last checkpoint when the command reruns."""

    def stop(signum: int, frame: object) -> None:
        # No wait() here: the interrupted wait() holds the Popen's lock; the caller waits below.
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    except SystemExit:
        for child in children:
            child.terminate()
        for child in children:
            child.wait()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def dataset_config(args: argparse.Namespace) -> SynthConfig:
    from evspec.data.synth.builder import SynthConfig

    return SynthConfig(clips=args.clips, seed=args.dataset_seed, test_fraction=args.test_fraction, size=args.frame_size)


def build(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    from evspec.data.synth.builder import build_dataset
    from evspec.errors import ConfigError
    from evspec.run.rundir import environment

    work = Path(args.workdir)
    kept = set(args.keep)
    if kept and not args.init_from:
        raise ConfigError("keep: a model is kept from an earlier build; name it with init_from",
                          parameters=["keep", "init_from"])
    if kept >= set(DEMO_MODELS):
        raise ConfigError("keep names every model: nothing would be trained", parameters=["keep"])
    init = earlier_build(Path(args.init_from)) if args.init_from else None
    # the code that runs is the code at the start: a commit made during a long build is not it
    provenance = {**_git_commit(), "source_sha256": source_sha256()}
    work.mkdir(parents=True, exist_ok=True)
    synth_config = dataset_config(args)
    began = time.time()
    build_dataset(work / "train", synth_config, workers=args.workers)
    synth_s = time.time() - began
    runs = {name: work / name for name in DEMO_MODELS if name not in kept}
    commands = {name: _train_command(args, name, work / "train", run) for name, run in runs.items()}
    # One after another: run at once on one GPU, the two time-slice it and each step slows down
    # more than the overlap gains (on the H200 of 774b0c7's build, the draft's step took 0.30 s
    # beside the target and 0.076 s alone). Each run resumes if killed.
    for name, cmd in commands.items():
        proc = subprocess.Popen(cmd)
        with _terminating_on_sigterm([proc]):
            if proc.wait() != 0:
                raise SystemExit(f"training failed for {name}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sources = {name: runs[name] if name in runs else Path(args.init_from) / name for name in DEMO_MODELS}
    for name, run in sources.items():
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=out))
        for path in model_files(run):
            dest = tmp / path.relative_to(run)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)
        if (out / name).exists():
            shutil.rmtree(out / name)
        os.replace(tmp, out / name)
    # a kept model's entry is the earlier build's, marked: its weights are that build's files
    trainings = {name: {**init["manifest"]["trainings"][name], "kept_from": init["from"]}
                 for name in kept if init is not None}
    for name, run in runs.items():
        config = json.loads((run / "training" / "config.json").read_text(encoding="utf-8"))
        rows = [json.loads(line) for line in (run / "training" / "metrics.jsonl").read_text().splitlines() if line]
        evals = [r["eval"] for r in rows if "eval" in r]
        losses = [r for r in rows if "loss" in r]
        trainings[name] = {"command": shlex.join(commands[name][2:]),
                           "identity": config["identity"], "final_loss": losses[-1]["loss"] if losses else None,
                           "final_eval_on_training_split_test_rows": evals[-1] if evals else None}
    manifest = {
        "command": shlex.join(["python", "-m", "evspec.training.demo", *argv]),
        "files": manifest_entries(out),
        "dataset": {"synth_config": synth_config.model_dump(mode="json"), "seconds": synth_s},
        "trainings": {name: trainings[name] for name in DEMO_MODELS},
        **({"init": init} if init else {}),
        "evspec": provenance,
        "machine": environment(args.device),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": time.time() - began,
    }
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest


def earlier_build(folder: Path) -> dict[str, Any]:
    """An earlier build's output that a build starts from (``--init-from``), checked whole against
    its own manifest; the manifest is kept in the new one, so the chain of commands that made the
    weights stays on record."""
    from evspec.errors import ConfigError

    path = folder / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"init_from: {path} is not a demo build's manifest ({type(error).__name__}: {error})",
                          parameters=["init_from"]) from None
    if manifest_entries(folder) != files:
        raise ConfigError(f"init_from: the files in {folder} are not the ones its {MANIFEST_NAME} lists",
                          parameters=["init_from"])
    return {"from": str(folder), "manifest": manifest}


def _frame_size(text: str) -> tuple[int, int]:
    from evspec.data.synth.builder import parse_size
    from evspec.errors import ConfigError

    try:
        return parse_size(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evspec.training.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="Where the dataset and the training runs go.")
    p.add_argument("--out", default=str(DEMO_DIR), help="Where the shipped folders and the manifest go.")
    p.add_argument("--clips", type=int, default=20000)
    p.add_argument("--frame-size", type=_frame_size, default=(160, 120), metavar="WxH",
                   help="The synthetic clips' frame and sensor size.")
    p.add_argument("--dataset-seed", type=int, default=1, help="Synthetic dataset seed (evaluate on others).")
    p.add_argument("--test-fraction", type=float, default=0.02, help="Test rows evaluated during training.")
    p.add_argument("--target-size", default="demo-target", help="Model size of the target (tiny: a quick test).")
    p.add_argument("--draft-size", default="demo-draft", help="Model size of the draft.")
    p.add_argument("--target-steps", type=int, default=3000)
    p.add_argument("--draft-steps", type=int, default=4500)
    p.add_argument("--batch-size", type=int, default=384)
    p.add_argument("--lr", type=float, default=1.5e-3, help="Peak learning rate of the target.")
    p.add_argument("--draft-lr", type=float, default=1e-3, help="Peak learning rate of the draft.")
    p.add_argument("--warmup-steps", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=1000)
    p.add_argument("--checkpoint-every", type=int, default=200)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--mirror", action=argparse.BooleanOptionalAction, default=True,
                   help="Also learn every clip mirrored left to right (twice the distinct inputs).")
    p.add_argument("--reverse", action=argparse.BooleanOptionalAction, default=True,
                   help="Also learn every clip played backwards (twice the distinct inputs again).")
    p.add_argument("--colour-context", action=argparse.BooleanOptionalAction, default=False,
                   help="The draft also learns on the target's full answers, colour words read but not predicted: "
                        "one that never read a colour word named the next shape right 45%% of the time, "
                        "against 94%% in its own answers.")
    p.add_argument("--pixel-cache-dtype", default="float16", choices=("float32", "float16", "bfloat16"),
                   help="dtype of the preprocessed clips kept on the device (in float16, 20,000 clips take about "
                        "16 GB for the target and 10 GB for the draft).")
    p.add_argument("--init-from", metavar="DIR", help="An earlier build's --out (its two models and MANIFEST.json): "
                   "each training starts from its weights instead of random ones.")
    p.add_argument("--keep", action="append", default=[], choices=list(DEMO_MODELS), metavar="NAME",
                   help="Keep this model of the --init-from build as it is, untrained (repeatable: "
                        f"{', '.join(DEMO_MODELS)}); e.g. a draft retrained on a CPU beside a target that "
                        "needs a GPU.")
    p.add_argument("--compile", action="store_true", help="torch.compile each transformer block for the training steps.")
    p.add_argument("--device", default="cuda")
    return p


def main(argv: list[str] | None = None) -> int:
    from evspec.cli import as_flags
    from evspec.errors import EvspecError

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        manifest = build(parser().parse_args(argv), argv)
    except EvspecError as error:  # one line, as the evspec command prints it
        print(f"error: {as_flags(str(error), error.parameters)}", file=sys.stderr)
        return 1
    total = sum(f["bytes"] for f in manifest["files"].values())
    print(json.dumps({"files": len(manifest["files"]), "bytes": total, "trainings": manifest["trainings"]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
