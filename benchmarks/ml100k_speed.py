"""A model (default ARERec) vs RecBole's SASRec in one process on real data (RecBole's shipped ml-100k, or
``--dataset`` / ``--data_path``): training-step time and one full-sort validation pass.

    OMP_NUM_THREADS=1 python benchmarks/ml100k_speed.py --threads 1 --length 50 --batch_sizes 16,1024
    OMP_NUM_THREADS=1 python benchmarks/ml100k_speed.py --model TiSASRec --length 20 --batch_sizes 1024
    # a Grocery-sized set (6,400 users, 4,400 items, short histories):
    python benchmarks/synthetic.py --out /tmp/syn --name syn-6k --n_users 6400 --n_items 4400 --n_interactions 100000 --min_len 5
    OMP_NUM_THREADS=1 python benchmarks/ml100k_speed.py --no_train --dataset syn-6k --data_path /tmp/syn

Unlike ``step_ratio.py`` / ``efficiency.py`` (synthetic batches, distinct timestamps, CE for every model) this
times what a user's run does: the real sequences, times (51 % of ml-100k's consecutive gaps are 0 s) and
negatives, each model's own loss and optimizer.

Both models are built on RecBole's shipped ml-100k under ``configs/ml-100k_results.yaml`` with
``MAX_ITEM_LIST_LENGTH = --length`` (ARERec reads it only with `user_history`), each with
its own YAML defaults, and trained by the optimizer the package's trainer builds for it (``learner``,
``learning_rate`` of the config; ``--set KEY=VALUE`` overrides the model's config, e.g. ``--set adam_variant=lazy``).

* Training step: ``calculate_loss`` + backward + ``optimizer.step`` on real training batches (with their
  negatives) of each ``--batch_sizes``; the two models alternate step by step, ``--steps`` timed steps
  after ``--warmup``; medians and the median of the per-round ratios are printed.
* Validation pass: ``trainer.evaluate(valid_data)`` (full ranking over all items, metrics included), the two
  models alternating, ``--passes`` each; medians.

Also ``--profile`` prints a torch.profiler table of one training step of the model and one validation pass.
"""

import argparse
import atexit
import os
import shutil
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKPOINT_DIR = tempfile.mkdtemp(prefix="ml100k_speed_")  # trainers reserve file names there; removed at exit
atexit.register(shutil.rmtree, CHECKPOINT_DIR, True)


def parse_value(text):
    import yaml

    return yaml.safe_load(text)


def build(model_name, length, batch_size, overrides, dataset="ml-100k", data_path=None):
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    from recbole_timeplug.config import Config
    from recbole_timeplug.registry import get_model, get_trainer

    config_dict = {"state": "ERROR", "MAX_ITEM_LIST_LENGTH": length, "train_batch_size": batch_size,
                   "show_progress": False, "device": "cpu", "use_gpu": False, "checkpoint_dir": CHECKPOINT_DIR}
    if data_path:
        config_dict["data_path"] = data_path
    config_dict.update(overrides)
    config = Config(model=model_name, dataset=dataset,
                    config_file_list=[os.path.join(REPO, "configs", "ml-100k_results.yaml")], config_dict=config_dict)
    init_seed(config["seed"], True)
    dataset = create_dataset(config)
    train_data, valid_data, _ = data_preparation(config, dataset)
    init_seed(config["seed"], True)
    model = get_model(model_name)(config, train_data._dataset)
    trainer = get_trainer(config["MODEL_TYPE"], model_name)(config, model)
    return config, model, trainer, train_data, valid_data


def batches(train_data, n):
    out = []
    while len(out) < n:
        for inter in train_data:
            out.append(inter)
            if len(out) == n:
                break
    return out


def step(model, optimizer, inter):
    optimizer.zero_grad(set_to_none=True)
    loss = model.calculate_loss(inter)
    loss = sum(loss) if isinstance(loss, tuple) else loss
    loss.backward()
    optimizer.step()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ARERec")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--length", type=int, default=50)
    p.add_argument("--batch_sizes", default="16,1024")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--no_eval", action="store_true")
    p.add_argument("--no_train", action="store_true")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--dataset", default="ml-100k", help="any RecBole dataset with user_id, item_id, timestamp")
    p.add_argument("--data_path", default=None, help="its folder's parent (default: RecBole's shipped data)")
    args = p.parse_args(argv)
    sys.argv = sys.argv[:1]  # RecBole's Config reads --key=value from sys.argv
    import torch

    import recbole_timeplug  # noqa: F401  (compat fixes, registry)

    torch.set_num_threads(args.threads)
    overrides = {}
    for item in args.overrides:
        key, _, value = item.partition("=")
        overrides[key] = parse_value(value)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); {args.model} overrides {overrides}", flush=True)

    for bs in ([] if args.no_train else [int(x) for x in args.batch_sizes.split(",")]):
        runs = {}
        for name, extra in (("SASRec", {}), (args.model, overrides)):
            config, model, trainer, train_data, _ = build(name, args.length, bs, extra, args.dataset, args.data_path)
            model.train()
            runs[name] = (model, trainer.optimizer, batches(train_data, args.warmup + args.steps))
        times = {name: [] for name in runs}
        for i in range(args.warmup + args.steps):
            for name, (model, opt, data) in runs.items():
                start = time.perf_counter()
                step(model, opt, data[i])
                if i >= args.warmup:
                    times[name].append(time.perf_counter() - start)
        ratio = statistics.median(a / s for a, s in zip(times[args.model], times["SASRec"]))
        med = {name: 1000 * statistics.median(t) for name, t in times.items()}
        print(f"train step B={bs} L={args.length}: SASRec {med['SASRec']:.1f} ms, {args.model} {med[args.model]:.1f} ms, "
              f"ratio {med[args.model] / med['SASRec']:.2f}x (median of per-round ratios {ratio:.2f}x)", flush=True)
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            model, opt, data = runs[args.model]
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                step(model, opt, data[0])
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
        del runs

    if not args.no_eval:
        runs = {}
        for name, extra in (("SASRec", {}), (args.model, overrides)):
            config, model, trainer, _, valid_data = build(name, args.length, 1024, extra, args.dataset, args.data_path)
            runs[name] = (trainer, valid_data)
        times = {name: [] for name in runs}
        results = {}
        for _ in range(args.passes):
            for name, (trainer, valid_data) in runs.items():
                start = time.perf_counter()
                results[name] = trainer.evaluate(valid_data, load_best_model=False)
                times[name].append(time.perf_counter() - start)
        med = {name: statistics.median(t) for name, t in times.items()}
        print(f"validation pass (full sort, {args.dataset}, {len(valid_data.dataset.inter_feat):,} users): SASRec {med['SASRec']:.2f} s, {args.model} {med[args.model]:.2f} s, "
              f"ratio {med[args.model] / med['SASRec']:.2f}x; {args.model} (untrained) {dict(results[args.model])}", flush=True)
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            trainer, valid_data = runs[args.model]
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                trainer.evaluate(valid_data, load_best_model=False)
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
