"""Per-user test metrics and paired significance tests between two models' per-user metrics.

RecBole prints each metric averaged over the test users; a comparison of two models needs each user's
value, paired by user. :class:`PerUserCapture` keeps the ranking RecBole's evaluation computes anyway
(``rec.topk``: for each user, which of the top-k ranked items are positives, and how many positives the
user has) and :func:`per_user_topk` turns it into per-user values with the textbook formulas, written
here from their definitions rather than taken from RecBole's metric classes (so the test that their mean
equals RecBole's printed metric checks one against the other):

    Hit@k       = 1[any positive in the top k]
    MRR@k       = 1 / rank of the first positive in the top k (0 if none)
    NDCG@k      = Σ_{i≤k} rel_i / log2(i + 1)  /  Σ_{i≤min(k, #pos)} 1 / log2(i + 1)
    Recall@k    = (# positives in the top k) / #pos
    Precision@k = (# positives in the top k) / k

Statistics (:func:`wilcoxon_p`, :func:`paired_bootstrap_ci`, :func:`holm`) are the usual paired tests over
users: a Wilcoxon signed-rank test (SciPy, two-sided; users whose two values tie carry no sign and are
dropped, Wilcoxon's own rule), a percentile bootstrap CI of the mean difference resampling users, and
Holm's step-down correction for testing several models against one reference.
"""

import math

import numpy as np

from recbole_timeplug.errors import TimeplugError

PER_USER_METRICS = ("hit", "mrr", "ndcg", "recall", "precision")


def per_user_topk(pos_index, pos_len, metric, k):
    """Per-user ``metric@k`` (a float array, one value per row).

    ``pos_index``: bool ``[n_users, K]`` (K ≥ k), whether the item ranked i-th is a positive;
    ``pos_len``: ``[n_users]``, each user's number of positives.
    """
    metric = metric.lower()
    if metric not in PER_USER_METRICS:
        raise TimeplugError(
            f"per-user metric {metric!r} is not supported: use one of {', '.join(PER_USER_METRICS)} "
            f"(RecBole's other metrics are not per-user top-k metrics)."
        )
    pos_index = np.asarray(pos_index, dtype=bool)
    pos_len = np.asarray(pos_len, dtype=np.float64).reshape(-1)
    if k > pos_index.shape[1]:
        raise TimeplugError(f"{metric}@{k}: the evaluation ranked only the top {pos_index.shape[1]} items; "
                            f"add {k} to `topk`.")
    top = pos_index[:, :k]
    hits = top.sum(axis=1).astype(np.float64)
    if metric == "hit":
        return (hits > 0).astype(np.float64)
    if metric == "recall":
        return np.divide(hits, pos_len, out=np.zeros_like(hits), where=pos_len > 0)
    if metric == "precision":
        return hits / k
    if metric == "mrr":
        first = np.argmax(top, axis=1)  # 0-based rank of the first positive (0 when there is none)
        return np.where(hits > 0, 1.0 / (first + 1.0), 0.0)
    discounts = 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))  # 1/log2(i+1), i = 1..k
    dcg = (top * discounts).sum(axis=1)
    ideal = np.cumsum(discounts)[np.clip(pos_len.astype(np.int64), 1, k) - 1]
    return np.where(pos_len > 0, dcg / ideal, 0.0)


