"""``laudnet hardware``, ``predict`` and ``latency``: the latency predictor on the command line.

- ``hardware list`` / ``hardware show NAME``: the known device profiles;
- ``predict``: predicted latency of a network on a device, with its per-block breakdown;
- ``latency calibrate`` / ``latency validate``: fit the ``local`` profile to this CPU and
  check the predictor against measurements of held-out blocks.

``add_parsers(subparsers)`` registers them.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torchvision

from ..latency.hardware import list_hardware, load_hardware
from ..latency.predictor import METHODS, predict_latency
from ..measure.calibrate import NETWORK_SECONDS, NETWORKS, calibrate, extend_calibration
from ..measure.drift import rescale_for_drift
from ..measure.validate import validate
from ..measure.validate_networks import NETWORK_REPEATS, validate_networks
from ..models import create_model, list_models
from ..outputs import check_directory, claim
from .arguments import non_negative_int, positive_int, rate

DEFAULT_THREADS = 2


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``hardware``, ``predict`` and ``latency`` commands."""
    hardware = subparsers.add_parser("hardware", help="list or show hardware profiles")
    hardware_commands = hardware.add_subparsers(dest="hardware_command", metavar="{list,show}", required=True)
    hardware_commands.add_parser("list", help="the known profiles").set_defaults(run=hardware_list)
    show = hardware_commands.add_parser("show", help="one profile with its sources")
    show.add_argument("name", help="profile name (see `hardware list`) or path to a JSON profile")
    show.set_defaults(run=hardware_show)

    predict = subparsers.add_parser("predict", help="predict the latency of a network on a device")
    predict.add_argument("--arch", default="resnet50",
                         help="laudnet model (laudnet.list_models()) or torchvision classification model")
    predict.add_argument("--paradigm", default="none",
                         help="per-stage paradigm spec, e.g. spatial or spatial-spatial-channel-layer; "
                              "none (default) gives the static network")
    predict.add_argument("--granularity", default=None, help="per-stage S or G, e.g. 4-4-2-1")
    predict.add_argument("--hardware", default="v100", help="profile name (see `hardware list`) or JSON path")
    predict.add_argument("--batch-size", type=positive_int, default=128)
    predict.add_argument("--input-size", type=positive_int, default=224)
    predict.add_argument("--rate", type=rate, default=None, help="activation rate of every gate (default 1)")
    predict.add_argument("--method", choices=METHODS, default="auto",
                         help="learned: analytic cost times the correction learned from calibration's network "
                              "pieces; auto (default): learned when the profile has it")
    predict.add_argument("--execution", choices=("sparse", "static"), default="sparse")
    predict.add_argument("--json", action="store_true", help="print the report as JSON")
    predict.set_defaults(run=predict_command)

    latency = subparsers.add_parser("latency", help="calibrate and validate the predictor on this CPU")
    latency_commands = latency.add_subparsers(dest="latency_command", metavar="{calibrate,validate}", required=True)
    calibrate_parser = latency_commands.add_parser("calibrate", help="measure this CPU and write the `local` profile")
    calibrate_parser.add_argument("--out", type=Path, default=None,
                                  help="profile path (default: local.json in the user profile directory)")
    calibrate_parser.add_argument("--threads", type=positive_int, default=None,
                                  help=f"default: {DEFAULT_THREADS}, with --extend those of the profile")
    calibrate_parser.add_argument("--scale", type=float, default=None,
                                  help="multiplies the number of micro-benchmarks (default 1)")
    calibrate_parser.add_argument("--repeats", type=positive_int, default=None,
                                  help="timing rounds of a micro-benchmark (default 7)")
    calibrate_parser.add_argument("--statistic", choices=("median", "min"), default=None,
                                  help="of the rounds (default: median)")
    calibrate_parser.add_argument("--seed", type=int, default=0)
    calibrate_parser.add_argument("--networks", type=non_negative_int, default=NETWORKS,
                                  help=f"whole networks timed piece by piece for the learned correction "
                                       f"(default {NETWORKS}, at most {NETWORK_SECONDS:.0f} s; 0: none)")
    calibrate_parser.add_argument("--quick", action="store_true",
                                  help="about 2 minutes: a third of the micro-benchmarks, networks for 50 s")
    calibrate_parser.add_argument("--report-dir", type=Path, default=None, help="also write the fit report there")
    calibrate_parser.add_argument("--extend", default=None, metavar="PROFILE",
                                  help="time more networks into a calibrated profile of this machine (name or "
                                       "path; the next networks of the same draw, its micro-benchmark fit kept), "
                                       "written back to it or to --out: more calibration time, better predictions")
    calibrate_parser.set_defaults(run=calibrate_command)
    validate_parser = latency_commands.add_parser("validate", help="compare predictions with measured held-out blocks")
    validate_parser.add_argument("--n", type=positive_int, default=60, help="number of block configurations")
    validate_parser.add_argument("--seed", type=int, default=1)
    validate_parser.add_argument("--hardware", default="local")
    validate_parser.add_argument("--threads", type=positive_int, default=None, help="default: those of the profile")
    validate_parser.add_argument("--repeats", type=positive_int, default=None,
                                 help=f"timing rounds (default: 7 per block, {NETWORK_REPEATS} per whole network)")
    validate_parser.add_argument("--decisions", type=positive_int, default=3,
                                 help="random decision sets per configuration")
    validate_parser.add_argument("--statistic", choices=("median", "min"), default="median")
    validate_parser.add_argument("--paradigms", default=None,
                                 help="comma-separated paradigms to validate (default: all), "
                                      "e.g. spatial,layer+spatial")
    validate_parser.add_argument("--networks", action="store_true",
                                 help="validate on N whole networks (random architecture, input size, batch, "
                                      "paradigm, granularity, rate), sparse and static measured interleaved, "
                                      "instead of blocks")
    validate_parser.add_argument("--remeasure", action="store_true",
                                 help="with --networks: measure every network a second time and report how well "
                                      "the two passes agree (the machine's noise floor)")
    validate_parser.add_argument("--out", type=Path, default=Path("latency-validation"))
    validate_parser.set_defaults(run=validate_command)


