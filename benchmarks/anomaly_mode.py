"""Training-epoch time with RecBole's process-wide anomaly mode on vs off (in one process, same data).

RecBole 1.2.1's sine.py calls ``torch.autograd.set_detect_anomaly(True)`` at import; recbole_timeplug
switches it off (``_compat``).  This A/B alternates epochs on/off with the same trainer so machine
noise hits both sides alike, and prints the ratio.

    python benchmarks/anomaly_mode.py [--model=SASRec] [--rounds=2] [--train_batch_size=256]
"""

import argparse
import time

import torch

import recbole_timeplug  # noqa: F401  (compat: anomaly mode off)
from recbole.data import create_dataset, data_preparation
from recbole.utils import init_seed

from recbole_timeplug import Config, get_model, get_trainer


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="SASRec")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--train_batch_size", type=int, default=256)
    args = parser.parse_args()

    config = Config(
        model=args.model,
        dataset=args.dataset,
        config_dict={
            "train_batch_size": args.train_batch_size,
            "hidden_size": 16, "inner_size": 32, "n_layers": 1, "n_heads": 1,
            "MAX_ITEM_LIST_LENGTH": 20, "state": "ERROR", "show_progress": False,
        },
    )
    init_seed(config["seed"], config["reproducibility"])
    train_data, _, _ = data_preparation(config, create_dataset(config))
    model = get_model(args.model)(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], args.model)(config, model)
    times = {True: [], False: []}
    epoch = 0
    for _ in range(args.rounds):
        for anomaly in (True, False):
            torch.autograd.set_detect_anomaly(anomaly)
            start = time.perf_counter()
            trainer._train_epoch(train_data, epoch)
            times[anomaly].append(time.perf_counter() - start)
            epoch += 1
    torch.autograd.set_detect_anomaly(False)
    on, off = sum(times[True]) / len(times[True]), sum(times[False]) / len(times[False])
    print(f"model={args.model} dataset={args.dataset} batch={args.train_batch_size} device={config['device']} "
          f"threads={torch.get_num_threads()}")
    print("epoch seconds, anomaly ON :", " ".join(f"{t:.2f}" for t in times[True]))
    print("epoch seconds, anomaly OFF:", " ".join(f"{t:.2f}" for t in times[False]))
    print(f"speed-up from switching anomaly mode off: {on / off:.2f}x ({on:.2f} s -> {off:.2f} s per epoch)")


if __name__ == "__main__":
    main()
