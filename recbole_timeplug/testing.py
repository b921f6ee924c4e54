"""Test scaffolding (as ``torch.testing``): build a sequential model on random tensors, without a RecBole
dataset, for unit tests and micro-benchmarks.

A RecBole sequential model reads a few field names from its Config and the item count from its dataset;
``standalone_config`` supplies RecBole's default field names plus the given values (missing keys read as
None, as in RecBole's Config), and ``ItemCountDataset`` answers ``dataset.num(ITEM_ID_FIELD)``.
"""

SEQUENTIAL_FIELDS = {
    "USER_ID_FIELD": "user_id",
    "ITEM_ID_FIELD": "item_id",
    "TIME_FIELD": "timestamp",
    "LIST_SUFFIX": "_list",
    "ITEM_LIST_LENGTH_FIELD": "item_length",
    "NEG_PREFIX": "neg_",
}


class StandaloneConfig(dict):
    """A dict read like RecBole's Config: ``config[key]`` is None for a missing key."""

    def __getitem__(self, key):
        return self.get(key)


class ItemCountDataset:
    """What a sequential model asks its dataset at construction: the number of ids of a field.

    ``num(field)`` is ``n_users`` for the user field (``USER_ID_FIELD``, default ``user_id``) when given,
    else ``n_items``.
    """

    def __init__(self, n_items, n_users=None, user_field=SEQUENTIAL_FIELDS["USER_ID_FIELD"]):
        self.n_items, self.n_users, self.user_field = n_items, n_users, user_field

    def num(self, field):
        return self.n_users if self.n_users is not None and field == self.user_field else self.n_items


def standalone_config(**values):
    """RecBole's default sequential field names, overridden and extended by ``values``."""
    return StandaloneConfig({**SEQUENTIAL_FIELDS, **values})


def yaml_defaults(path):
    """A YAML of defaults as a dict, with ``1e-12``-style numbers read as floats (PyYAML's YAML 1.1 reads
    them as strings; RecBole's own loader does not)."""
    import yaml

    with open(path, encoding="utf-8") as f:
        values = yaml.safe_load(f) or {}
    for key, value in values.items():
        if isinstance(value, str):
            try:
                values[key] = float(value)
            except ValueError:
                pass
    return values
