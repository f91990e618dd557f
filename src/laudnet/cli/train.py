"""``laudnet demo``, ``train``, ``eval`` and ``report``: training runs, their evaluation
and the HTML report; ``add_parsers(subparsers)`` registers them."""

from __future__ import annotations

import argparse

from .. import checks, distributed
from ..checkpoint import RunSpec
from ..data.build import DATASETS, DETECTION_DATASETS, TASKS
from ..demo import run_demo as demo
from ..evaluate import evaluate_checkpoint, summary_markdown
from ..latency.hardware import load_hardware
from ..report import write_report
from ..train.loop import TrainConfig, resume, train
from ..train.tasks import DISTILL_REGIONS, task_of
from .arguments import name_list, positive_int_list

DEFAULTS = TrainConfig()
DEFAULT_MODELS = {"classification": "cifar_resnet20", "detection": "fasterrcnn_resnet18_fpn"}


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``demo``, ``train``, ``eval`` and ``report`` commands."""
    for add in (add_demo, add_train, add_eval, add_report):
        add(subparsers)


# --------------------------------------------------------------------- train
def add_train(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train a static teacher (--static) or a dynamic student (--teacher CKPT)",
        description="Train a network. First a static teacher (--static), then a dynamic student that starts "
                    "from the teacher's weights and learns its gates with a FLOPs budget and distillation "
                    "(of the logits; for detectors, of the FPN features). "
                    "Under torchrun the run is distributed (gloo on CPU, NCCL on GPU).")
    data = p.add_argument_group("data")
    data.add_argument("--dataset", default="cluttered", choices=DATASETS,
                      help="default: %(default)s (embedded); detection: shapes-detection (embedded), coco")
    data.add_argument("--task", choices=TASKS, help="classification or detection: the dataset's task, "
                                                    "checked against --dataset (default: the dataset's)")
    data.add_argument("--data", metavar="PATH", help="where the dataset's files are")
    data.add_argument("--image-size", type=int, help="canvas side (cluttered: 64, fashion-mnist-placed: 56); "
                                                      "detection: the short side images are resized to "
                                                      "(shapes-detection: 320, coco: 512)")
    data.add_argument("--train-size", type=int, help="use the first N training images")
    data.add_argument("--test-size", type=int, help="use the first N test images")
    data.add_argument("--data-seed", type=int, default=0, help="seed of procedural data and placements")
    model = p.add_argument_group("model")
    model.add_argument("--model", help="a name of laudnet.list_models() (default: cifar_resnet20), or for a "
                                       "detection dataset one of laudnet.detection.list_detectors() (default: "
                                       "fasterrcnn_resnet18_fpn)")
    model.add_argument("--paradigm", help="per-stage paradigm, e.g. spatial or spatial-channel-layer "
                                          "(default: spatial; none with --static)")
    model.add_argument("--granularity", help="per-stage patch side / channel group, e.g. 8-4-2")
    model.add_argument("--gate-scale", action="store_true", help="learned output scale of kept channels/blocks")
    gates = p.add_argument_group("teacher, budget and gates")
    gates.add_argument("--static", action="store_true", help="train without gates (the teacher)")
    gates.add_argument("--teacher", metavar="CKPT", help="static teacher checkpoint (distillation and initial weights)")
    gates.add_argument("--target", type=float, default=DEFAULTS.target, help="FLOPs ratio target (default: %(default)s)")
    gates.add_argument("--budget-ms", type=float, default=None,
                       help="train against this predicted latency per batch instead of --target (needs --hardware)")
    gates.add_argument("--hardware", default=None,
                       help="device whose predicted latency --budget-ms bounds (see `laudnet hardware list`)")
    gates.add_argument("--budget-batch-size", type=int, default=DEFAULTS.budget_batch_size,
                       help="batch size the latency budget is for (default: %(default)s)")
    gates.add_argument("--budget-weight", type=float, default=DEFAULTS.budget_weight, help="λ (default: %(default)s)")
    gates.add_argument("--bound-warmup", type=float, default=DEFAULTS.bound_warmup,
                       help="share of the run over which per-block rate bounds relax (default: %(default)s)")
    gates.add_argument("--max-rate", type=float, default=DEFAULTS.max_rate,
                       help="the per-block rate bound relaxes up to this rate, not to 1, so that every block "
                            "skips part of its work (default: %(default)s)")
    gates.add_argument("--distill-weight", type=float, default=DEFAULTS.distill_weight, help="α (default: %(default)s)")
    gates.add_argument("--distill-temperature", type=float, default=DEFAULTS.distill_temperature)
    gates.add_argument("--distill-region", choices=DISTILL_REGIONS, default=DEFAULTS.distill_region,
                       help="detection: distil the FPN features over the whole image or only on the cells of "
                            "object boxes (default: %(default)s)")
    gates.add_argument("--background-weight", type=float, default=DEFAULTS.background_weight, metavar="β",
                       help="detection, spatial gates: add β × the share of the patches off object boxes "
                            "that the gates keep, so that they spend the budget on objects (default: %(default)s)")
    gates.add_argument("--tau-schedule", default=DEFAULTS.tau_schedule, help="Gumbel temperature schedule")
    gates.add_argument("--tau-start", type=float, default=DEFAULTS.tau_start)
    gates.add_argument("--tau-end", type=float, default=DEFAULTS.tau_end)
    gates.add_argument("--gate-lr-mult", type=float, default=DEFAULTS.gate_lr_mult,
                       help="learning-rate multiplier of the gates (default: %(default)s)")
    optim = p.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=int, default=DEFAULTS.epochs)
    optim.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size)
    optim.add_argument("--optimizer", default=DEFAULTS.optimizer, help="sgd (Nesterov) or adamw")
    optim.add_argument("--lr", type=float, default=DEFAULTS.lr)
    optim.add_argument("--momentum", type=float, default=DEFAULTS.momentum)
    optim.add_argument("--weight-decay", type=float, default=DEFAULTS.weight_decay)
    optim.add_argument("--warmup-epochs", type=float, default=DEFAULTS.warmup_epochs)
    optim.add_argument("--clip-grad", type=float, default=DEFAULTS.clip_grad, help="max gradient norm; 0 turns it off")
    optim.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    run = p.add_argument_group("run")
    run.add_argument("--out", metavar="DIR", help="run directory (checkpoint, logs)")
    run.add_argument("--resume", metavar="DIR", help="continue the run in DIR with its stored settings")
    run.add_argument("--seed", type=int, default=DEFAULTS.seed)
    run.add_argument("--workers", type=int, default=0, help="data-loading processes (default: %(default)s)")
    run.add_argument("--device", help="cpu, cuda, cuda:1… (default: CUDA if available)")
    run.add_argument("--log-every", type=int, default=DEFAULTS.log_every, help="steps between log rows")
    run.add_argument("--no-tensorboard", action="store_true")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=run_train, train_defaults=vars(p.parse_args([])))


RESUME_OPTIONS = ("resume", "workers", "device")
"""The options ``--resume`` takes; every other setting is the stored run's."""