class PerUserCapture:
    """Keeps the data RecBole's evaluator sees during one ``trainer.evaluate`` call.

    ``with PerUserCapture(trainer) as cap: trainer.evaluate(...)`` then ``cap.metrics(["ndcg@10"])``.
    RecBole deletes ``rec.topk`` from its collector once the metrics are computed, so the evaluator's
    input is kept on the way in; the evaluation itself is untouched.
    """

    def __init__(self, trainer):
        self.trainer = trainer
        self.structs = []

    def __enter__(self):
        evaluator = self.trainer.evaluator
        original = evaluator.evaluate

        def evaluate(struct):
            self.structs.append(struct)
            return original(struct)

        evaluator.evaluate = evaluate
        return self

    def __exit__(self, *exc):
        del self.trainer.evaluator.evaluate  # the instance attribute; the class method shows through again
        return False

    def metrics(self, names, eval_data=None, index=-1):
        """``{"user_id": [...], "<metric>@<k>": [...]}`` of the ``index``-th evaluation captured.

        ``user_id``: the users' original tokens (as in the atomic files) in RecBole's evaluation order, when
        ``eval_data`` is given, so runs pair by user even if their internal ids differ.
        """
        if not self.structs:
            raise TimeplugError("no evaluation was captured: call trainer.evaluate inside the `with` block")
        struct = self.structs[index]
        if "rec.topk" not in struct:
            raise TimeplugError("per-user metrics need a ranking evaluation (`eval_type` RANKING, top-k metrics)")
        topk = struct.get("rec.topk").cpu().numpy()
        pos_index, pos_len = topk[:, :-1].astype(bool), topk[:, -1]
        out = {}
        users = _user_tokens(eval_data, len(pos_len)) if eval_data is not None else None
        if users is not None:
            out["user_id"] = users
        for name in names:
            metric, _, k = name.lower().partition("@")
            if not k.isdigit():
                raise TimeplugError(f"per-user metric {name!r}: expected <metric>@<k>, e.g. ndcg@10")
            out[f"{metric}@{k}"] = per_user_topk(pos_index, pos_len, metric, int(k))
        return out


def _user_tokens(eval_data, n_rows):
    """The evaluated users' tokens, in evaluation order (``None`` if the order cannot be recovered)."""
    dataset = eval_data._dataset
    ids = getattr(eval_data, "uid_list", None)  # general (non-sequential) evaluation loaders
    if ids is None or len(ids) != n_rows:
        # sequential models: one evaluation row per user, in the dataset's order (no shuffling at evaluation)
        ids = dataset.inter_feat[dataset.uid_field]
    ids = np.asarray(ids)
    if len(ids) != n_rows:
        return None
    return [str(t) for t in dataset.id2token(dataset.uid_field, ids)]


def topk_metric_names(config):
    """``["hit@10", "ndcg@10", ...]``: the config's top-k metrics that have a per-user form."""
    names = []
    for metric in config["metrics"]:
        if metric.lower() in PER_USER_METRICS:
            names += [f"{metric.lower()}@{k}" for k in config["topk"]]
    return names


# ------------------------------------------------------------------------------------ paired tests
def _paired(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise TimeplugError(f"paired test: both models need one value per user, in the same order "
                            f"(got shapes {a.shape} and {b.shape})")
    return a, b


def wilcoxon_p(a, b):
    """Two-sided p-value of the Wilcoxon signed-rank test of ``a - b`` (1.0 when every pair ties)."""
    a, b = _paired(a, b)
    if not np.any(a != b):
        return 1.0
    from scipy.stats import wilcoxon

    return float(wilcoxon(a, b, zero_method="wilcox", alternative="two-sided").pvalue)


def paired_bootstrap_ci(a, b, n_resamples=10000, alpha=0.05, seed=0):
    """``(mean difference, low, high)``: percentile bootstrap CI of mean(a − b), resampling users."""
    a, b = _paired(a, b)
    diff = a - b
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    for start in range(0, n_resamples, 1000):  # chunks: 1000 x n_users indices at a time
        stop = min(start + 1000, n_resamples)
        idx = rng.integers(0, len(diff), size=(stop - start, len(diff)))
        means[start:stop] = diff[idx].mean(axis=1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(diff.mean()), float(low), float(high)


def holm(pvalues):
    """Holm's step-down adjusted p-values (same order as given); ``None`` entries stay ``None``."""
    present = [(p, i) for i, p in enumerate(pvalues) if p is not None and not math.isnan(p)]
    adjusted = [None] * len(pvalues)
    m, running = len(present), 0.0
    for rank, (p, i) in enumerate(sorted(present)):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted
