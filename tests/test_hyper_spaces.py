"""The shipped search spaces (``configs/hyper/*.hyper``): every plugin model has one, and every value of
every searched key reaches the run. A key that nothing reads (a typo, a key of another model) would make
a search train the same model over and over, since RecBole ignores unknown keys; here such a key fails,
because the test records which config keys the model's and the trainer's constructors actually read."""

import math
import os

import pytest
import torch
from recbole.config import Config as RecBoleConfig

from conftest import REPO, write_inter
from recbole_timeplug.config import Config
from recbole_timeplug.hyper import parse_params_file
from recbole_timeplug.quick_start import _prepare
from recbole_timeplug.registry import PLUGIN_MODELS, get_trainer

HYPER_DIR = os.path.join(REPO, "configs", "hyper")
TINY = {
    "hidden_size": 16, "embedding_size": 16, "inner_size": 32, "n_layers": 1, "n_heads": 2,
    "MAX_ITEM_LIST_LENGTH": 10, "train_batch_size": 64, "eval_batch_size": 256,
}


def space_file(model):
    return os.path.join(HYPER_DIR, f"{model.lower()}.hyper")


@pytest.fixture(scope="module")
def data_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("hyper_spaces")
    write_inter(str(root / "tiny" / "tiny.inter"), n_users=60, n_items=50, min_len=8, max_len=14)
    return str(root)


def test_every_plugin_model_ships_a_search_space():
    missing = [m for m in sorted(PLUGIN_MODELS) if not os.path.isfile(space_file(m))]
    assert not missing, f"no configs/hyper/<model>.hyper for {missing}"


@pytest.mark.parametrize("model", sorted(PLUGIN_MODELS))
def test_every_searched_value_is_read_and_trains(model, data_path, tmp_path, monkeypatch):
    params = parse_params_file(space_file(model))
    base = {"model": model, "dataset": "tiny", "data_path": data_path, "checkpoint_dir": str(tmp_path),
            "state": "ERROR", "show_progress": False, **TINY}
    searched_and_tiny = set(params) & set(TINY)
    assert not searched_and_tiny, f"the test's tiny settings would hide {searched_and_tiny}"
    model_class, _, train_data, _, _ = _prepare(Config(model=model, dataset="tiny", config_dict=base))
    batch = next(iter(train_data))

    read = set()
    original = RecBoleConfig.__getitem__

    def recording(self, key):
        read.add(key)
        return original(self, key)

    monkeypatch.setattr(RecBoleConfig, "__getitem__", recording)
    for name, (kind, values) in params.items():
        assert kind == "choice", f"{model}: {name} is {kind}; the shipped spaces are grids (exhaustive works)"
        for value in values:
            config = Config(model=model, dataset="tiny", config_dict={**base, name: value})
            assert config[name] == value
            read.clear()
            torch.manual_seed(0)
            net = model_class(config, train_data._dataset)
            get_trainer(config["MODEL_TYPE"], model)(config, net)
            assert name in read, f"{model}: {name} = {value!r} is read by neither the model nor its trainer"
            losses = net.calculate_loss(batch)
            losses = losses if isinstance(losses, tuple) else (losses,)
            total = sum(loss.sum() for loss in losses)
            assert math.isfinite(float(total.detach())), f"{model}: {name} = {value!r} gives a loss of {float(total.detach())}"
