"""README "Adding a model": its code blocks, written to files as a user would, register a sixth model from
outside the package; its own reference test passes, and it trains, saves and re-evaluates like any model."""

import importlib
import os
import re
import sys

import pytest

from conftest import REPO
from recbole_timeplug import registry

SECTION = "### Adding a model"


def readme_blocks():
    """``{relative path: code}`` of the section's code blocks whose first line is ``# <path>``."""
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        text = f.read()
    start = text.index(SECTION)
    end = text.find("\n## ", start)
    section = text[start : end if end != -1 else None]
    blocks = {}
    for indent, body in re.findall(r"(?m)^( *)```(?:python|yaml)\n(.*?)^\1```", section, flags=re.S):
        lines = [line[len(indent) :] for line in body.splitlines()]
        first = lines[0].strip()
        if first.startswith("# ") and "/" in first:
            blocks[first[2:]] = "\n".join(lines) + "\n"
    return blocks


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    """The README's files under ``tmp_path`` (importable as ``my_models``), registered; undone afterwards."""
    blocks = readme_blocks()
    assert set(blocks) == {
        "my_models/gap_gru.py",
        "my_models/GapGRU.yaml",
        "my_models/register.py",
        "my_models/test_gap_gru.py",
    }, sorted(blocks)
    for path, code in blocks.items():
        os.makedirs(tmp_path / os.path.dirname(path), exist_ok=True)
        (tmp_path / path).write_text(code, encoding="utf-8")
    (tmp_path / "my_models" / "__init__.py").write_text("", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))  # the user's own package, as on their PYTHONPATH
    monkeypatch.chdir(tmp_path)  # register.py names the YAML relative to the user's folder
    monkeypatch.setattr(registry, "PLUGIN_MODELS", dict(registry.PLUGIN_MODELS))
    monkeypatch.setattr(registry, "_EXTRA_MODEL_YAMLS", dict(registry._EXTRA_MODEL_YAMLS))
    importlib.import_module("my_models.register")
    yield tmp_path
    for name in [m for m in sys.modules if m == "my_models" or m.startswith("my_models.")]:
        del sys.modules[name]


def test_readme_model_passes_its_reference_test(user_package):
    module = importlib.import_module("my_models.test_gap_gru")
    module.test_forward_equals_a_step_by_step_gru()


def test_readme_model_trains_saves_and_reevaluates(user_package, tiny_config):
    import torch

    from recbole_timeplug.quick_start import run_recbole

    trained = run_recbole(config_dict=dict(tiny_config, model="GapGRU", epochs=1))
    assert trained["model"] == "GapGRU" and 0.0 <= trained["test_result"]["ndcg@10"] <= 1.0
    payload = torch.load(trained["saved_model_file"], weights_only=True)
    assert payload["model"] == "GapGRU" and "gap_embedding.weight" in payload["state_dict"]
    again = run_recbole(
        config_dict=dict(checkpoint_path=trained["saved_model_file"], test_only=True, state="ERROR")
    )
    assert again["test_result"] == trained["test_result"]


def test_readme_model_bad_value_is_a_config_error(user_package, tiny_config):
    from recbole_timeplug.errors import ModelConfigError
    from recbole_timeplug.quick_start import run_recbole

    with pytest.raises(ModelConfigError, match=r"GapGRU: `hidden_size`=0 is invalid; it must be an integer >= 1"):
        run_recbole(config_dict=dict(tiny_config, model="GapGRU", hidden_size=0))