def _settings_given(args: argparse.Namespace) -> list[str]:
    """The options given values other than their defaults, besides :data:`RESUME_OPTIONS`."""
    return [f"--{name.replace('_', '-')}" for name, default in args.train_defaults.items()
            if name not in RESUME_OPTIONS and getattr(args, name) != default]


def run_train(args: argparse.Namespace) -> None:
    if args.resume is None and args.out is None:
        raise ValueError("give --out DIR for a new run, or --resume DIR to continue one")
    if args.resume is not None and args.out is not None:
        raise ValueError("--resume DIR continues the run in DIR; do not give --out with it")
    if args.resume is not None and _settings_given(args):
        raise ValueError(f"--resume continues the run with its stored settings; {', '.join(_settings_given(args))} "
                         "cannot change them (start a new run with --out instead)")
    checks.integer("--workers", args.workers, minimum=0)
    context = distributed.setup(args.device)
    try:
        if args.resume is not None:
            checkpoint = resume(args.resume, context, args.workers)
        else:
            paradigm = args.paradigm or ("none" if args.static else "spatial")
            task = "detection" if args.dataset in DETECTION_DATASETS else "classification"
            if args.task not in (None, task):
                raise ValueError(f"--task {args.task} does not fit --dataset {args.dataset}, a {task} dataset; "
                                 f"detection datasets: {', '.join(DETECTION_DATASETS)}")
            # refuses a region or a background weight the task lacks
            task_of(task, args.distill_temperature, args.distill_region, args.background_weight)
            if args.background_weight and "spatial" not in paradigm:
                raise ValueError(f"--background-weight {args.background_weight:g} weighs the patches spatial gates "
                                 f"keep; paradigm {paradigm!r} has none (give --paradigm spatial)")
            model_name = args.model or DEFAULT_MODELS[task]
            spec = RunSpec(model=model_name, paradigm=paradigm, granularity=args.granularity,
                           gate_scale=args.gate_scale, dataset=args.dataset, data=args.data,
                           image_size=args.image_size, train_size=args.train_size, test_size=args.test_size,
                           data_seed=args.data_seed, teacher=args.teacher)
            config = TrainConfig(
                epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
                momentum=args.momentum, weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
                gate_lr_mult=args.gate_lr_mult, static=args.static, target=args.target,
                budget_ms=args.budget_ms, hardware=args.hardware, budget_batch_size=args.budget_batch_size,
                budget_weight=args.budget_weight, bound_warmup=args.bound_warmup, max_rate=args.max_rate,
                distill_weight=args.distill_weight, distill_temperature=args.distill_temperature,
                distill_region=args.distill_region, background_weight=args.background_weight,
                tau_schedule=args.tau_schedule, tau_start=args.tau_start, tau_end=args.tau_end,
                clip_grad=args.clip_grad or None, bf16=args.bf16, seed=args.seed, log_every=args.log_every,
                tensorboard=not args.no_tensorboard, progress_bar=not args.no_progress)
            checkpoint = train(spec, config, args.out, context=context, workers=args.workers)
        if context.is_main:
            print(f"checkpoint: {checkpoint}")
    finally:
        distributed.cleanup(context)


