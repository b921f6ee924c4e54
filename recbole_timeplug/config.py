"""RecBole ``Config`` that also knows this package's models and YAMLs.

Layering (lowest first), as in RecBole plus the plugin's files:

1. RecBole internal: ``overall.yaml`` -> RecBole ``model/<Model>.yaml`` -> ``dataset/sample.yaml`` ->
   RecBole ``dataset/<dataset>.yaml`` -> ``quick_start_config/sequential.yaml`` (for sequential models);
2. plugin internal: ``properties/overall.yaml`` (run-control keys) -> ``properties/model/<Model>.yaml`` -> ``properties/dataset/<dataset>.yaml`` ->
   ``properties/model/<Model>/<dataset>.yaml`` (most specific last; the plugin's model YAML therefore
   wins over RecBole's ``sequential.yaml`` - keep ``eval_args`` out of model YAMLs);
3. external: ``base_config_dict`` (the config stored in a checkpoint being resumed/evaluated) ->
   config files -> ``config_dict`` -> command line ``--key=value``.
"""

from recbole.config import Config as RecBoleConfig
from recbole.utils import ModelType

from recbole_timeplug.registry import get_model, model_config_files

# RecBole's default from overall.yaml, restored when a model YAML sets ``train_neg_sample_args: ~``
# for CE but the user switches to a pairwise loss without saying how to sample.
DEFAULT_TRAIN_NEG_SAMPLE_ARGS = {
    "distribution": "uniform",
    "sample_num": 1,
    "alpha": 1.0,
    "dynamic": False,
    "candidate_num": 0,
}


def needed_field_keys(model_class, final_config):
    """Config keys of the fields a run cannot do without: the model's ``needs_fields``, plus ``TIME_FIELD``
    when the data are ordered by time (RecBole's sequential data augmentation sorts each user's history by
    it, and ``eval_args.order: TO`` splits by it)."""
    keys = list(getattr(model_class, "needs_fields", ()))
    eval_args = final_config.get("eval_args") or {}
    ordered = getattr(model_class, "type", None) == ModelType.SEQUENTIAL or eval_args.get("order") == "TO"
    if ordered and "TIME_FIELD" not in keys and final_config.get("TIME_FIELD"):
        keys.append("TIME_FIELD")
    return keys


class Config(RecBoleConfig):
    """``recbole.config.Config`` resolving plugin models and loading the plugin's YAMLs.

    Args:
        model, dataset, config_file_list, config_dict: as in RecBole.
        base_config_dict (dict, optional): lowest-priority external settings (used to rebuild the
            configuration stored in a checkpoint; anything the user passes overrides it).
    """

    def __init__(
        self,
        model=None,
        dataset=None,
        config_file_list=None,
        config_dict=None,
        base_config_dict=None,
    ):
        self._base_config_dict = dict(base_config_dict or {})
        super().__init__(model, dataset, config_file_list, config_dict)

    @classmethod
    def _bare(cls):
        """An instance with nothing loaded, for the readers below (RecBole's loaders read no state)."""
        bare = cls.__new__(cls)
        bare._base_config_dict = {}
        return bare

    @classmethod
    def external_only(cls, config_file_list=None, config_dict=None):
        """The merged external settings (files < dict < command line) without building a full Config."""
        peek = cls._bare()
        peek.yaml_loader = peek._build_yaml_loader()
        peek.file_config_dict = peek._load_config_files(config_file_list)
        peek.variable_config_dict = peek._load_variable_config_dict(dict(config_dict or {}))
        peek.cmd_config_dict = peek._load_cmd_line()
        peek._merge_external_config_dict()
        return peek.external_config_dict

    @classmethod
    def command_line_settings(cls):
        """The ``--key=value`` settings in ``sys.argv``, converted as RecBole's Config converts them."""
        return cls._bare()._load_cmd_line()

    @classmethod
    def convert_values(cls, raw):
        """``{key: "text"}`` -> ``{key: value}`` as RecBole converts command-line values ("1e-3" -> 0.001)."""
        return cls._bare()._convert_config_dict(dict(raw))

    def _merge_external_config_dict(self):
        super()._merge_external_config_dict()
        if self._base_config_dict:
            merged = dict(self._base_config_dict)
            merged.update(self.external_config_dict)
            self.external_config_dict = merged

    def _get_model_and_dataset(self, model, dataset):
        if model is None:
            model = self.external_config_dict.get("model")
        if isinstance(model, str):
            model = get_model(model)  # plugin first, RecBole second, clear error otherwise
        return super()._get_model_and_dataset(model, dataset)

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        for path in model_config_files(model, dataset):
            self._update_internal_config_dict(path)

    def _add_needed_fields_to_load_col(self):
        """A model that needs e.g. the time field gets it loaded when the user did not set ``load_col``.

        RecBole's default ``load_col`` is ``{inter: [user_id, item_id]}`` for every dataset without its
        own YAML.  If the user set ``load_col`` (files, dict or command line) it is left alone and
        ``quick_start.check_required_fields`` names what is missing.
        """
        self.timeplug_notes = []
        load_col = self.final_config_dict.get("load_col")
        if "load_col" in self.external_config_dict or not isinstance(load_col, dict) or "inter" not in load_col:
            return
        inter = list(load_col.get("inter") or [])
        added = []
        for key in needed_field_keys(self.model_class, self.final_config_dict):
            field = self.final_config_dict.get(key)
            if field and field not in inter:
                inter.append(field)
                added.append(f"{field} (`{key}`)")
        if added:
            self.final_config_dict["load_col"] = dict(load_col, inter=inter)
            self.timeplug_notes.append(
                f"load_col: added {', '.join(added)}, which {self.model} needs, to the default load_col "
                f"(now inter: {inter}); set `load_col` yourself to choose the columns."
            )

    def _set_default_parameters(self):
        self._add_needed_fields_to_load_col()
        # RecBole rejects CE with negative sampling and its default samples one negative, so every CE
        # model (SASRec's default included) would need ``train_neg_sample_args: ~``.  Unless the user
        # set it explicitly, pick the value that matches the loss.
        if "train_neg_sample_args" not in self.external_config_dict:
            loss_type = self.final_config_dict.get("loss_type")
            current = self.final_config_dict.get("train_neg_sample_args")
            if loss_type == "CE":
                self.final_config_dict["train_neg_sample_args"] = None
            elif loss_type is not None and current in (None, "None"):
                self.final_config_dict["train_neg_sample_args"] = dict(DEFAULT_TRAIN_NEG_SAMPLE_ARGS)
        super()._set_default_parameters()
