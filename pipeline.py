#!/usr/bin/env python
"""heartprobe command line: frozen audio encoders + probes for heart-murmur detection on CirCor.

    python pipeline.py demo                      # synthetic data, end to end, no downloads
    python pipeline.py extract --data DIR --encoder logmel
    python pipeline.py probe   --data DIR --encoder logmel --probe linear --splits paper --out runs/x
    python pipeline.py report  --runs runs/x [runs/y ...] --out reports/x
"""
from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

DEFAULT_CACHE = Path(__file__).resolve().parent / "cache"


def parse_options(pairs: list[str] | None, flag: str = "--encoder-opt") -> dict:
    """`KEY=VALUE` strings -> kwargs; values are Python literals when they parse as one."""
    import ast
    options = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"{flag} expects KEY=VALUE, got {pair!r}")
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value
    return options


def create_encoder(args, name: str, precision: str | None):
    """The encoder that `extract` and `benchmark` build from their shared options."""
    from embed.encoders import create
    return create(name, args.checkpoint, pooling=args.pooling, device=args.device, precision=precision,
                  trust_checkpoint=args.trust_checkpoint, layers=args.layers, **parse_options(args.encoder_opt))


def add_dataset_options(p: argparse.ArgumentParser, required: bool = True, when: str = "") -> None:
    """--data and --dataset; `when` says when an optional --data is needed."""
    p.add_argument("--data", required=required, default=None, help=f"{when}the dataset's folder")
    p.add_argument("--dataset", default="circor", choices=LazyChoices("embed.datasets", "available_datasets"),
                   help=f"{when}which dataset layout --data holds")


def add_cache_option(p: argparse.ArgumentParser) -> None:
    """--cache; its default is filled in by `parse_args`, so that help does not print a path of
    this machine."""
    p.add_argument("--cache", default=None, metavar="DIR",
                   help="embedding cache folder (default: cache/ in the folder of pipeline.py, wherever the "
                        "command is run from)")


def add_encoder_options(p: argparse.ArgumentParser) -> None:
    """Checkpoint, pooling, device and encoder-specific options (extract and benchmark)."""
    p.add_argument("--checkpoint", default=None, help="official weight file")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow full pickle loading (only for files you trust)")
    p.add_argument("--pooling", default=None, choices=["mean", "max", "meanmax", "meanstd"])
    p.add_argument("--encoder-opt", action="append", metavar="KEY=VALUE",
                   help="encoder-specific option, repeatable (e.g. capacity=tiny, hop_s=0.1)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--layers", default="last", metavar="last|all|I,J,...",
                   help="which layers each window's vector holds, pooled and concatenated in network order: "
                        "the embedding (last, as before), all blocks + the embedding, or these indices "
                        "(0 = first block, -1 = the embedding); one forward pass for all")


def add_backend_options(p: argparse.ArgumentParser, actors: bool = False) -> None:
    """Where the work runs (extract and probe): here, or on a Ray cluster (`pip install -e '.[ray]'`)."""
    p.add_argument("--backend", default="local", choices=["local", "ray"],
                   help="ray: run the work as Ray tasks/actors (results equal the local backend's)")
    p.add_argument("--ray-address", default=None, metavar="auto|HOST:PORT",
                   help="the Ray cluster to join (default: start a local Ray instance)")
    if actors:
        p.add_argument("--ray-actors", type=int, default=None,
                       help="encoder actors (default: one per GPU in the cluster, else one)")


def ray_options(args):
    from embed.ray_backend import RayOptions
    return RayOptions(address=args.ray_address, actors=getattr(args, "ray_actors", None))


def cmd_verify(args) -> int:
    from embed.dataset_jobs import verify_job
    return verify_job(args.dataset, args.data)


def cmd_download(args) -> int:
    from embed.datasets.download import DEFAULT_URL, download_circor
    root = download_circor(args.dest, args.url or DEFAULT_URL)
    print(f"CirCor ready in {root}")
    return 0


def cmd_splits(args) -> int:
    from embed.dataset_jobs import splits_job
    splits_job(args.dataset, args.data, args.out, args.scheme, args.seed, args.folds)
    return 0


