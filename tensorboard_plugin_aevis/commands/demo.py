"""``aevis demo``: run one of the example scripts in ``demo/`` and say how to open it.

The demo writes into a private staging folder first and moves the finished run into
``--logdir`` at the end, so an interrupted or failed demo leaves nothing half-written
for TensorBoard to trip over.
"""

import importlib
import json
import os
import shutil
import sys
import tempfile
import time

from tensorboard_plugin_aevis.cli import UserError, check_device

# --model value -> module of tensorboard_plugin_aevis.demos (the files in demo/)
DEMOS = {
    "efficientnet-lite0": "imagenet_demo",
    "fashion-cnn": "fashion_cnn_demo",
}


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run a demo analysis and log it for TensorBoard",
        description="Attack real images, extract constrained and DGR datapaths, and log them for TensorBoard.",
    )
    parser.add_argument("--logdir", default=os.path.join("runs", "demo"), help="run folder to write (default: runs/demo)")
    parser.add_argument("--model", choices=sorted(DEMOS), default="efficientnet-lite0",
                        help="efficientnet-lite0: ImageNet photos (default); fashion-cnn: datapaths over training")
    parser.set_defaults(func=run_demo)


def check_writable(logdir: str) -> None:
    """Create ``logdir`` and prove a file can be written there, or raise UserError."""
    try:
        os.makedirs(logdir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=logdir):
            pass
    except OSError as e:
        raise UserError(f"cannot write to --logdir {logdir!r} ({e.strerror or e}); pass a folder you can write to") from None


def move_tree(source: str, destination: str) -> None:
    """Move every file under ``source`` to the same relative path under ``destination``."""
    for folder, _, files in os.walk(source):
        target = os.path.join(destination, os.path.relpath(folder, source))
        os.makedirs(target, exist_ok=True)
        for f in files:
            shutil.move(os.path.join(folder, f), os.path.join(target, f))


def run_demo(args) -> int:
    check_device(args.device)
    created = not os.path.exists(args.logdir)
    check_writable(args.logdir)
    try:
        demo = importlib.import_module(f"tensorboard_plugin_aevis.demos.{DEMOS[args.model]}")
    except ModuleNotFoundError as e:
        if (e.name or "").startswith(("tensorboard_plugin_aevis", "summary_writers")):
            raise
        raise UserError(f"the demo needs the package {e.name!r}: pip install 'tensorboard-plugin-aevis[demo]'") from None

    started = time.perf_counter()
    staging = tempfile.mkdtemp(prefix="aevis-demo-")
    try:
        summary = demo.run(staging, device=args.device, progress=args.progress)
        move_tree(staging, args.logdir)
    except BaseException as e:
        if created and not os.listdir(args.logdir):
            os.rmdir(args.logdir)
        if isinstance(e, FileNotFoundError):
            raise UserError(str(e)) from None
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    parent = os.path.dirname(os.path.abspath(args.logdir))
    summary.update(logdir=os.path.abspath(args.logdir), seconds=round(time.perf_counter() - started, 1),
                   tensorboard_command=f"tensorboard --logdir {parent}")
    if args.json:
        print(json.dumps(summary))
    else:
        for a in summary["analyses"]:
            kept = a.get("kept_fraction")
            step = f" step {a['step']}" if "step" in a else ""
            print(f"{a['name']} [{a['method']}]{step}: labels preserved={a['label_preserved']}"
                  + (f", kept fraction={kept}" if kept else ""))
        print(f"\nWrote {summary['logdir']} in {summary['seconds']} s. Open it with:\n\n    {summary['tensorboard_command']}\n\n"
              "then the AEVis tab at http://localhost:6006/#aevis", file=sys.stdout)
    return 0
