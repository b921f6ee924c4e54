"""Hyperparameter search for any plugin or RecBole model, with RecBole's run_hyper.py flags.

    python run_hyper.py --model=SASRec --dataset=ml-100k --config_files=configs/quick_ml-100k.yaml \\
        --params_file=configs/hyper/sasrec.hyper
    python run_hyper.py --model=SASRec --dataset=ml-100k --params_file=configs/hyper/sasrec.hyper \\
        --algo=bayes --max_evals=20 --epochs=10
    python run_hyper.py --model=SASRec --dataset=ml-100k --params_file=configs/hyper/sasrec.hyper \\
        --tool=ray --num_samples=8 --cpus_per_trial=2 --gpus_per_trial=0.5

Any other ``--key=value`` is a fixed setting for every trial (as in run_recbole.py). The .hyper format
(``name choice|uniform|quniform|loguniform values``, no comments) is described in
``recbole_timeplug/hyper.py``. The report (best params, best valid/test result, all trials) goes to
``--output_file`` (default ``hyper_results/<model>-<dataset>.md``).
"""

import argparse
import sys

from recbole_timeplug.config import Config


def _overrides(extra, parser):
    """``--key=value`` arguments as a config dict (values converted as RecBole's Config converts them)."""
    bad = [a for a in extra if not a.startswith("--") or len(a[2:].split("=")) != 2]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)} (fixed settings are written --key=value)")
    raw = dict(a[2:].split("=") for a in extra)
    return Config.convert_values(raw)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", "-m", type=str, default=None, help="model name (plugin or RecBole)")
    parser.add_argument("--dataset", "-d", type=str, default=None, help="dataset name")
    parser.add_argument("--config_files", type=str, default=None, help="space-separated fixed config files")
    parser.add_argument("--params_file", type=str, default=None, help="the .hyper file of the search space")
    parser.add_argument("--output_file", type=str, default=None, help="Markdown report of the search")
    parser.add_argument("--display_file", type=str, default=None, help="HTML plot of the scores (hyperopt, plotly)")
    parser.add_argument("--tool", type=str, default="hyperopt", choices=["hyperopt", "ray"])
    parser.add_argument("--algo", type=str, default="exhaustive", choices=["exhaustive", "random", "bayes"],
                        help="hyperopt search algorithm")
    parser.add_argument("--max_evals", type=int, default=100, help="hyperopt trials for random/bayes")
    parser.add_argument("--early_stop", type=int, default=10, help="hyperopt: stop after N trials without progress")
    parser.add_argument("--num_samples", type=int, default=10, help="ray: number of trials")
    parser.add_argument("--cpus_per_trial", type=float, default=1, help="ray: CPUs per trial")
    parser.add_argument("--gpus_per_trial", type=float, default=0, help="ray: GPUs per trial")
    parser.add_argument("--num_cpus", type=int, default=None, help="ray: CPUs Ray may use (default all)")
    parser.add_argument("--local_dir", type=str, default="ray_log", help="ray: folder of the trial logs")
    argv = sys.argv[1:] if argv is None else list(argv)
    args, extra = parser.parse_known_args(argv)
    if not args.params_file:
        parser.error("--params_file is required (e.g. --params_file=configs/hyper/sasrec.hyper)")

    fixed = _overrides(extra, parser)
    if args.model:
        fixed["model"] = args.model
    if args.dataset:
        fixed["dataset"] = args.dataset
    config_file_list = args.config_files.strip().split(" ") if args.config_files else None

    # RecBole's Config reads --key=value from sys.argv: let it see only the fixed settings (which are
    # also passed as a dict, for Ray workers), not this script's own flags.
    saved_argv = sys.argv
    sys.argv = [saved_argv[0]] + list(extra)
    try:
        output_file = args.output_file
        if output_file is None:
            external = Config.external_only(config_file_list, fixed)
            model, dataset = external.get("model", "model"), external.get("dataset", "dataset")
            output_file = f"hyper_results/{model}-{dataset}{'-ray' if args.tool == 'ray' else ''}.md"
        if args.tool == "ray":
            from recbole_timeplug.hyper import ray_search

            if args.display_file:
                print("--display_file is drawn for hyperopt only; ignored with --tool=ray.")
            summary = ray_search(
                args.params_file,
                config_file_list=config_file_list,
                config_dict=fixed,
                num_samples=args.num_samples,
                cpus_per_trial=args.cpus_per_trial,
                gpus_per_trial=args.gpus_per_trial,
                local_dir=args.local_dir,
                output_file=output_file,
                num_cpus=args.num_cpus,
            )
        else:
            from recbole_timeplug.hyper import hyperopt_search

            summary = hyperopt_search(
                args.params_file,
                config_file_list=config_file_list,
                config_dict=fixed,
                algo=args.algo,
                max_evals=args.max_evals,
                early_stop=args.early_stop,
                output_file=output_file,
                display_file=args.display_file,
            )
    finally:
        sys.argv = saved_argv

    print(f"trials: {len(summary['trials'])}")
    print("best params:", summary["best_params"])
    print("best valid score:", summary["best_valid_score"])
    print("best valid result:", summary["best_valid_result"])
    print("test result:", summary["test_result"])
    print("report:", output_file)
    return summary


if __name__ == "__main__":
    from recbole_timeplug.errors import TimeplugError

    try:
        main()
    except TimeplugError as err:  # bad input: say what is wrong and what to do, without a traceback
        print(f"run_hyper.py: error: {err}", file=sys.stderr)
        sys.exit(2)
