"""The dataset YAMLs shipped in recbole_timeplug/properties/dataset/ and the default-load_col rule."""

import glob
import os

import pytest

from conftest import one_line_error, write_inter
from recbole_timeplug.config import Config
from recbole_timeplug.errors import MissingFieldError
from recbole_timeplug.quick_start import check_required_fields
from recbole_timeplug.registry import PROPERTIES_DIR, get_model

SHIPPED = sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(PROPERTIES_DIR, "dataset", "*.yaml")))


def _ml1m_shaped(root, name="ml-1m", **kwargs):
    """``<root>/dataset/<name>/<name>.inter`` with the columns of RecBole's ml-1m download."""
    path = write_inter(os.path.join(root, "dataset", name, f"{name}.inter"), **kwargs)
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    out = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    for k, line in enumerate(lines[1:]):
        u, i, t = line.split("\t")
        out.append(f"{u}\t{i}\t{1 + k % 5}\t{t}")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")
    return path


def test_seed_paper_datasets_have_yamls():
    assert {"ml-1m", "amazon-beauty", "amazon-books", "amazon-grocery-gourmet-food", "steam", "kuairand",
            "yelp"} <= set(SHIPPED)


@pytest.mark.parametrize("dataset", SHIPPED)
def test_shipped_yaml_loads_what_time_aware_models_need(dataset, tmp_path):
    config = Config(model="TiSASRec", dataset=dataset, config_dict={"data_path": str(tmp_path)})
    inter = config["load_col"]["inter"]
    assert config["USER_ID_FIELD"] in inter and config["ITEM_ID_FIELD"] in inter and config["TIME_FIELD"] in inter
    assert config["user_inter_num_interval"] == "[5,inf)" and config["item_inter_num_interval"] == "[5,inf)"
    assert config["eval_args"]["order"] == "TO"  # RecBole's sequential defaults are not overridden
    check_required_fields(config, get_model("TiSASRec"))
    # the command line still wins over the shipped YAML
    config = Config(model="SASRec", dataset=dataset, config_dict={"user_inter_num_interval": "[1,inf)"})
    assert config["user_inter_num_interval"] == "[1,inf)"


def test_default_load_col_gets_the_time_field(tmp_path):
    config = Config(model="TiM4Rec", dataset="nodefaults", config_dict={"data_path": str(tmp_path)})
    assert config["load_col"] == {"inter": ["user_id", "item_id", "timestamp"]}
    assert any("added timestamp" in note for note in config.timeplug_notes)
    # any sequential model orders histories by time: SASRec gets it too
    config = Config(model="SASRec", dataset="nodefaults", config_dict={"data_path": str(tmp_path)})
    assert config["load_col"] == {"inter": ["user_id", "item_id", "timestamp"]}
    # a general model split at random keeps RecBole's default
    config = Config(model="BPR", dataset="nodefaults", config_dict={"data_path": str(tmp_path)})
    assert config["eval_args"]["order"] == "RO"
    assert config["load_col"] == {"inter": ["user_id", "item_id"]} and config.timeplug_notes == []


def test_users_own_load_col_without_time_is_an_error(tmp_path):
    config = Config(model="TiM4Rec", dataset="nodefaults",
                    config_dict={"data_path": str(tmp_path), "load_col": {"inter": ["user_id", "item_id"]}})
    assert config["load_col"] == {"inter": ["user_id", "item_id"]}
    with pytest.raises(MissingFieldError, match="load_col"):
        check_required_fields(config, get_model("TiM4Rec"))


def test_headline_command_on_ml1m_shaped_folder(run_cli, tmp_path):
    """``python run_recbole.py --model=TiM4Rec --dataset=ml-1m`` with RecBole's ml-1m columns in dataset/ml-1m/
    (only sizes and the epoch count added, to keep the test short)."""
    _ml1m_shaped(str(tmp_path), n_users=60)
    proc = run_cli("run_recbole.py", "--model=TiM4Rec", "--dataset=ml-1m",
                   "--epochs=1", "--hidden_size=16", "--MAX_ITEM_LIST_LENGTH=20", "--show_progress=False")
    out = proc.stdout + proc.stderr
    assert "test result" in out
    assert "load_col = {'inter': ['user_id', 'item_id', 'timestamp']}" in out  # from the shipped ml-1m.yaml
    assert "user_inter_num_interval = [5,inf)" in out


def test_headline_command_on_a_dataset_without_yaml(run_cli, tmp_path):
    """A dataset without any YAML: RecBole's default load_col, plus the time field, logged."""
    _ml1m_shaped(str(tmp_path), name="mydata", n_users=60)
    proc = run_cli("run_recbole.py", "--model=TiSASRec", "--dataset=mydata",
                   "--epochs=1", "--hidden_size=16", "--n_layers=1", "--MAX_ITEM_LIST_LENGTH=20",
                   "--show_progress=False")
    out = proc.stdout + proc.stderr
    assert "load_col: added timestamp (`TIME_FIELD`)" in out and "test result" in out
    bad = run_cli("run_recbole.py", "--model=TiSASRec", "--dataset=mydata",
                  "--load_col={'inter': ['user_id', 'item_id']}", check=False)
    assert "needs the `timestamp` column" in one_line_error(bad)