def cmd_extract(args) -> int:
    from embed.extract_job import run_extract
    from embed.frames import FrameConfig
    from embed.segments import SegmentConfig
    return run_extract(args.dataset, args.data, args.encoder.split(","),
                       functools.partial(create_encoder, args, precision=args.precision), args.cache,
                       SegmentConfig(args.window, args.train_stride, args.eval_stride, align=args.windows),
                       FrameConfig(args.frame_dtype, args.frame_hop, args.window) if args.frames else None,
                       normalisation_splits=args.fit_normalisation, batch_size=args.batch_size,
                       flush_every=args.flush_every, workers=args.workers, lock_timeout_s=args.lock_timeout,
                       backend=args.backend, ray=ray_options(args), strict=args.strict)


def cmd_benchmark(args) -> int:
    from embed.benchmark import run_benchmark
    run_benchmark(functools.partial(create_encoder, args, args.encoder), args.precision.split(","), args.batch_size,
                  args.windows, args.window, data=args.data, dataset=args.dataset, recordings=args.recordings,
                  seed=args.seed, accuracy_windows=args.accuracy_windows, compare_naive=args.compare, out=args.out)
    return 0


def cmd_gpu_check(args) -> int:
    from embed.gpu_check import run_gpu_check
    report = run_gpu_check(args.data, args.out, main, device=args.device, encoders=args.encoders.split(","),
                           mn04=args.mn04, precisions=args.precision.split(",") if args.precision else None,
                           windows=args.windows, recordings=args.recordings,
                           extract_recordings=args.extract_recordings, batch_size=args.batch_size,
                           workers=args.workers, dataset=args.dataset)
    print("\n" + "\n".join(report.lines) + f"\nwrote {Path(args.out) / 'gpu-check.txt'} and {args.out}/benchmark-*.csv")
    return 1 if report.failed else 0


def cmd_benchmark_ray(args) -> int:
    from embed.ray_benchmark import benchmark_job
    benchmark_job(args.dataset, args.data, functools.partial(create_encoder, args, args.encoder, args.precision),
                  args.recordings, [int(a) for a in args.actors.split(",")], args.batch_size, args.ray_address)
    return 0


def cmd_probe(args) -> int:
    from classify.jobs.probe import probe_job
    probe_job(args.dataset, args.data, args.encoder.split(","), args.probe.split(","), args.splits, args.cache,
              args.out, targets=args.targets, decision=args.decision, seed=args.seed, ensemble=args.ensemble,
              demographics=args.demographics, oof_folds=args.oof_folds, repeats=args.repeats,
              backend=args.backend, ray=ray_options(args), layers=args.layers, overwrite=args.overwrite,
              save_model=args.save_model, checkpoint=args.checkpoint)
    return 0


def cmd_segment(args) -> int:
    from classify.jobs.segment import segment_job
    segment_job(args.dataset, args.data, args.encoder, args.cache, args.out, splits=args.splits, seed=args.seed,
                every_recording=args.every_recording, heart_rate=args.heart_rate)
    return 0


def cmd_predict(args) -> int:
    from classify.jobs.predict import predict_job
    return predict_job(args.model, args.input, args.out, checkpoint=args.checkpoint, encoder_name=args.encoder,
                       probe=args.probe, patient_id=args.patient_id, device=args.device,
                       trust_checkpoint=args.trust_checkpoint, weights=args.weights, strict=args.strict)


def cmd_recipe(args) -> int:
    from classify.jobs.recipe import recipe_job
    recipe_job(args.name, args.dataset, args.data, args.cache, args.weights, args.out, members=args.member,
               without=tuple(filter(None, (args.without or "").split(","))), overrides=parse_options(args.set, "--set"),
               splits=args.splits, seeds=args.seeds, seed=args.seed, save_model=args.save_model, device=args.device)
    return 0


def cmd_compare(args) -> int:
    from classify.jobs.compare import compare_job
    compare_job(args.dataset, args.data, args.encoders, args.protocols, args.splits, args.seeds, args.cache, args.out,
                args.weights, seed=args.seed, ensemble=not args.no_ensemble, n_boot=args.bootstrap,
                device=args.device, command="python pipeline.py " + " ".join(sys.argv[1:]))
    return 0


def cmd_demo(args) -> int:
    from classify.jobs.demo import run_demo
    run_demo(args.workdir, args.patients, args.seed, args.clean)
    return 0


