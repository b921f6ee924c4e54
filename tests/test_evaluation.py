"""Per-user metrics (recbole_timeplug.evaluation) against hand-computed cases and RecBole's own aggregates,
and the paired tests against hand-computed values."""

import math

import numpy as np
import pytest

from recbole_timeplug.errors import TimeplugError
from recbole_timeplug.evaluation import holm, paired_bootstrap_ci, per_user_topk, wilcoxon_p
from recbole_timeplug.quick_start import run_recbole
from recbole_timeplug.registry import get_model


def test_per_user_formulas_hand_computed():
    # user 0: positive ranked 3rd; user 1: none in the top 4; user 2: two positives ranked 1st and 4th
    pos_index = np.array([[0, 0, 1, 0], [0, 0, 0, 0], [1, 0, 0, 1]], dtype=bool)
    pos_len = np.array([1, 1, 2])
    assert per_user_topk(pos_index, pos_len, "hit", 2).tolist() == [0, 0, 1]
    assert per_user_topk(pos_index, pos_len, "hit", 3).tolist() == [1, 0, 1]
    assert per_user_topk(pos_index, pos_len, "mrr", 4).tolist() == [1 / 3, 0, 1]
    ndcg = per_user_topk(pos_index, pos_len, "ndcg", 4)
    assert ndcg[0] == pytest.approx(1 / math.log2(4))
    assert ndcg[1] == 0
    assert ndcg[2] == pytest.approx((1 + 1 / math.log2(5)) / (1 + 1 / math.log2(3)))
    assert per_user_topk(pos_index, pos_len, "recall", 4).tolist() == [1, 0, 1]
    assert per_user_topk(pos_index, pos_len, "precision", 4).tolist() == [0.25, 0, 0.5]
    with pytest.raises(TimeplugError, match="add 5 to `topk`"):
        per_user_topk(pos_index, pos_len, "ndcg", 5)
    with pytest.raises(TimeplugError, match="'auc' is not supported"):
        per_user_topk(pos_index, pos_len, "auc", 2)


@pytest.mark.parametrize("mode", ["full", "uni100"])
def test_mean_of_per_user_metrics_is_recboles_printed_metric(tiny_config, mode):
    config = dict(tiny_config, epochs=1, topk=[5, 10], metrics=["Hit", "NDCG", "MRR", "Recall", "Precision"],
                  eval_args={"split": {"LS": "valid_and_test"}, "group_by": "user", "order": "TO", "mode": mode})
    result = run_recbole(config_dict=config, per_user=True)
    per_user = result["test_per_user"]
    n_users = len(per_user["user_id"])
    assert n_users > 100 and len(set(per_user["user_id"])) == n_users  # one row per test user
    assert sorted(k for k in per_user if k != "user_id") == sorted(
        f"{m}@{k}" for m in ("hit", "ndcg", "mrr", "recall", "precision") for k in (5, 10))
    for name, printed in result["test_result"].items():
        assert len(per_user[name]) == n_users
        # RecBole rounds its printed metrics to `metric_decimal_place` (4) digits
        assert round(float(np.mean(per_user[name])), 4) == pytest.approx(printed, abs=1e-12), name


def test_per_user_metrics_of_saved_weights_match_the_training_run(tiny_config):
    trained = run_recbole(config_dict=dict(tiny_config, epochs=1), per_user=True)
    tested = run_recbole(config_dict={"checkpoint_path": trained["saved_model_file"], "test_only": True,
                                      "state": "ERROR"}, per_user=True)
    assert tested["test_per_user"]["user_id"] == trained["test_per_user"]["user_id"]
    np.testing.assert_allclose(tested["test_per_user"]["ndcg@10"], trained["test_per_user"]["ndcg@10"])


def test_wilcoxon_matches_the_exact_hand_computed_distribution():
    # differences 1, 2, 3, -4 (no ties): ranks 1..4, W- = 4. Under H0 each of the 16 sign patterns is
    # equally likely; P(min(W+, W-) <= 4) counts the patterns whose smaller rank sum is at most 4.
    a = np.array([1.0, 2.0, 3.0, 0.0])
    b = np.array([0.0, 0.0, 0.0, 4.0])
    sums = [sum(r for r, s in zip(range(1, 5), signs) if s) for signs in np.ndindex(2, 2, 2, 2)]
    expected = sum(min(w, 10 - w) <= 4 for w in sums) / 16
    assert wilcoxon_p(a, b) == pytest.approx(expected)
    assert wilcoxon_p(a, a) == 1.0  # every pair ties: no evidence either way
    with pytest.raises(TimeplugError, match="one value per user"):
        wilcoxon_p(a, b[:3])


def test_paired_bootstrap_ci():
    rng = np.random.default_rng(0)
    b = rng.random(500)
    mean, low, high = paired_bootstrap_ci(b + 0.1, b)  # a constant difference has no spread
    assert mean == pytest.approx(0.1) and low == pytest.approx(0.1) and high == pytest.approx(0.1)
    noise = rng.normal(0.0, 1.0, 2000)
    mean, low, high = paired_bootstrap_ci(noise + 0.05, np.zeros(2000), n_resamples=4000)
    # the normal-theory interval: mean ± 1.96 * sd / sqrt(n)
    half = 1.96 * noise.std(ddof=1) / math.sqrt(2000)
    assert low == pytest.approx(mean - half, abs=0.01) and high == pytest.approx(mean + half, abs=0.01)


def test_holm_hand_computed():
    # sorted p: .01 (x3 = .03), .02 (x2 = .04), .04 (x1 = .04, already monotone); None is skipped
    assert holm([0.04, 0.01, None, 0.02]) == pytest.approx([0.04, 0.03, None, 0.04])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([]) == []


@pytest.mark.parametrize("model", ["SASRec", "TiSASRec"])
def test_sampled_eval_from_full_sort_rows_equals_recboles_per_row_predict(tiny_config, model, monkeypatch):
    """``sampled_eval_full_sort``: uni100 metrics (valid and test, per user) as RecBole's per-candidate
    ``predict`` gives them; a model without ``full_sort_predict`` falls back to ``predict``."""
    config = dict(tiny_config, model=model, epochs=1, topk=[5, 10],
                  eval_args={"split": {"LS": "valid_and_test"}, "group_by": "user", "order": "TO", "mode": "uni100"})
    cls = get_model(model)
    predicted = []
    original = cls.predict

    def counting(self, interaction):
        predicted.append(len(interaction))
        return original(self, interaction)

    monkeypatch.setattr(cls, "predict", counting)
    rows = run_recbole(config_dict=config, per_user=True)
    assert sum(predicted) > 101 * 100  # valid and test: every candidate row of every user
    predicted.clear()
    fast = run_recbole(config_dict=dict(config, sampled_eval_full_sort=True), per_user=True)
    assert sum(predicted) <= 1  # only RecBole's FLOPs count at start-up
    assert fast["best_valid_result"] == rows["best_valid_result"] and fast["test_result"] == rows["test_result"]
    assert fast["test_per_user"]["user_id"] == rows["test_per_user"]["user_id"]
    np.testing.assert_allclose(fast["test_per_user"]["ndcg@10"], rows["test_per_user"]["ndcg@10"])
    if model == "SASRec":
        from recbole.model.sequential_recommender.sasrec import SASRec

        def no_full_sort(self, interaction):
            raise NotImplementedError

        monkeypatch.setattr(SASRec, "full_sort_predict", no_full_sort)
        fallback = run_recbole(config_dict=dict(config, sampled_eval_full_sort=True), per_user=True)
        assert fallback["test_result"] == rows["test_result"]
