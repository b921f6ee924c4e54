"""Where a trained ARERec's ranking comes from: valid/test metrics with parts of its score switched off.

    python benchmarks/arerec_parts.py saved/ARERec-ml-100k-<time>.pth
    python benchmarks/arerec_parts.py <best checkpoint> --metric ndcg@10

ARERec's score of candidate j is the item side (steps 1-5: j's neighbours through the local context units,
plus the learned item bias b_j with ``cold_item_bias``) plus the user side (steps 6-7, ``user_history``: the
region embedding of the user's own history; docs/models.md §5.2, §5.4). The saved weights are evaluated
(full ranking or the checkpoint's own protocol, on its own split) five times, nothing retrained:

* ``full``: the model as trained;
* ``item side only``: without the user side;
* ``user side + item bias``: neighbours switched off (the item side reduced to b_j);
* ``user side only``: neither neighbours nor b_j;
* ``item bias only``: b_j alone, a learned popularity ranking.

A part's score alone is not what a model trained without the other part would reach; the table says how much
of the trained model's ranking each part carries.
"""

import argparse
import sys


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="an ARERec best-model file written by a training run")
    p.add_argument("--metric", default=None, help="metric to print (default: the checkpoint's valid_metric)")
    args = p.parse_args(argv)
    sys.argv = sys.argv[:1]  # RecBole's Config reads --key=value from sys.argv
    import torch

    from recbole_timeplug.quick_start import load_data_and_model
    from recbole_timeplug.registry import get_trainer

    config, model, _, _, valid_data, test_data = load_data_and_model(args.checkpoint)
    if config["model"] != "ARERec":
        raise SystemExit(f"arerec_parts.py: {args.checkpoint} holds a {config['model']}, not an ARERec")
    metric = (args.metric or config["valid_metric"]).lower()
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    model.eval()
    with_history = model.user_history
    item_side = {name: getattr(model, name) for name in ("_full_sort_fast", "_full_sort_recent", "_item_side")}

    def bias_only(with_bias):
        """The item side reduced to b_j (or to 0): replaces every item-side scoring path of the model."""

        def full_sort(user, query_time, scores, row_step, item_step):
            scores.zero_()
            if with_bias and model.cold_item_bias:
                scores += model.item_bias.weight.view(1, -1)

        def per_candidate(user, items, query_time):
            if with_bias and model.cold_item_bias:
                return model.item_bias(items).squeeze(-1)
            return torch.zeros(items.shape, device=items.device)

        return {"_full_sort_fast": full_sort, "_full_sort_recent": full_sort, "_item_side": per_candidate}

    variants = [("full", with_history, None)]
    if with_history:
        variants += [("item side only", False, None), ("user side + item bias", True, bias_only(True)),
                     ("user side only", True, bias_only(False))]
    variants.append(("item bias only", False, bias_only(True)))
    print(f"{args.checkpoint}: {metric}, neighbor_window {model.neighbor_index.window}, "
          f"user_history {with_history}", flush=True)
    try:
        for name, history, replaced in variants:
            model.user_history = history
            for attr, original in item_side.items():
                setattr(model, attr, (replaced or {}).get(attr, original))
            scores = {}
            for split, data in (("valid", valid_data), ("test", test_data)):
                with torch.no_grad():
                    scores[split] = trainer.evaluate(data, load_best_model=False, show_progress=False)[metric]
            print(f"  {name:22s} valid {scores['valid']:.4f}  test {scores['test']:.4f}", flush=True)
    finally:
        trainer.release_checkpoint_name()  # the checkpoint name the trainer reserved and never wrote


if __name__ == "__main__":
    main()