def cmd_report(args) -> int:
    from classify.jobs.report import report_job
    report_job(args.runs, args.out, paper=not args.no_paper, by=args.by, dataset_name=args.dataset, data=args.data)
    return 0


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's default in its help."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.option_strings and action.default is not None and action.default is not False \
                and action.default != argparse.SUPPRESS and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose epilog may be a function, called only when help is shown (the
    encoder and probe lists import torch and scikit-learn, which plain runs need not wait for)."""

    def add_argument(self, *args, **kwargs) -> argparse.Action:
        if not kwargs.get("help") and kwargs.get("default") is not None and kwargs.get("default") is not False:
            kwargs["help"] = "(default: %(default)s)"  # argparse prints no help line without help text
        # argparse formats every new option's metavar once, which reads its choices: a placeholder
        # metavar keeps lazy ones unread until help or an error shows them as {a,b,c}
        lazy = isinstance(kwargs.get("choices"), LazyChoices) and "metavar" not in kwargs
        action = super().add_argument(*args, **({**kwargs, "metavar": "X"} if lazy else kwargs))
        if lazy:
            action.metavar = None
        return action

    def format_help(self) -> str:
        if callable(self.epilog):
            self.epilog = self.epilog()
        return super().format_help()


class CommandParser(Parser):
    """The top-level parser: an argument that the chosen command does not take is reported with that
    command's usage (`pipeline.py probe: error: ...`), not with the list of commands."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.commands: dict[str, argparse.ArgumentParser] = {}  # filled by build_parser

    def parse_args(self, args=None, namespace=None) -> argparse.Namespace:
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self.commands.get(getattr(parsed, "command", None), self).error(
                f"unrecognized arguments: {' '.join(extras)}")
        return parsed


