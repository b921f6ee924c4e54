"""A test-only plugin model that exercises the registry the way the package's models do."""

import torch
from recbole.model.abstract_recommender import SequentialRecommender
from torch import nn


class TimeGapProbe(SequentialRecommender):
    """Mean of item embeddings plus an embedding of the last log time gap; needs the time field."""

    needs_fields = ("TIME_FIELD",)

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.hidden_size = config["hidden_size"]
        self.time_seq = config["TIME_FIELD"] + config["LIST_SUFFIX"]
        self.item_embedding = nn.Embedding(self.n_items, self.hidden_size, padding_idx=0)
        self.gap_embedding = nn.Embedding(32, self.hidden_size)
        self.loss_fct = nn.CrossEntropyLoss()

    def forward(self, item_seq, item_seq_len, time_seq):
        mask = (item_seq > 0).unsqueeze(-1).float()
        mean = (self.item_embedding(item_seq) * mask).sum(1) / mask.sum(1).clamp(min=1)
        last = self.gather_indexes(time_seq.unsqueeze(-1), item_seq_len - 1).squeeze(-1)
        prev = self.gather_indexes(time_seq.unsqueeze(-1), (item_seq_len - 2).clamp(min=0)).squeeze(-1)
        bucket = torch.log1p((last - prev).clamp(min=0)).long().clamp(max=31)
        return mean + self.gap_embedding(bucket)

    def _user(self, interaction):
        return self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], interaction[self.time_seq])

    def calculate_loss(self, interaction):
        logits = self._user(interaction) @ self.item_embedding.weight.t()
        return self.loss_fct(logits, interaction[self.POS_ITEM_ID])

    def predict(self, interaction):
        return (self._user(interaction) * self.item_embedding(interaction[self.ITEM_ID])).sum(-1)

    def full_sort_predict(self, interaction):
        return self._user(interaction) @ self.item_embedding.weight.t()
