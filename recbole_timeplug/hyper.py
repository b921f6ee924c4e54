"""Hyperparameter search over plugin and RecBole models: hyperopt (RecBole's ``HyperTuning``) or Ray Tune.

Both read RecBole's ``.hyper`` params file, one parameter a line, ``name type values``::

    learning_rate choice [0.001,0.0005]
    hidden_dropout_prob uniform 0.1,0.5
    inner_size quniform 64,256,64
    weight_decay loguniform -12,-6

Types are those of RecBole: ``choice`` (a Python list literal), ``uniform low,high``, ``quniform
low,high,q`` and ``loguniform low,high``, whose bounds are *natural logs* (hyperopt's meaning:
``exp(uniform(low, high))``; ``-12,-6`` samples between 6e-6 and 2.5e-3). Unlike RecBole, a line
that cannot be parsed is an error naming the file and line, not silently skipped (so there are no
comments in ``.hyper`` files). ``quniform`` with whole-number bounds and step yields ``int`` values (so
it can drive sizes and layer counts); with ``algo="exhaustive"`` it becomes the grid of its values.

Fixed settings reach every trial: config files, a fixed ``config_dict`` (the trial's values win over
it) and ``--key=value`` on the command line. A searched parameter must not also be set on the command
line (RecBole's Config would let the command line silently override every trial's value).

Both functions write the same Markdown report (best params, their valid/test results, and a table of
all trials) and return ``{"best_params", "best_valid_score", "best_valid_result", "test_result",
"trials", ...}``. Ray is imported only inside :func:`ray_search`.
"""

import ast
import math
import os
import sys
import threading

from recbole_timeplug import _compat
from recbole_timeplug.config import Config
from recbole_timeplug.errors import TimeplugError
from recbole_timeplug.utils import plain_metrics

PARAM_TYPES = ("choice", "uniform", "quniform", "loguniform")
_PATH_KEYS = ("checkpoint_path", "pre_model_path")


class ParamsFileError(TimeplugError, ValueError):
    """The ``.hyper`` params file is missing or has a line that cannot be parsed."""


class ParamsFileNotFoundError(ParamsFileError, FileNotFoundError):
    """The ``.hyper`` params file does not exist."""


