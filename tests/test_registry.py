"""Name resolution for plugin and RecBole models, config layering, and early, clear errors."""

import os

import pytest
from recbole.utils import ModelType

import recbole_timeplug.trainer as plugin_trainer
from recbole_timeplug import Config, get_model, get_trainer, register_model
from recbole_timeplug.errors import DatasetNotFoundError, MissingFieldError, UnknownModelError
from recbole_timeplug.quick_start import run_recbole
from recbole_timeplug.registry import PLUGIN_MODELS
from recbole_timeplug.trainer import CheckpointMixin

PROBE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "probe_models")


@pytest.fixture
def probe_model(monkeypatch):
    monkeypatch.setitem(PLUGIN_MODELS, "TimeGapProbe", "probe_models:TimeGapProbe")
    monkeypatch.syspath_prepend(os.path.dirname(PROBE_DIR))
    register_model("TimeGapProbe", "probe_models:TimeGapProbe", config_file=os.path.join(PROBE_DIR, "TimeGapProbe.yaml"))
    return "TimeGapProbe"


def test_unknown_model_lists_available_models():
    with pytest.raises(UnknownModelError, match=r"Unknown model 'NoSuchRec'(?s:.*)RecBole built-in models: .*SASRec"):
        get_model("NoSuchRec")
    with pytest.raises(UnknownModelError, match="Did you mean 'SASRec'"):
        get_model("sasrec")


def test_unknown_model_through_the_command_line(run_cli):
    proc = run_cli("run_recbole.py", "--model=NoSuchRec", "--dataset=ml-100k", check=False)
    assert proc.returncode != 0
    assert "Unknown model 'NoSuchRec'" in proc.stderr and "GRU4Rec" in proc.stderr
    assert "lightgbm" not in proc.stderr


def test_builtin_models_resolve_and_get_safe_trainers():
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import S3RecTrainer, Trainer

    assert get_model("SASRec") is SASRec
    trainer = get_trainer(ModelType.SEQUENTIAL, "SASRec")
    assert issubclass(trainer, CheckpointMixin) and issubclass(trainer, Trainer)
    s3 = get_trainer(ModelType.SEQUENTIAL, "S3Rec")  # RecBole's own <Model>Trainer keeps its behaviour
    assert issubclass(s3, S3RecTrainer) and issubclass(s3, CheckpointMixin)


def test_plugin_model_config_layering(probe_model, tiny_config):
    config = Config(model=probe_model, dataset="tiny", config_dict={"data_path": tiny_config["data_path"]})
    assert config["probe_marker"] == "from_model_yaml"
    assert config["probe_override"] == "from_model_dataset_yaml"  # <Model>/<dataset>.yaml is more specific
    assert config["hidden_size"] == 8
    assert config["eval_args"]["order"] == "TO"  # RecBole's sequential defaults still apply
    assert config["train_neg_sample_args"]["distribution"] == "none"  # CE needs no negatives
    # precedence: config_dict > YAMLs; command line > config_dict is RecBole's own
    config = Config(model=probe_model, dataset="tiny", config_dict={"hidden_size": 12, "data_path": "x"})
    assert config["hidden_size"] == 12


def test_loss_type_picks_matching_negative_sampling():
    assert Config(model="SASRec", dataset="ml-100k")["train_neg_sample_args"]["distribution"] == "none"
    bpr = Config(model="SASRec", dataset="ml-100k", config_dict={"loss_type": "BPR"})
    assert bpr["train_neg_sample_args"]["distribution"] == "uniform"


def test_plugin_model_trains_with_its_own_trainer(probe_model, tiny_config, monkeypatch):
    calls = []

    class TimeGapProbeTrainer(plugin_trainer.Trainer):
        def fit(self, *args, **kwargs):
            calls.append("fit")
            return super().fit(*args, **kwargs)

    monkeypatch.setattr(plugin_trainer, "TimeGapProbeTrainer", TimeGapProbeTrainer, raising=False)
    assert get_trainer(ModelType.SEQUENTIAL, probe_model) is TimeGapProbeTrainer
    result = run_recbole(config_dict=dict(tiny_config, model=probe_model, epochs=1))
    assert calls == ["fit"]
    assert result["test_result"]["hit@10"] > 0


def test_model_needing_timestamp_without_it_in_load_col(probe_model, tiny_config):
    config = dict(tiny_config, model=probe_model, load_col={"inter": ["user_id", "item_id"]})
    with pytest.raises(MissingFieldError, match=r"needs the `timestamp` column \(config key `TIME_FIELD`\).*load_col"):
        run_recbole(config_dict=config)


def test_model_needing_timestamp_when_the_file_has_none(probe_model, tiny_config, tmp_path):
    from conftest import write_inter

    write_inter(str(tmp_path / "data" / "notime" / "notime.inter"), with_time=False)
    config = dict(tiny_config, model=probe_model, dataset="notime", load_col=None)
    with pytest.raises(MissingFieldError, match=r"notime\.inter has no such column"):
        run_recbole(config_dict=config)


def test_missing_dataset_says_where_it_looked_and_what_to_do(tiny_config, tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        run_recbole(config_dict=dict(tiny_config, dataset="ml-1m"))
    message = str(err.value)
    assert os.path.join(str(tmp_path / "data" / "ml-1m"), "ml-1m.inter") in message
    assert "dataset/README.md" in message and "--download=True" in message
    with pytest.raises(DatasetNotFoundError, match="my-data"):
        run_recbole(config_dict=dict(tiny_config, dataset="my-data"))
