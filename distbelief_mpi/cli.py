"""`distbelief` entry point: argument parsing and exit codes only.

Exit codes: 0 success, 2 bad input (spec, dataset, checkpoint, world size; a message
names the file and key, no traceback), 1 anything unexpected (with a traceback).
"""

import argparse
import os
import sys

from . import __version__
from .errors import UserInputError

DESCRIPTION = """\
Train deep networks the way DistBelief did (Dean et al., NIPS 2012), over MPI.

  distbelief train JOB.toml              train (alone, or under mpiexec -n N)
  distbelief plan JOB.toml [-n N]        the ranks the job needs, which rank plays which role
                [--memory]             ... and the bytes each rank will hold
  distbelief eval RUN_DIR [--data F.h5]  test accuracy of a finished run (or of its model.h5)
  distbelief predict RUN_DIR --input X.npy --output P.npy
                                         class probabilities from a trained model
  distbelief export RUN_DIR --format npz|torch|onnx
                                         the trained model for NumPy, PyTorch or ONNX
  distbelief report RUN_DIR [...]        PNG figures and a markdown summary of runs
  distbelief example [NAME] [--write P]  the shipped job specs: list, print, write one

Job specs are TOML files (see jobs/ and docs/job-spec.md); datasets are HDF5 files
made with `python -m data_tools` (see docs/datasets.md)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distbelief", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"distbelief-mpi {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser(
        "train",
        help="train a job (run it under mpiexec for several ranks)",
        description="Train a job spec. Every rank of the MPI job runs this command.",
    )
    _add_job_args(train)
    train.add_argument(
        "--run-dir",
        help="where to write the run (default: runs/<job>-<time>); must not hold a run unless --resume auto",
    )
    train.add_argument(
        "--resume",
        metavar="RUN_DIR|auto",
        help="continue RUN_DIR from its newest complete checkpoint (same model and optimizer; shards, "
        "replicas and partitions may differ: the checkpoint is re-sliced; e.g. a larger "
        "--set run.steps=N runs further); 'auto' with --run-dir: continue it if it has a "
        "committed checkpoint, else start there (for requeued batch jobs). On SIGTERM or SIGUSR1 "
        "a run commits a final checkpoint and exits with code 75 (1 if that fails)",
    )
    train.add_argument(
        "--init-from",
        metavar="RUN_DIR|params.h5",
        help="start a new run (fresh optimizer state) from another run's trained weights: its "
        "params.h5, checked against this job's model; e.g. a warmstart run seeding a larger job, "
        "or fine-tuning. A run that resumes a checkpoint continues it instead",
    )
    train.add_argument("-v", "--verbose", action="store_true", help="log INFO lines on stderr too")
    train.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="print progress lines (rate, loss, accuracy, ETA); default: yes, every run.progress_seconds, "
        "or run.batch_progress_seconds when SLURM_JOB_ID, PBS_JOBID or LSB_JOBID is set (batch jobs)",
    )

    plan = commands.add_parser(
        "plan",
        help="print the ranks a job needs and the rank/role table",
        description="Print which rank plays which role, and each shard's parameter "
        "range, or every problem that stops the job from running on N ranks (with the "
        "nearest sizes that fit). Without -n: the sizes the job fits (with "
        'topology.replicas = "auto", every size that holds whole replicas: e.g. '
        '"needs 2 + k ranks: 3, 4, 5, ...") and the table for the smallest.',
    )
    _add_job_args(plan)
    plan.add_argument(
        "-n",
        "--ranks",
        type=int,
        metavar="N",
        help="MPI world size (default: the smallest the job fits)",
    )
    plan.add_argument(
        "--memory",
        action="store_true",
        help="also print the predicted bytes per rank by role, term by term (docs/architecture.md, 'Memory per rank')",
    )
    plan.add_argument(
        "--input-shape",
        metavar="C,H,W",
        help="the model's input (C,H,W or D) when the job's data file is absent (with --classes); "
        "ignored when the file exists",
    )
    plan.add_argument(
        "--classes",
        type=int,
        metavar="K",
        help="the number of classes when the data file is absent (with --input-shape)",
    )

    evaluate = commands.add_parser(
        "eval",
        help="test accuracy of a run's final parameters",
        description="Evaluate RUN_DIR/params.h5 (or a model file, e.g. RUN_DIR/model.h5) on a dataset's "
        "test split (default: the one the run trained on).",
    )
    evaluate.add_argument("run_dir", metavar="RUN_DIR|model.h5")
    evaluate.add_argument("--data", metavar="FILE.h5", help="dataset (default: the run's data.path)")

    _add_predict_parser(commands)
    _add_export_parser(commands)
    _add_example_parser(commands)

    report = commands.add_parser(
        "report",
        help="PNG figures and a markdown summary of one or more runs",
        description="Plot loss and test accuracy vs wall time and vs examples, "
        "examples/s per replica and Downpour staleness for one or more "
        "runs on shared figures, and write report.md (needs matplotlib: "
        "pip install 'distbelief-mpi[report]'; see docs/report.md).",
    )
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories to compare")
    report.add_argument(
        "--out",
        metavar="DIR",
        help="where to write the report (default: RUN_DIR/report for a single run; required for several)",
    )
    return parser


def _add_predict_parser(commands) -> None:
    predict = commands.add_parser(
        "predict",
        help="class probabilities of new inputs from a trained model",
        description="Write the (n, classes) float32 probabilities of X's n examples to P.npy. X is in the "
        "dataset's raw units (the model file applies its input scale). Under mpiexec -n P the model is split "
        "over the P ranks and predicted model-parallel. See docs/model_use.md.",
    )
    predict.add_argument("model", metavar="RUN_DIR|model.h5")
    predict.add_argument(
        "--input", required=True, metavar="X", help="a .npy array or FILE.h5:/dataset/path of (n, *input_shape)"
    )
    predict.add_argument("--output", required=True, metavar="P.npy", help="where to write the probabilities")
    predict.add_argument(
        "--top-k",
        type=int,
        default=0,
        metavar="K",
        help="also write P.topk.npy: (n, K) int32 class indices, most probable first",
    )
    predict.add_argument(
        "--batch-size", type=int, default=0, metavar="B", help="examples per batch (default: up to 1000)"
    )


def _add_export_parser(commands) -> None:
    export = commands.add_parser(
        "export",
        help="write a trained model as NumPy .npz, PyTorch (safetensors + nn.Module) or ONNX",
        description="Export RUN_DIR/model.h5 (or a model file). Every format takes inputs in the dataset's raw "
        "units (x_scale applied inside) and gives softmax probabilities, like predict. torch and onnx need "
        "pip install 'distbelief-mpi[export]'. See docs/model_use.md, 'Export'.",
    )
    export.add_argument("model", metavar="RUN_DIR|model.h5")
    export.add_argument(
        "--format",
        required=True,
        choices=("npz", "torch", "onnx"),
        dest="export_format",
        help="npz: named tensors and a config JSON; torch: model.safetensors, config.json and an nn.Module file; "
        "onnx: one ONNX graph",
    )
    export.add_argument(
        "--output",
        metavar="PATH",
        help="a file (npz, onnx) or a folder (torch); default beside the model file: model.npz, model_torch/, "
        "model.onnx",
    )


def _add_example_parser(commands) -> None:
    example = commands.add_parser(
        "example",
        help="list the example job specs, print one, or write it to a file",
        description="The job specs shipped with the package (the repository's jobs/). Without NAME: "
        "list them. With NAME: print it, or write it with --write PATH, then edit and train it.",
    )
    example.add_argument("name", nargs="?", metavar="NAME", help="e.g. digits_downpour")
    example.add_argument("--write", metavar="PATH", help="write the spec to PATH (an existing file is refused)")


def _add_job_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", metavar="JOB.toml", help="job spec (TOML)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one key of the job spec, e.g. --set run.steps=100 (repeatable)",
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            from .runtime import preempt

            preempt.install()  # first, before the heavy imports: a signal during start-up is a preemption too
            from .train import run_train

            return run_train(
                args.job, args.overrides, args.run_dir, args.verbose, args.resume, args.progress, args.init_from
            )
        if args.command == "plan":
            from .commands import run_plan

            return run_plan(args.job, args.overrides, args.ranks, args.memory, args.input_shape, args.classes)
        if args.command == "report":
            from .report import run_report

            return run_report(args.run_dirs, args.out)
        if args.command == "predict":
            from .commands import run_predict

            return run_predict(args.model, args.input, args.output, args.top_k, args.batch_size)
        if args.command == "example":
            from .examples import run_example

            return run_example(args.name, args.write)
        if args.command == "export":
            from .commands import run_export

            return run_export(args.model, args.export_format, args.output)
        from .commands import run_eval_target

        return run_eval_target(args.run_dir, args.data)
    except UserInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        if args.command == "train":  # a rank's output cut off mid-run is a failure, not a reader done
            raise
        # `distbelief plan JOB | head`: the reader has what it wanted. Point stdout at /dev/null,
        # or the interpreter's own flush at exit fails on the closed pipe once more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