# ------------------------------------------------------------------------------------ params file
def parse_params_file(params_file):
    """Parse a ``.hyper`` file into ``{name: (type, values)}`` (in file order), validating every line.

    ``values`` is a list for ``choice``, ``(low, high)`` for ``uniform``/``loguniform`` (loguniform
    bounds are natural logs, as in hyperopt) and ``(low, high, q)`` for ``quniform``.
    """
    if not params_file:
        raise ParamsFileError("No params file given: pass a .hyper file (e.g. configs/hyper/sasrec.hyper).")
    if not os.path.isfile(params_file):
        raise ParamsFileNotFoundError(
            f"Params file {params_file!r} not found (looked at {os.path.abspath(params_file)})."
        )
    params = {}
    with open(params_file, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line:
                continue
            where = f"{params_file}, line {lineno}: {line!r}"
            tokens = line.split()
            if len(tokens) < 3:
                raise ParamsFileError(
                    f"{where}: expected `name type values` (e.g. `learning_rate choice [0.001,0.0005]`); "
                    f".hyper files have no comments."
                )
            name, kind, text = tokens[0], tokens[1], "".join(tokens[2:])  # RecBole joins the values the same way
            if kind not in PARAM_TYPES:
                raise ParamsFileError(f"{where}: unknown type {kind!r}; allowed types: {', '.join(PARAM_TYPES)}.")
            if name in params:
                raise ParamsFileError(f"{where}: parameter {name!r} is listed twice.")
            params[name] = (kind, _parse_values(kind, text, where))
    if not params:
        raise ParamsFileError(f"Params file {params_file!r} lists no parameters.")
    return params


def _parse_values(kind, text, where):
    if kind == "choice":
        try:
            values = ast.literal_eval(text)
        except (ValueError, SyntaxError) as err:
            raise ParamsFileError(
                f"{where}: cannot parse the choice values {text!r} ({err.__class__.__name__}); "
                f"write a Python list literal, e.g. [0.001,0.0005] or ['a','b']."
            ) from None
        if not isinstance(values, (list, tuple)) or not values:
            raise ParamsFileError(f"{where}: choice needs a non-empty list, e.g. [0.001,0.0005]; got {text!r}.")
        return list(values)
    expected = {"uniform": "low,high", "loguniform": "low,high", "quniform": "low,high,q"}[kind]
    parts = text.split(",")
    try:
        numbers = tuple(float(p) for p in parts)
    except ValueError:
        numbers = ()
    if len(numbers) != len(expected.split(",")) or not all(math.isfinite(x) for x in numbers):
        raise ParamsFileError(f"{where}: {kind} needs {expected} as finite numbers, got {text!r}.")
    if numbers[0] > numbers[1] or (kind != "quniform" and numbers[0] == numbers[1]):
        raise ParamsFileError(f"{where}: {kind} needs low < high, got {text!r}.")
    if kind == "quniform" and numbers[2] <= 0:
        raise ParamsFileError(f"{where}: quniform needs a step q > 0, got {text!r}.")
    return numbers


def _is_int_grid(values):
    return all(float(v).is_integer() for v in values)


def _quniform_grid(low, high, q):
    """The values hyperopt's ``quniform`` can produce: ``round(x / q) * q`` for ``x`` in ``[low, high]``."""
    lo, hi = int(round(low / q)), int(round(high / q))
    as_int = _is_int_grid((low, high, q))
    return [int(k * q) if as_int else k * q for k in range(lo, hi + 1)]


def build_hyperopt_space(params, algo="exhaustive"):
    """hyperopt space for parsed params (see :func:`parse_params_file`)."""
    from hyperopt import hp
    from hyperopt.pyll import scope

    space = {}
    for name, (kind, values) in params.items():
        if kind == "choice":
            space[name] = hp.choice(name, values)
        elif kind == "quniform":
            if algo == "exhaustive":
                space[name] = hp.choice(name, _quniform_grid(*values))
            elif _is_int_grid(values):
                space[name] = scope.int(hp.quniform(name, *values))
            else:
                space[name] = hp.quniform(name, *values)
        elif algo == "exhaustive":
            raise ParamsFileError(
                f"Exhaustive search needs a finite grid, but {name!r} is {kind}: use choice or quniform, "
                f"or search with algo 'random' or 'bayes'."
            )
        elif kind == "uniform":
            space[name] = hp.uniform(name, *values)
        else:  # loguniform: bounds are natural logs
            space[name] = hp.loguniform(name, *values)
    return space


def build_ray_space(params):
    """Ray Tune search space for parsed params, with hyperopt's meaning for every type."""
    from ray import tune

    space = {}
    for name, (kind, values) in params.items():
        if kind == "choice":
            space[name] = tune.choice(values)
        elif kind == "uniform":
            space[name] = tune.uniform(*values)
        elif kind == "quniform":
            low, high, q = values
            if _is_int_grid(values):
                space[name] = tune.qrandint(int(low), int(high), int(q))
            else:
                space[name] = tune.quniform(low, high, q)
        else:  # hyperopt loguniform(low, high) = exp(uniform(low, high)): Ray wants the real bounds
            space[name] = tune.loguniform(math.exp(values[0]), math.exp(values[1]))
    return space


# ------------------------------------------------------------------------------------ helpers
def _plain(value):
    """numpy scalars -> Python scalars (recursively in lists/tuples/dicts)."""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "shape", None) == ():
        return value.item()
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _check_no_cmd_line_conflict(params, params_file):
    clash = sorted(set(params) & set(Config.command_line_settings()))
    if clash:
        raise ParamsFileError(
            f"{', '.join(clash)} {'is' if len(clash) == 1 else 'are'} searched in {params_file} but also set on "
            f"the command line (--{clash[0]}=...), which would override every trial's value. Remove one of them."
        )


