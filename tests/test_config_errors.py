"""A bad config value, for every model, ends in one line naming the model, the key, the value and what is
allowed, with exit status 2 and no traceback (``validation.ConfigChecks`` / ``ModelConfigError``)."""

import pytest

from conftest import cli_args, one_line_error
from recbole_timeplug.errors import ModelConfigError, TimeplugError
from recbole_timeplug.model.sequential_recommender.tim4rec import TiM4RecConfigError
from recbole_timeplug.model.sequential_recommender.timirec import TiMiRecConfigError
from recbole_timeplug.validation import ConfigChecks

CASES = [  # model, --key=value, the message's start, a word of what is allowed
    ("TiSASRec", "time_span", -1, "TiSASRec: `time_span`=-1 is invalid", "integer >= 0"),
    ("TiM4Rec", "MAX_ITEM_LIST_LENGTH", 0, "TiM4Rec: `MAX_ITEM_LIST_LENGTH`=0 is invalid", "integer >= 1"),
    ("TiM4Rec", "ssd_backend", "cuda", "TiM4Rec: `ssd_backend`='cuda' is invalid", "auto"),
    ("MASAN", "alpha_mode", "bogus", "MASAN: `alpha_mode`='bogus' is invalid", "adaptive, fixed, softmax"),
    ("TiMiRec", "n_interests", 0, "TiMiRec: `n_interests`=0 is invalid", "integer >= 1"),
    ("ARERec", "neighbor_window", "latest", "ARERec: `neighbor_window`='latest' is invalid", "earliest"),
    ("SASRec", "MAX_ITEM_LIST_LENGTH", 0, "SASRec: `MAX_ITEM_LIST_LENGTH`=0 is invalid", "integer >= 1"),
]


@pytest.mark.parametrize("model,key,value,message,allowed", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_bad_value_is_one_line_and_exit_2(run_cli, tiny_config, model, key, value, message, allowed):
    config = dict(tiny_config, model=model, epochs=1, state="INFO")
    config[key] = value
    line = one_line_error(run_cli("run_recbole.py", *cli_args(config), check=False))
    assert message in line and allowed in line, line


def test_one_error_type_with_the_old_names_as_aliases():
    assert TiM4RecConfigError is ModelConfigError and TiMiRecConfigError is ModelConfigError
    assert issubclass(ModelConfigError, TimeplugError) and issubclass(ModelConfigError, ValueError)


@pytest.mark.parametrize(
    "method,args,value,ok",
    [
        ("positive_int", (), 3, 3),
        ("positive_int", (), 64.0, 64),  # a whole float from a search space
        ("positive_int", (), True, None),  # a bool is not a count
        ("positive_int", (), 0, None),
        ("probability", (), 0.0, 0.0),
        ("probability", (), 1.0, None),
        ("number", ("", 1.0, 2.0), 2.0, 2.0),  # (1, 2]
        ("number", ("", 1.0, 2.0), 1.0, None),
        ("boolean", (), "True", True),
        ("boolean", (), 1, None),
        ("one_of", (("a", "b"),), "b", "b"),
        ("one_of", (("a", "b"),), "c", None),
    ],
)
def test_checks_accept_and_refuse(method, args, value, ok):
    check = ConfigChecks("M", {"k": value})
    if ok is None:
        with pytest.raises(ModelConfigError, match=r"^M: `k`=.* is invalid; "):
            getattr(check, method)("k", *args)
    else:
        assert getattr(check, method)("k", *args) == ok


def test_missing_key_points_to_the_model_yaml():
    with pytest.raises(ModelConfigError, match=r"M: `k` is missing .*properties/model/M\.yaml"):
        ConfigChecks("M", _Missing()).positive_int("k")


@pytest.mark.parametrize(
    "loss,neg,bad_key",
    [
        ("CE", {"distribution": "uniform", "sample_num": 1}, "train_neg_sample_args"),
        ("BPR", None, "train_neg_sample_args"),
        ("BCE", {"distribution": "uniform", "sample_num": 1}, "loss_type"),  # not among the allowed
    ],
)
def test_loss_type_must_match_negative_sampling(loss, neg, bad_key):
    check = ConfigChecks("M", {"loss_type": loss, "train_neg_sample_args": neg})
    with pytest.raises(ModelConfigError, match=f"`{bad_key}`"):
        check.loss_type(("CE", "BPR"))


class _Missing(dict):
    def __getitem__(self, key):  # RecBole's Config answers None for a missing key
        return None
