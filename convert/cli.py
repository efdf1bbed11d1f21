"""Laptop-side command handlers; imported only when such a command runs."""

from __future__ import annotations

import json
import os
import sys
import time

from teachcam.convert.bundle_writer import check_destination
from teachcam.edge.errors import TeachcamError
from teachcam.edge.model.stdio import captured_stderr


class RichProgress:
    """Step-by-step progress on stderr with rich (a bar per step that has a size)."""

    def __init__(self):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.console = Console(stderr=True)
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(), console=self.console,
                                 disable=not self.console.is_terminal)
        self._task = None

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self._finish()
        return self.progress.__exit__(*exc)

    def _finish(self):
        if self._task is not None:
            task = self.progress.tasks[-1]
            self.progress.update(self._task, completed=task.total or 1, total=task.total or 1)

    def step(self, description: str, total: int | None = None) -> None:
        self._finish()
        self._task = self.progress.add_task(description, total=total or 1)
        if not self.console.is_terminal:
            print(f"teachcam: {description}…", file=sys.stderr, flush=True)

    def advance(self, n: int = 1) -> None:
        if self._task is not None:
            self.progress.advance(self._task, n)

    def note(self, message: str) -> None:
        self.console.print(f"teachcam: {message}", highlight=False)


def _import_tensorflow_quietly() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        with captured_stderr():  # absl and oneDNN banners
            import tensorflow  # noqa: F401
    except ImportError:
        raise TeachcamError(
            "`teachcam convert` needs TensorFlow, which the device install leaves out: "
            "pip install 'teachcam[host]' (on the laptop)"
        ) from None


def run_convert(args) -> int:
    check_destination(args.out, args.force)  # before the slow TensorFlow import
    from teachcam.convert.backbones import check_family

    check_family(args.backbone, args.alpha, args.input_size, args.weights)
    if args.imx500:  # one line on what to install, before anything slow
        from teachcam.convert.imx500 import check_toolchain

        check_toolchain()
    _import_tensorflow_quietly()
    from teachcam.convert.build import ConvertOptions, convert_bundle

    options = ConvertOptions(out=args.out, weights=args.weights, input_size=args.input_size, alpha=args.alpha,
                             family=args.backbone,
                             calibration=args.calibration, calibration_samples=args.calibration_samples,
                             edgetpu=args.edgetpu, imx500=args.imx500, force=args.force,
                             quantization=args.quantization)
    started = time.monotonic()
    with RichProgress() as progress:
        bundle = convert_bundle(options, progress)
    elapsed = time.monotonic() - started
    evaluation = bundle.manifest["evaluation"]["float_vs_int8"]
    summary = {
        "bundle": str(bundle.path),
        "seconds": round(elapsed, 1),
        "models": {m.file: m.raw["bytes"] for m in bundle.models},
        "float_vs_int8_top1_agreement": evaluation["top1_agreement"],
        "mean_embedding_cosine": evaluation["mean_embedding_cosine"],
        "min_embedding_cosine": evaluation["min_embedding_cosine"],
        "evaluation_views": evaluation["views"],
        "held_out": evaluation["held_out"],
        "quantization": bundle.manifest["quantization"]["recipe"],
        **({"imx500": bundle.manifest["imx500"]} if "imx500" in bundle.manifest else {}),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"wrote {bundle.path} in {elapsed:.0f} s")
        for name, size in summary["models"].items():
            print(f"  {name:<32} {size / 1e6:6.2f} MB")
        what = "held-out photos, never used for calibration" if evaluation["held_out"] else "photos"
        print(f"int8 ({summary['quantization']} recipe) vs float32 over {evaluation['views']} views of "
              f"{evaluation['images']} {what}: embedding cosine mean {evaluation['mean_embedding_cosine']:.4f}, "
              f"min {evaluation['min_embedding_cosine']:.4f}; ImageNet top-1 agreement "
              f"{evaluation['top1_agreement'] * 100:.1f}%")
        sensor = summary.get("imx500")
        if sensor:
            print(f"the AI Camera's embedder: {sensor['file']} ({sensor['memory'].get('total', '?')} of the sensor's "
                  f"{sensor['memory'].get('available', '?')}); simulated quantised vs float over the same views: "
                  f"cosine mean {sensor['fidelity']['mean']:.4f}, min {sensor['fidelity']['min']:.4f}")
        print(f"next: teachcam classify --bundle {bundle.path} IMAGE")
    return 0


def run_train(args) -> int:
    check_destination(args.out, args.force)
    if not args.data.exists():
        raise TeachcamError(f"training data not found: {args.data}")
    _import_tensorflow_quietly()
    from teachcam.convert.train import train
    from teachcam.convert.training import TrainOptions
    from teachcam.edge.errors import QuantizationDropError

    defaults = {"dense": (40, 1e-3, 6, 0.2), "finetune": (6, 1e-4, 2, 0.2), "cnn": (20, 1e-3, 4, 0.5)}[args.head]
    options = TrainOptions(data=args.data, out=args.out, head=args.head, head_name=args.name, val=args.val,
                           test=args.test,
                           val_fraction=args.val_fraction, limit=args.limit,
                           epochs=args.epochs or defaults[0], hidden=args.hidden,
                           dropout=defaults[3] if args.dropout is None else args.dropout,
                           learning_rate=args.learning_rate or defaults[1],
                           unfreeze=args.unfreeze, patience=defaults[2], input_size=args.input_size,
                           max_int8_drop=args.max_int8_drop,
                           weights=args.weights, edgetpu=args.edgetpu, force=args.force,
                           quantization=args.quantization)
    started = time.monotonic()
    failure = None
    with RichProgress() as progress:
        try:
            bundle = train(options, progress)
        except QuantizationDropError as exc:
            failure, bundle = exc, None
    from teachcam.edge.model.bundle import load_bundle

    bundle = bundle or load_bundle(args.out)
    metrics = bundle.manifest["training"]
    if args.json:
        print(json.dumps(metrics, indent=2, ensure_ascii=False))
    else:
        acc = metrics["accuracy"]
        print(f"wrote {bundle.path} in {time.monotonic() - started:.0f} s; {metrics['evaluated_on']} accuracy "
              f"({metrics['evaluation_images']} images) on the device runtime: "
              f"float32 {acc['float32']:.3f}, int8 {acc['int8']:.3f} (int8 drop {acc['int8_drop_points']:+.2f} points)")
        fid = metrics["int8_vs_float32"]
        print(f"int8 ({fid['recipe']} recipe) vs float32 class scores on those images: cosine mean "
              f"{fid['mean_cosine']:.4f}, min {fid['min_cosine']:.4f}; same top-1 {fid['argmax_agreement'] * 100:.1f}%")
        print(f"report: {bundle.path / 'report'} (curves.png, confusion_*.png, samples_int8.png, metrics.json)")
        print(f"on the Pi: teachcam run --bundle BUNDLE --mode head  (head {args.name!r}, {len(metrics['classes'])} classes"
              + ("; a standalone classifier: it cannot be taught by example)" if args.head == "cnn" else ")"))
    if failure is not None:
        raise failure
    return 0