def _fixed_config(config_file_list, config_dict):
    """A Config of the fixed settings (model, dataset, valid metric ...), or the error building it."""
    return Config(config_file_list=config_file_list, config_dict=dict(config_dict or {}))


def _trial_record(params, result):
    return {
        "params": {k: _plain(v) for k, v in params.items()},
        "best_valid_score": None if result.get("best_valid_score") is None else float(result["best_valid_score"]),
        "best_valid_result": plain_metrics(result.get("best_valid_result")) or {},
        "test_result": plain_metrics(result.get("test_result")) or {},
    }


def _best_index(trials, bigger):
    scored = [(t["best_valid_score"], i) for i, t in enumerate(trials) if t["best_valid_score"] is not None]
    if not scored:
        return None
    if bigger:
        return max(scored, key=lambda s: (s[0], -s[1]))[1]  # first trial among equals
    return min(scored, key=lambda s: (s[0], s[1]))[1]


def _summary(tool, trials, bigger, info):
    best = _best_index(trials, bigger)
    out = {
        "tool": tool,
        "best_params": None if best is None else dict(trials[best]["params"]),
        "best_valid_score": None if best is None else trials[best]["best_valid_score"],
        "best_valid_result": None if best is None else trials[best]["best_valid_result"],
        "test_result": None if best is None else trials[best]["test_result"],
        "best_index": best,
        "trials": trials,
        "valid_score_bigger": bigger,
    }
    out.update(info)
    return out


def _cell(value, metric=False):
    """A table cell: metrics with 4 decimals, parameters in full (``0.00025`` must not read ``0.0003``)."""
    if isinstance(value, float):
        text = f"{value:.4f}" if metric else f"{value:.6g}"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _metrics_line(result):
    return ", ".join(f"{k}: {_cell(v, True)}" for k, v in (result or {}).items()) or "-"