# --------------------------------------------------------------------------------- commands
def hardware_list(args: argparse.Namespace) -> int:
    print(f"{'name':<14}{'kind':<6}{'FP32 TFLOPS':>12}{'GB/s':>8}  {'status':<13}title")
    for name in list_hardware():
        hw = load_hardware(name)
        status = "calibrated" if hw.calibrated else "uncalibrated"
        print(f"{name:<14}{hw.kind:<6}{hw.peak_tflops:>12.3g}{hw.memory_bandwidth_gbs:>8.4g}  {status:<13}{hw.title}")
    return 0


def hardware_show(args: argparse.Namespace) -> int:
    print(load_hardware(args.name).describe())
    return 0


def build_model(arch: str, paradigm: str, granularity: str | None, input_size: int):
    """A laudnet dynamic model, or a static torchvision one for ``paradigm="none"``, with
    random weights on the meta device (shapes only: nothing is computed or downloaded)."""
    if paradigm != "none" or granularity is not None:
        if arch not in list_models():
            raise ValueError(f"no dynamic model {arch!r}; dynamic models: {', '.join(list_models())}")
        model = create_model(arch, paradigm=paradigm, granularity=granularity, input_size=input_size)
    else:
        names = set(torchvision.models.list_models(module=torchvision.models))
        if arch not in names:
            raise ValueError(f"unknown architecture {arch!r}; torchvision classification models: "
                             f"{', '.join(sorted(names))}")
        model = torchvision.models.get_model(arch, weights=None)
    return model.to("meta")


def predict_command(args: argparse.Namespace) -> int:
    hw, drift = rescale_for_drift(load_hardware(args.hardware))
    if drift is not None:
        logging.getLogger("laudnet").warning(drift)
    model = build_model(args.arch, args.paradigm, args.granularity, args.input_size)
    report = predict_latency(model, hw, args.batch_size, args.input_size, args.rate, args.method, args.execution)
    report.model = args.arch if args.paradigm == "none" else f"{args.arch} {args.paradigm}:{args.granularity or 'default'}"
    print(json.dumps(report.to_dict(), indent=1) if args.json else report.summary())
    return 0


def calibrate_command(args: argparse.Namespace) -> int:
    if args.report_dir is not None:
        check_directory(args.report_dir, "--report-dir")
    micro = {"--scale": args.scale, "--repeats": args.repeats, "--statistic": args.statistic}
    seconds = 50.0 if args.quick else NETWORK_SECONDS
    if args.extend is not None:
        given = [flag for flag, value in micro.items() if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)} set the micro-benchmarks, which --extend keeps from the profile; "
                             "drop them or calibrate anew")
        hw, report = extend_calibration(args.extend, args.out, args.networks, seconds, seed=args.seed,
                                        threads=args.threads)
    else:
        scale = 1.0 if args.scale is None else args.scale
        hw, report = calibrate(args.out, args.threads or DEFAULT_THREADS, scale / 3 if args.quick else scale,
                               args.repeats or 7, args.seed, statistic=args.statistic or "median",
                               networks=args.networks, network_seconds=seconds)
    lines = [f"wrote profile {hw.name!r} to {hw.path}", "fit on the calibration measurements:"]
    lines += [f"  {family:<15} n={r['n']:<4} median error {r['median_abs_error']:.1%}, within ±10 %: "
              f"{r['within_10']:.0%}" for family, r in report.items()]
    print("\n".join(lines))
    if args.report_dir is not None:
        args.report_dir.mkdir(parents=True, exist_ok=True)
        (args.report_dir / "calibration.json").write_text(json.dumps(dict(profile=str(hw.path), fit=report),
                                                                     indent=1) + "\n")
        (args.report_dir / "calibration.md").write_text("\n".join(lines) + "\n\n" + hw.describe() + "\n")
    return 0


def validate_command(args: argparse.Namespace) -> int:
    if args.remeasure and not args.networks:
        raise ValueError("--remeasure applies to whole networks: add --networks")
    threads = args.threads or load_hardware(args.hardware).model.get("threads")
    paradigms = None if args.paradigms is None else tuple(p.strip() for p in args.paradigms.split(","))
    repeats = {} if args.repeats is None else {"repeats": args.repeats}  # else each validation's default
    with claim(args.out):
        if args.networks:
            result = validate_networks(args.n, args.seed, args.hardware, threads=threads, remeasure=args.remeasure,
                                       **repeats)
        else:
            result = validate(args.n, args.seed, args.hardware, decisions=args.decisions, threads=threads,
                              statistic=args.statistic, paradigms=paradigms, **repeats)
        paths = result.write(args.out)
    print(result.markdown().split("\n| configuration")[0].split("\n| network")[0].rstrip())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