class LazyChoices:
    """Choices read from a registry when first needed: `MODULE.NAME` is a mapping or a function
    returning the names (the registries import torch, scikit-learn or scipy, which building the
    parser, --help and commands that do not use them need not wait for)."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def _names(self) -> list[str]:
        import importlib
        registry = getattr(importlib.import_module(self.module), self.name)
        return list(registry() if callable(registry) else registry)

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __iter__(self):
        return iter(self._names())


COMMANDS_EPILOG = ("`pipeline.py COMMAND --help` shows a command's options and the names it takes (encoders, "
                   "probes, split schemes, decision rules, recipes).")


def recipes_epilog() -> str:
    from classify.recipes.book import RECIPES
    import textwrap
    return "recipes:" + "".join("\n" + textwrap.fill(f"{name}: {recipe.description}", 100, initial_indent="  ",
                                                      subsequent_indent="    ") for name, recipe in RECIPES.items())


def names_epilog() -> str:
    from classify.evaluation.rules import RULES
    from classify.estimators.probes import PROBES
    from embed.encoders import available
    rules = "".join(f"\n  {name}: {rule.summary}" for name, rule in RULES.items())
    return (f"encoders: {', '.join(available())}\nprobes: {', '.join(PROBES)}\n"
            f"split schemes: {scheme_list()} (or a CSV written by `splits`)\n"
            f"decision rules (tuned ones on val + out-of-fold train, for the dataset's first metric):{rules}")


def scheme_list() -> str:
    from embed.datasets.base import split_schemes
    return "; ".join(f"{name}: {', '.join(names)}" for name, names in split_schemes().items())


def splits_spec(value: str) -> str:
    """--splits: a scheme name or an existing splits CSV; anything else lists the schemes."""
    from embed.datasets.base import split_schemes
    if any(value in names for names in split_schemes().values()) or Path(value).is_file():
        return value
    raise argparse.ArgumentTypeError(f"{value!r} is neither a split scheme ({scheme_list()}) "
                                     "nor an existing splits CSV file")


def add_verify_parser(sub: argparse._SubParsersAction) -> None:
    """The `verify` command and its options."""
    p = sub.add_parser("verify", help="check files against SHA256SUMS.txt and parse the dataset")
    add_dataset_options(p)
    p.set_defaults(func=cmd_verify)


def add_download_parser(sub: argparse._SubParsersAction) -> None:
    """The `download` command and its options."""
    p = sub.add_parser("download", help="download the official CirCor v1.0.3 release zip (resumable)")
    p.add_argument("--dest", required=True)
    p.add_argument("--url", default=None)
    p.set_defaults(func=cmd_download)


def add_splits_parser(sub: argparse._SubParsersAction) -> None:
    """The `splits` command and its options."""
    p = sub.add_parser("splits", help="write patient-level splits as CSV")
    add_dataset_options(p)
    p.add_argument("--out", required=True)
    p.add_argument("--scheme", default=None, help="circor: paper | kfold | campaign; physionet2016: kfold | source "
                                                  "(default: the dataset's first)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--folds", type=int, default=5)
    p.set_defaults(func=cmd_splits)


def add_window_options(p: argparse.ArgumentParser) -> None:
    """Window length, strides and alignment of `extract`."""
    p.add_argument("--window", type=float, default=5.0)
    p.add_argument("--train-stride", type=float, default=2.5)
    p.add_argument("--eval-stride", type=float, default=None, help="default: the window (no overlap)")
    p.add_argument("--windows", default="fixed", choices=["fixed", "cycles"],
                   help="cycles: each window starts at the next S1 onset of the recording's .tsv (heart-cycle "
                        "aligned; fixed windows where a recording has no .tsv)")


def add_frame_options(p: argparse.ArgumentParser) -> None:
    """`extract --frames`: every frame embedding instead of pooled windows."""
    p.add_argument("--frames", action="store_true",
                   help="cache every frame embedding with its centre time (NAME-frames-KEY.h5; non-overlapping "
                        "--window windows to the recording's end) instead of pooled window embeddings")
    p.add_argument("--frame-dtype", default="fp16", choices=["fp16", "fp32"], help="stored precision of --frames")
    p.add_argument("--frame-hop", type=float, default=None, metavar="SECONDS",
                   help="with --frames: average consecutive frames to this hop (a multiple of the encoder's)")


def add_extract_parser(sub: argparse._SubParsersAction) -> None:
    """The `extract` command and its options."""
    p = sub.add_parser("extract", epilog=names_epilog, help="embed every recording's windows into the HDF5 cache")
    add_dataset_options(p)
    p.add_argument("--encoder", default="logmel", help="registry name(s), comma-separated")
    add_encoder_options(p)
    add_cache_option(p)
    p.add_argument("--precision", default=None, choices=["fp32", "fp16", "bf16"],
                   help="default: fp16 autocast on CUDA; on a CPU bf16 where it is native and the encoder "
                        "is bf16-safe (docs/speed.md, bf16 safety), fp32 otherwise")
    p.add_argument("--batch-size", type=int, default=None,
                   help="windows per batch (default on a CPU: the fastest of 2-32, timed first, for 256 "
                        "recordings or more, else 32; on CUDA: fitted to free memory)")
    p.add_argument("--workers", type=int, default=2, help="decode/resample threads")
    p.add_argument("--flush-every", type=int, default=64,
                   help="write finished recordings to the cache every N recordings")
    add_window_options(p)
    p.add_argument("--lock-timeout", type=float, default=0.0,
                   help="seconds to wait for another run holding the same cache")
    p.add_argument("--strict", action="store_true", help="exit non-zero if any recording had a problem")
    add_backend_options(p, actors=True)
    p.add_argument("--fit-normalisation", default=None, metavar="SCHEME",
                   help="fit the encoder's input statistics (BYOL-A) on the patients that are in train "
                        "in every split of this scheme, as the authors fit them on training data")
    add_frame_options(p)
    p.set_defaults(func=cmd_extract)


def add_benchmark_parser(sub: argparse._SubParsersAction) -> None:
    """The `benchmark` command and its options."""
    p = sub.add_parser("benchmark", epilog=names_epilog, help="where the time goes: windows/s, GFLOP, roofline share, wall split")
    p.add_argument("--encoder", default="logmel")
    add_encoder_options(p)
    p.add_argument("--precision", default="fp32",
                   help="comma-separated: fp32,bf16 on CPU; fp16 on CUDA; auto = the encoder's default")
    p.add_argument("--batch-size", default="32", help="comma-separated batch sizes; auto = extract's choice")
    p.add_argument("--windows", type=int, default=256, help="windows timed per setting")
    p.add_argument("--window", type=float, default=5.0, help="window length in seconds")
    p.add_argument("--data", default=None, help="time real recordings of this dataset (decode included)")
    p.add_argument("--dataset", default="circor", help="which dataset layout --data holds")
    p.add_argument("--recordings", type=int, default=24, help="recordings sampled with --data")
    p.add_argument("--accuracy-windows", type=int, default=64,
                   help="real windows on which low precision is compared with fp32")
    p.add_argument("--compare", action="store_true",
                   help="with --data: also time a naive fp32 loop (one recording at a time) against extract")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the rows as CSV")
    p.set_defaults(func=cmd_benchmark)


def add_gpu_check_parser(sub: argparse._SubParsersAction) -> None:
    """The `gpu-check` command and its options."""
    p = sub.add_parser("gpu-check", help="the whole GPU check: benchmark + full extract, M2D/mn04/BEATs, fp16 and fp32")
    add_dataset_options(p)
    p.add_argument("--mn04", default=None, help="mn04_as_mAP_432.pt (M2D and BEATs get random official-layout weights)")
    p.add_argument("--out", default="runs/gpu-check")
    p.add_argument("--device", default="cuda", help="cuda[:N] | cpu (the same code on a CPU, e.g. in CI)")
    p.add_argument("--encoders", default="m2d,beats,mn04", help="comma-separated, of m2d, beats, mn04")
    p.add_argument("--precision", default=None, help="comma-separated (default: fp16,fp32 on CUDA; bf16,fp32 on a CPU)")
    p.add_argument("--windows", type=int, default=2048, help="windows the benchmark times per precision")
    p.add_argument("--recordings", type=int, default=64, help="recordings the benchmark samples")
    p.add_argument("--extract-recordings", type=int, default=None, help="full extract of the first N (default: all)")
    p.add_argument("--batch-size", default="auto", help="auto (extract's choice for the device) or N")
    p.add_argument("--workers", type=int, default=8, help="decode/resample threads")
    p.set_defaults(func=cmd_gpu_check)


def add_benchmark_ray_parser(sub: argparse._SubParsersAction) -> None:
    """The `benchmark-ray` command and its options."""
    p = sub.add_parser("benchmark-ray", epilog=names_epilog, help="local vs Ray extraction: fixed cost, cost per recording, crossover")
    add_dataset_options(p)
    p.add_argument("--encoder", default="logmel")
    add_encoder_options(p)
    p.add_argument("--precision", default=None, choices=["fp32", "fp16", "bf16"])
    p.add_argument("--recordings", type=int, default=200, help="the first N recordings (timed on N/4 and N)")
    p.add_argument("--actors", default="1,2", help="comma-separated Ray actor counts")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--ray-address", default=None, metavar="auto|HOST:PORT")
    p.set_defaults(func=cmd_benchmark_ray)


def add_ensemble_options(p: argparse.ArgumentParser) -> None:
    """`probe` with several encoders: how they are combined."""
    p.add_argument("--ensemble", default=None, choices=["mean", "stack", "both"],
                   help="with several encoders: also combine them")
    p.add_argument("--demographics", action="store_true", help="stacker also sees age, sex, height, weight, pregnancy")
    p.add_argument("--oof-folds", type=int, default=5, help="patient-grouped folds for the stacker's inputs")


def add_probe_parser(sub: argparse._SubParsersAction) -> None:
    """The `probe` command and its options."""
    p = sub.add_parser("probe", epilog=names_epilog, help="train probes on cached embeddings, score per patient")
    add_dataset_options(p)
    p.add_argument("--encoder", default="logmel", help="name(s) or NAME@KEY, comma-separated")
    p.add_argument("--probe", default="linear", help="linear | xgboost | mlp (comma-separated for several)")
    p.add_argument("--splits", default=None, type=splits_spec,
                   help="a split scheme of the dataset (default: its first) or a CSV written by `splits`")
    p.add_argument("--decision", default="any", choices=LazyChoices("classify.evaluation.rules", "RULES"),
                   help="patient (group) rule, one of the decision rules listed below")
    p.add_argument("--targets", default="patient",
                   help="training labels: patient = the patient's label on every recording (the paper); "
                        "location (CirCor) = murmur-location-aware recording labels")
    add_ensemble_options(p)
    p.add_argument("--repeats", type=int, default=1,
                   help="rerun every split with probe seeds SEED, SEED+1, ... (runs named SPLIT@seedS)")
    p.add_argument("--layers", default=None, metavar="I|I,J|all|last|cv|weighted",
                   help="caches made with extract --layers: which layers the probe uses (I,J concatenated), "
                        "cv = the best single layer by patient-grouped CV inside train+val of each split, "
                        "weighted = per-layer probes stacked by a logistic regression on out-of-fold scores; "
                        "default: the whole cached vector")
    add_cache_option(p)
    p.add_argument("--out", default="runs/probe")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the scores.csv and predictions.csv --out holds (without it, such a folder is refused)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-model", default=None, metavar="DIR",
                   help="save the probes and decision rules selected on the first split, for predict")
    p.add_argument("--checkpoint", default=None, help="encoder weight file, recorded in the saved model")
    add_backend_options(p)
    p.set_defaults(func=cmd_probe)


def add_recipe_parser(sub: argparse._SubParsersAction) -> None:
    """The `recipe` command and its options."""
    p = sub.add_parser("recipe", epilog=recipes_epilog,
                       help="a committed recipe end to end: extract what is missing, fit, score, save")
    p.add_argument("name", help="a committed recipe (listed below), a recipe file's path (.toml), or with "
                                "--member the name of the recipe those members make")
    add_dataset_options(p)
    p.add_argument("--weights", default=None, help="folder holding the official weight files under their published names")
    p.add_argument("--out", default="runs/recipe")
    p.add_argument("--splits", default=None, type=splits_spec,
                   help="paper | kfold | campaign (CirCor), or a CSV from `pipeline.py splits`")
    p.add_argument("--seeds", type=int, default=5, help="probe seeds per split (inner CV folds differ)")
    p.add_argument("--seed", type=int, default=0)
    add_cache_option(p)
    p.add_argument("--device", default="auto")
    p.add_argument("--without", default=None, metavar="MEMBER[,MEMBER]",
                   help="leave these members out (ablation)")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="change one field of the recipe (ablation), e.g. patient_model=False, "
                        "test_intervals=tsv, train_intervals=segmenter, decision=mean")
    p.add_argument("--save-model", default=None, metavar="DIR",
                   help="also fit on every labelled patient and save that, for predict")
    p.add_argument("--member", action="append", metavar="KIND:ENCODER[:KEY=VALUE,...]",
                   help="compose the recipe of these members instead (repeat it), e.g. phases:logmel, quality, "
                        "windows:mn04:layers=cv,checkpoint=efficientat_mn04_as_mAP_432.pt")
    p.set_defaults(func=cmd_recipe)


def add_compare_parser(sub: argparse._SubParsersAction) -> None:
    """The `compare` command and its options."""
    p = sub.add_parser("compare", epilog=names_epilog,
                       help="every encoder x protocol on the same splits and seeds: CIs, paired differences "
                            "to logmel, a patient-level ensemble, compare.md and a forest plot")
    add_dataset_options(p)
    p.add_argument("--encoders", default="logmel",
                   help="comma-separated NAME[:checkpoint=FILE][:precision=P][:layers=I|I+J+...]; FILE (default: "
                        "the encoder's published weight file name) is looked up in --weights; layers=I: one layer's "
                        "windows and frames; I+J+...: in each run the layer with the best inner score")
    p.add_argument("--protocols", default="linear-any,linear-mean,cycle,cycle+logmel",
                   help="comma-separated: linear-any, linear-mean (linear evaluation as probe), cycle, cycle+logmel "
                        "(heart-cycle recipes over the log-mel segmentation)")
    p.add_argument("--weights", default=None, help="folder holding the official weight files under their published names")
    p.add_argument("--splits", default=None, type=splits_spec,
                   help="a split scheme of the dataset (default: its first) or a CSV written by `splits`")
    p.add_argument("--seeds", type=int, default=5, help="seeds per split")
    p.add_argument("--seed", type=int, default=0, help="the first seed (and the bootstrap's)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap resamples of the test patients")
    p.add_argument("--no-ensemble", action="store_true", help="leave out the patient-level ensemble rows")
    add_cache_option(p)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="runs/compare",
                   help="cells/ (one file per encoder x protocol x run: a rerun resumes), compare.csv, compare.md, "
                        "forest.png")
    p.set_defaults(func=cmd_compare)


def add_segment_parser(sub: argparse._SubParsersAction) -> None:
    """The `segment` command and its options."""
    p = sub.add_parser("segment", epilog=names_epilog, help="heart-cycle segmenter on frame caches: frame accuracy on test groups")
    add_dataset_options(p)
    p.add_argument("--encoder", default="logmel", help="frame cache (`extract --frames`): NAME or NAME@KEY")
    p.add_argument("--splits", default=None, type=splits_spec,
                   help="a split scheme of the dataset (default: its first) or a CSV written by `splits`")
    add_cache_option(p)
    p.add_argument("--out", default="runs/segment")
    p.add_argument("--every-recording", action="store_true",
                   help="write intervals for every recording of the cache, not only the test ones")
    p.add_argument("--heart-rate", type=float, default=0.8, metavar="W",
                   help="weight of durations scaled to each recording's estimated heart rate (0: training "
                        "durations only)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_segment)


def add_predict_parser(sub: argparse._SubParsersAction) -> None:
    """The `predict` command and its options."""
    p = sub.add_parser("predict", help="murmur call per patient from a saved probe (any sample rate)")
    p.add_argument("--model", required=True, help="folder written by probe --save-model")
    p.add_argument("--input", required=True, nargs="+", help="patient folder(s) (PID.txt + wavs) or wav files")
    p.add_argument("--out", default="runs/predict", help="one PID.json per patient goes here")
    p.add_argument("--checkpoint", default=None, help="encoder weights (default: the path in the manifest)")
    p.add_argument("--trust-checkpoint", action="store_true")
    p.add_argument("--weights", default=None, help="a saved recipe: folder of its encoders' official weight files")
    p.add_argument("--encoder", default=None, help="which saved model (default: the first)")
    p.add_argument("--probe", default=None)
    p.add_argument("--patient-id", default=None, help="treat all loose wav files as this one patient")
    p.add_argument("--device", default="auto")
    p.add_argument("--strict", action="store_true", help="exit non-zero on any problem, warnings included")
    p.set_defaults(func=cmd_predict)


def add_demo_parser(sub: argparse._SubParsersAction) -> None:
    """The `demo` command and its options."""
    p = sub.add_parser("demo", help="synthetic CirCor-format data -> extract -> probe, no downloads")
    p.add_argument("--patients", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default="runs/demo",
                   help="data, cache and results go here; a rerun reuses the data and the cache")
    p.add_argument("--clean", action="store_true", help="remove the work folder at the end")
    p.set_defaults(func=cmd_demo)


def add_report_parser(sub: argparse._SubParsersAction) -> None:
    """The `report` command and its options."""
    p = sub.add_parser("report", help="markdown table + PNG plots from one or more probe run folders")
    p.add_argument("--runs", required=True, nargs="+", help="folder(s) with scores.csv and predictions.csv")
    p.add_argument("--out", default=None, help="default: the first run folder")
    p.add_argument("--no-paper", action="store_true", help="leave out the paper's fine-tuned reference rows")
    p.add_argument("--by", type=lambda v: [n.strip() for n in v.split(",") if n.strip()], default=None,
                   metavar="A[,B...]", help="also break the best row's recalls down by these patient attributes "
                   "(circor: age, sex, pregnancy, campaign, murmur_grade, murmur_timing, murmur_shape, murmur_pitch, "
                   "most_audible, recordings; physionet2016: source); needs --data")
    add_dataset_options(p, required=False, when="with --by: ")
    p.set_defaults(func=cmd_report)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """`prog` defaults to how the program was started: `pipeline.py` or the `heartprobe` script."""
    parser = CommandParser(prog=prog, description=__doc__, formatter_class=HelpFormatter, epilog=COMMANDS_EPILOG)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=functools.partial(
        Parser, formatter_class=HelpFormatter))
    parser.commands = sub.choices

    add_verify_parser(sub)
    add_download_parser(sub)
    add_splits_parser(sub)
    add_extract_parser(sub)
    add_benchmark_parser(sub)
    add_gpu_check_parser(sub)
    add_benchmark_ray_parser(sub)
    add_probe_parser(sub)
    add_recipe_parser(sub)
    add_compare_parser(sub)
    add_segment_parser(sub)
    add_predict_parser(sub)
    add_demo_parser(sub)
    add_report_parser(sub)
    return parser


def parse_args(argv: list[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    """The command line as `main` runs it: --cache, where the command takes one, defaults to
    DEFAULT_CACHE here rather than in the parser, whose help would print this machine's path."""
    args = build_parser(prog).parse_args(argv)
    if getattr(args, "cache", "") is None:
        args.cache = str(DEFAULT_CACHE)
    return args


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = parse_args(argv, prog)
    try:
        return args.func(args)
    except (OSError, ValueError, KeyError, RuntimeError, ImportError) as err:
        # KeyError's str() is its repr; the message alone reads better
        print(f"error: {err.args[0] if isinstance(err, KeyError) and err.args else err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