def write_report(output_file, summary):
    """Markdown report: the best params, their valid/test results and a table of every trial."""
    trials = summary["trials"]
    param_names = list(summary.get("param_names") or [])
    for t in trials:
        param_names += [k for k in t["params"] if k not in param_names]
    valid_keys, test_keys = [], []
    for t in trials:
        valid_keys += [k for k in t["best_valid_result"] if k not in valid_keys]
        test_keys += [k for k in t["test_result"] if k not in test_keys]
    direction = "bigger" if summary["valid_score_bigger"] else "smaller"
    failed = summary.get("failed_trials")
    lines = [
        f"# Hyperparameter search: {summary.get('model')} on {summary.get('dataset')}",
        "",
        f"- tool: {summary['tool']}" + (f" ({summary['algo']})" if summary.get("algo") else ""),
        f"- params file: {summary.get('params_file')}",
        f"- config files: {summary.get('config_file_list') or '-'}",
        f"- valid metric: {summary.get('valid_metric')} ({direction} is better)",
        f"- trials: {len(trials)}" + (f", {failed} more failed" if failed else ""),
        "",
        "## Best params",
        "",
    ]
    best = summary["best_index"]
    if best is None:
        lines += ["No trial finished with a valid score.", ""]
    else:
        best_params = summary["best_params"]
        lines += [f"- {k}: {_cell(best_params[k])}" for k in param_names if k in best_params]
        lines += [
            "",
            f"Trial {best + 1}, best valid score {_cell(summary['best_valid_score'], True)}.",
            "",
            f"- best valid result: {_metrics_line(summary['best_valid_result'])}",
            f"- test result: {_metrics_line(summary['test_result'])}",
            "",
        ]
    header = ["trial"] + param_names + ["best valid score"]
    header += [f"valid {k}" for k in valid_keys] + [f"test {k}" for k in test_keys]
    lines += ["## All trials", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, t in enumerate(trials):
        row = [f"{i + 1}{' (best)' if i == best else ''}"]
        row += [_cell(t["params"].get(k, "")) for k in param_names]
        row += [_cell(t["best_valid_score"], True) if t["best_valid_score"] is not None else "-"]
        row += [_cell(t["best_valid_result"][k], True) if k in t["best_valid_result"] else "-" for k in valid_keys]
        row += [_cell(t["test_result"][k], True) if k in t["test_result"] else "-" for k in test_keys]
        lines.append("| " + " | ".join(row) + " |")
    folder = os.path.dirname(os.path.abspath(output_file))
    os.makedirs(folder, exist_ok=True)
    # temp file + rename: two searches writing the same report never interleave (the last one wins whole)
    tmp = f"{output_file}.tmp-{os.getpid()}-{threading.get_ident()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, output_file)
    return output_file


def _config_info(config):
    return {
        "model": config["model"],
        "dataset": config["dataset"],
        "valid_metric": config["valid_metric"].lower(),
        "valid_score_bigger": bool(config["valid_metric_bigger"]),
    }


# ------------------------------------------------------------------------------------ hyperopt
class _RecordingObjective:
    """``objective(config_dict, config_file_list)`` for HyperTuning: fixed dict under the trial's params,
    and every trial recorded (HyperTuning keys its results by params string, so repeats would collapse)."""

    def __init__(self, objective, fixed_config_dict, trials):
        self.objective = objective
        self.fixed_config_dict = dict(fixed_config_dict or {})
        self.trials = trials
        self.bigger = None

    def __call__(self, config_dict=None, config_file_list=None):
        params = {k: _plain(v) for k, v in (config_dict or {}).items()}
        merged = dict(self.fixed_config_dict)
        merged.update(params)
        result = self.objective(merged, config_file_list)
        self.bigger = bool(result["valid_score_bigger"])
        self.trials.append(_trial_record(params, result))
        return result


def hyperopt_search(
    params_file,
    config_file_list=None,
    config_dict=None,
    algo="exhaustive",
    max_evals=100,
    early_stop=10,
    output_file=None,
    display_file=None,
):
    """Search with RecBole's ``HyperTuning`` (hyperopt) and this package's ``objective_function``.

    Args:
        params_file (str): the ``.hyper`` file.
        config_file_list (list[str], optional): fixed config files for every trial.
        config_dict (dict, optional): fixed settings for every trial; a trial's params override them.
        algo (str): ``"exhaustive"`` (every combination; ``max_evals`` is ignored), ``"random"`` or
            ``"bayes"`` (TPE).
        max_evals (int): trials for random/bayes.
        early_stop (int): stop after this many trials without improvement (hyperopt ``no_progress_loss``).
        output_file (str, optional): Markdown report (see :func:`write_report`).
        display_file (str, optional): HTML plot of the scores (needs plotly), as RecBole's.

    Returns:
        dict: ``best_params``, ``best_valid_score``, ``best_valid_result``, ``test_result`` (of the best
        trial), ``trials`` (every trial's ``params``, ``best_valid_score``, ``best_valid_result``,
        ``test_result``), ``output_file`` and the run's settings.
    """
    from recbole.trainer import HyperTuning

    from recbole_timeplug.quick_start import objective_function

    if algo not in ("exhaustive", "random", "bayes"):
        raise ValueError(f"Unknown algo {algo!r}: use 'exhaustive', 'random' or 'bayes'.")
    params = parse_params_file(params_file)
    space = build_hyperopt_space(params, algo)
    _check_no_cmd_line_conflict(params, params_file)
    if display_file:
        try:
            import plotly  # noqa: F401
        except ImportError:
            raise ImportError("display_file needs plotly (pip install plotly).") from None
    info = {"algo": algo, "params_file": params_file, "config_file_list": config_file_list,
            "param_names": list(params), "output_file": output_file}
    try:
        info.update(_config_info(_fixed_config(config_file_list, config_dict)))
    except Exception:  # noqa: BLE001 - e.g. the model itself is searched; trials will tell
        info.update({"model": None, "dataset": None, "valid_metric": None, "valid_score_bigger": True})

    trials = []
    objective = _RecordingObjective(objective_function, config_dict, trials)
    tuner = HyperTuning(
        objective,
        space=space,
        fixed_config_file_list=config_file_list,
        display_file=display_file,
        algo=algo,
        max_evals=max_evals,
        early_stop=early_stop,
    )
    tuner.run()
    if objective.bigger is not None:
        info["valid_score_bigger"] = objective.bigger
    summary = _summary("hyperopt", trials, info["valid_score_bigger"], info)
    if output_file:
        write_report(output_file, summary)
    return summary


# ------------------------------------------------------------------------------------ Ray Tune
def _ray_report(metrics):
    try:
        from ray.train import report  # ray >= 2.7

        report(metrics)
    except ImportError:
        from ray.air import session  # ray 2.6 (same as the deprecated tune.report)

        session.report(metrics)


def _ray_trial_id():
    try:
        from ray.air import session

        return session.get_trial_id()
    except Exception:  # noqa: BLE001 - outside a Tune session, or a Ray without it
        return None


def _ray_gpu_ids():
    """The GPUs Ray gave this trial, as RecBole's ``gpu_id`` ("" = CPU).

    RecBole's Config sets ``CUDA_VISIBLE_DEVICES=gpu_id`` (default "0"), which would put every trial on
    GPU 0 whatever Ray assigned, and use a GPU for trials that asked for none.
    """
    import ray

    return ",".join(str(g) for g in ray.get_gpu_ids())


def _ray_trainable(config, config_file_list=None, fixed_config=None):
    """Ray Tune trainable (module level, so Ray workers import this package and its compat fixes).

    Reports ``best_valid_score``, ``valid_<metric>`` and ``test_<metric>`` once, and returns None
    (ray 2.6 rejects a returned dict without the search metric). Checkpoints go to
    ``<checkpoint_dir>/<trial id>/``.
    """
    from recbole_timeplug.quick_start import objective_function

    merged = dict(fixed_config or {})
    merged.update({k: _plain(v) for k, v in dict(config).items()})
    merged["gpu_id"] = _ray_gpu_ids()
    trial_id = _ray_trial_id()
    if trial_id and merged.get("checkpoint_dir"):
        # One folder per trial keeps its best/-last checkpoints together with Ray's trial folder name
        # (file names are unique anyway: trainer.py reserves them atomically).
        merged["checkpoint_dir"] = os.path.join(merged["checkpoint_dir"], trial_id)
    argv = sys.argv
    sys.argv = argv[:1]  # a Ray worker's own --flags are not config; the driver's are in fixed_config
    try:
        result = objective_function(merged, config_file_list)
    finally:
        sys.argv = argv
    metrics = {"best_valid_score": float(result["best_valid_score"])}
    metrics.update({f"valid_{k}": v for k, v in (plain_metrics(result["best_valid_result"]) or {}).items()})
    metrics.update({f"test_{k}": v for k, v in (plain_metrics(result["test_result"]) or {}).items()})
    _ray_report(metrics)
    return None


def _absolute_settings(config, config_file_list, config_dict):
    """Paths a Ray worker (another cwd) needs absolute: data_path and the checkpoint paths."""
    external = Config.external_only(config_file_list, config_dict)
    data_path = external.get("data_path")
    if data_path is None:  # RecBole's default (dataset/), already joined with the dataset name
        data_path = os.path.dirname(os.path.normpath(config["data_path"]))
    out = {"data_path": os.path.abspath(data_path), "checkpoint_dir": os.path.abspath(config["checkpoint_dir"])}
    for key in _PATH_KEYS:
        value = config[key]
        if isinstance(value, str) and value and not os.path.isabs(value):
            out[key] = os.path.abspath(value)
    return out


def _trial_error(trial):
    path = getattr(trial, "error_file", None)
    if path and os.path.isfile(path):
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()[-4000:]
    return f"(no error file; trial status {trial.status})"


def ray_search(
    params_file,
    config_file_list=None,
    config_dict=None,
    num_samples=10,
    cpus_per_trial=1,
    gpus_per_trial=0,
    local_dir="ray_log",
    output_file=None,
    num_cpus=None,
    verbose=1,
):
    """Search with Ray Tune (random sampling of the ``.hyper`` space, ``num_samples`` trials).

    The search metric is ``valid_<valid_metric>`` (e.g. ``valid_ndcg@10``), maximised or minimised as
    ``valid_metric_bigger`` says. Config files, ``data_path`` and checkpoint paths are made absolute and
    ``--key=value`` command-line settings are passed on, because Ray workers have another cwd and argv.
    Each trial writes its checkpoints to ``<checkpoint_dir>/<trial id>/`` and runs on the GPUs Ray
    assigned it (``gpus_per_trial``, fractions allowed), on the CPU when it asked for none.

    Args:
        params_file, config_file_list, config_dict, output_file: as in :func:`hyperopt_search`.
        num_samples (int): number of trials.
        cpus_per_trial, gpus_per_trial: resources of one trial (the defaults run on a CPU-only box).
        local_dir (str): where Ray Tune writes its trial folders.
        num_cpus (int, optional): CPUs Ray may use (default: all).
        verbose (int): Ray Tune's verbosity (0 silent ... 3).

    Returns:
        dict: as :func:`hyperopt_search`.
    """
    try:
        import ray
        from ray import tune
    except ImportError as err:
        raise ImportError(f"Ray Tune search needs ray[tune] ({err}); or use hyperopt (--tool hyperopt).") from None
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise ImportError(
            "ray 2.x Tune needs pyarrow (pip install 'recbole-timeplug[tune]'); or use hyperopt (--tool hyperopt)."
        ) from None

    from recbole_timeplug.quick_start import check_dataset_files

    params = parse_params_file(params_file)
    space = build_ray_space(params)
    _check_no_cmd_line_conflict(params, params_file)
    config_file_list = [os.path.abspath(f) for f in config_file_list] if config_file_list else None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    config = _fixed_config(config_file_list, config_dict)
    # RecBole's Config just set CUDA_VISIBLE_DEVICES=gpu_id: Ray must see every GPU of this machine.
    if visible is None:
        os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = visible
    check_dataset_files(config)  # fail here, not once per Ray worker
    info = _config_info(config)
    metric = f"valid_{info['valid_metric']}"
    mode = "max" if info["valid_score_bigger"] else "min"

    fixed = dict(config_dict or {})
    fixed.update(Config.command_line_settings())
    fixed.update(_absolute_settings(config, config_file_list, config_dict))

    started = not ray.is_initialized()
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        runtime_env={"worker_process_setup_hook": _compat.apply},  # must be a function object in ray 2.6
        ignore_reinit_error=True,
    )
    try:
        analysis = tune.run(
            tune.with_parameters(_ray_trainable, config_file_list=config_file_list, fixed_config=fixed),
            config=space,
            num_samples=num_samples,
            metric=metric,
            mode=mode,
            storage_path=os.path.abspath(local_dir),
            resources_per_trial={"cpu": cpus_per_trial, "gpu": gpus_per_trial},
            raise_on_failed_trial=False,
            verbose=verbose,
        )
        failed = [t for t in analysis.trials if t.status == "ERROR"]
        if failed and len(failed) == len(analysis.trials):
            raise RuntimeError(
                f"All {len(failed)} Ray Tune trials failed; the first error:\n{_trial_error(failed[0])}"
            )
        trials = []
        for t in analysis.trials:
            res = t.last_result or {}
            if t.status == "ERROR" or "best_valid_score" not in res:
                continue
            trials.append(
                {
                    "params": {k: _plain(t.config[k]) for k in params if k in t.config},
                    "best_valid_score": float(res["best_valid_score"]),
                    "best_valid_result": {k[6:]: float(v) for k, v in res.items() if k.startswith("valid_")},
                    "test_result": {k[5:]: float(v) for k, v in res.items() if k.startswith("test_")},
                }
            )
    finally:
        if started:
            ray.shutdown()
    info.update({"params_file": params_file, "config_file_list": config_file_list, "param_names": list(params),
                 "output_file": output_file, "metric": metric, "mode": mode, "failed_trials": len(failed)})
    summary = _summary("ray", trials, info["valid_score_bigger"], info)
    if output_file:
        write_report(output_file, summary)
    return summary