# --------------------------------------------------------------------- eval
def add_eval(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval", help="accuracy, activation rates, FLOPs and measured sparse-vs-dense latency of a checkpoint",
        description="Evaluate a checkpoint on its dataset's test split: top-1 accuracy (detectors: COCO AP), "
                    "per-block activation rates, dynamic and static FLOPs, where spatial masks fall (datasets "
                    "with object boxes), and the latency of sparse against dense execution measured on this "
                    "machine (detectors: the backbone and the whole detector). Writes eval.json and eval.md.")
    p.add_argument("checkpoint", metavar="CKPT", help="a checkpoint.pt or its run directory")
    p.add_argument("--dataset", choices=DATASETS, help="evaluate on another dataset than the training one")
    p.add_argument("--data", metavar="PATH", help="where the dataset's files are")
    p.add_argument("--test-size", type=int, help="use the first N test images")
    p.add_argument("--execution", default="sparse", help="sparse (default) or masked, for accuracy")
    p.add_argument("--latency-batch", type=positive_int_list, metavar="N[,N...]",
                   help="batch sizes of the latency measurement (default: 1,32; detectors: 1,2)")
    p.add_argument("--latency-size", type=positive_int_list, default=[], metavar="S[,S...]",
                   help="detectors: short sides the images are resized to for the latency measurement "
                        "(default: the training size)")
    p.add_argument("--repeats", type=int, default=20, help="interleaved timing rounds (default: %(default)s)")
    p.add_argument("--hardware", type=name_list, default=[], metavar="NAME[,NAME...]",
                   help="also predict the latency on these profiles, at the latency batch sizes "
                        "(see `laudnet hardware list`)")
    p.add_argument("--out", metavar="DIR", help="where to write eval.json and eval.md (default: the run directory)")
    p.set_defaults(run=run_eval)


def run_eval(args: argparse.Namespace) -> None:
    checks.positive_int("--repeats", args.repeats)
    for name in args.hardware:  # unknown profiles are refused before the evaluation runs
        load_hardware(name)
    result = evaluate_checkpoint(args.checkpoint, dataset=args.dataset, data=args.data, test_size=args.test_size,
                                 out_dir=args.out, execution=args.execution,
                                 latency_batches=args.latency_batch, latency_sizes=args.latency_size,
                                 repeats=args.repeats,
                                 hardware=args.hardware, progress=True)
    print(summary_markdown(result))
    print(f"wrote {result['json']} and eval.md")


# --------------------------------------------------------------------- report
def add_report(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report", help="plots and mask overlays of evaluated runs, in one HTML page",
        description="Gather evaluations (eval.json files from `laudnet eval`) into report.html: accuracy "
                    "against FLOPs, per-block activation rates, and the decisions of each dynamic model on "
                    "example test images (spatial masks drawn over the images).")
    p.add_argument("evals", nargs="+", metavar="EVAL_JSON", help="eval.json files (or run directories holding one)")
    p.add_argument("--out", metavar="DIR", default="laudnet-report", help="default: %(default)s")
    p.add_argument("--examples", type=int, default=8, help="example images per model (default: %(default)s)")
    p.add_argument("--title", default="laudnet report")
    p.set_defaults(run=run_report)


def run_report(args: argparse.Namespace) -> None:
    path = write_report(args.evals, args.out, examples=args.examples, title=args.title)
    print(f"report: {path.resolve()}")


# --------------------------------------------------------------------- demo
def add_demo(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo", help="the whole story on embedded data in a few minutes: teacher, student, eval, report",
        description="On the embedded cluttered-objects data: train a small static teacher, train a dynamic "
                    "student from it with a FLOPs budget and distillation, evaluate both (accuracy, FLOPs, "
                    "sparse-vs-dense latency measured here) and write an HTML report.")
    p.add_argument("--paradigm", default="spatial", help="student paradigm (default: %(default)s)")
    p.add_argument("--granularity", help="student granularity (default: a per-paradigm choice)")
    p.add_argument("--target", type=float, default=0.5, help="FLOPs ratio target (default: %(default)s)")
    p.add_argument("--out", metavar="DIR", default="laudnet-demo", help="default: %(default)s")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=run_demo)


def run_demo(args: argparse.Namespace) -> None:
    report = demo(args.out, paradigm=args.paradigm, granularity=args.granularity, target=args.target,
                  seed=args.seed)
    print(f"report: {report.resolve()}")
