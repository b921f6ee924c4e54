"""Leak-free, time-ordered item-neighbour lookup for ARERec (``docs/models.md`` §5.4).

ARERec scores a candidate item j for user u from j's *neighbours*: the users who interacted with j.  The
official code lists them from all data (future and test interactions included, u itself included), which
in a next-item setting hands the model its answer.  :class:`NeighborIndex` answers the leak-free question

    N_{t*}(j) \\ {u} = users who interacted with j strictly before the query time t*, other than u,

from the **training split only**, for whole tensors of (user, candidate, t*) at once.

Data.  RecBole gives a model ``train_data._dataset``: the augmented sequential samples whose targets are
training interactions (with ``LS: valid_and_test`` the last two samples of each user — valid and test —
are *not* in it).  The raw training interactions (u, i, t) are every sample's target plus, from the
sample with ``item_length == 1``, the user's first interaction ``(u, item_id_list[0], time_list[0])``
(the trick ``SequentialDataset.inter_matrix`` uses).  Other users' valid/test interactions never enter.

Layout (built once, vectorised, numpy/torch only).  Times are replaced by dense ranks on the grid of
distinct training times, kept in the dataset's own dtype (RecBole stores timestamps as float32, so two
float32-equal times are *equal*, i.e. not "before").  Edges are sorted by (item, time rank, user) into CSR
arrays ``item_ptr[n_items+1]``, ``nbr_user[E]`` with the composite key ``kappa = item * (T+1) + rank``.
For a query (j, t*): ``q = #grid times < t*`` (``searchsorted`` left) and the number of j's edges strictly
before t* is ``c = searchsorted(kappa, j*(T+1)+q, left) - item_ptr[j]``.

Windows (``neighbor_window``), width ``W = min(max_neighbors, longest item history)``:

* ``earliest`` (official): positions p = 0..W-1 of j's time-ordered training history, kept if p < c.
  Local-context-unit (LCU) id ``1 + lcu_ptr[j] + p`` — one LCU per (item, position), as in the official
  code, so each LCU id always belongs to the same edge and therefore the same user.
* ``recent``: the last W edges before t*, slot s = 0 for the most recent; LCU id ``1 + lcu_ptr[j] + s``.

``lcu_ptr`` is the exclusive cumulative sum of ``min(n_j, M)`` (n_j = j's training history length), so the
LCU table has ``1 + sum_j min(n_j, M)`` rows, row 0 = padding.  With ``exclude_self`` every slot whose
user is the querying user is masked (it leaves a hole rather than pulling in a (W+1)-th neighbour, so
that the slot -> LCU mapping stays the official one).

The index holds only non-persistent buffers: checkpoints do not carry it (their size does not grow with
the data), and it is rebuilt deterministically from the same training split on load.
:func:`naive_neighbors` is the plain-Python reference the tests compare against.
"""

import numpy as np
import torch
from torch import nn

from recbole_timeplug.errors import TimeplugError

WINDOWS = ("earliest", "recent")


def training_interactions(dataset):
    """``(users, items, times)`` numpy arrays of the raw interactions behind a sequential *training* split.

    ``dataset`` is what a RecBole model receives (``train_data._dataset``): targets of the augmented
    samples, plus each user's first interaction taken from its ``item_length == 1`` sample.
    """
    config = dataset.config
    uid, iid, tfield = dataset.uid_field, dataset.iid_field, dataset.time_field
    if not tfield or tfield not in dataset.inter_feat:
        raise TimeplugError(
            f"ARERec's neighbour index needs the time field `{config['TIME_FIELD']}` in the interactions: add "
            f"it to `load_col` (e.g. load_col: {{inter: [{uid}, {iid}, {config['TIME_FIELD']}]}})."
        )
    suffix = config["LIST_SUFFIX"]
    item_list, time_list = iid + suffix, tfield + suffix
    length_field = config["ITEM_LIST_LENGTH_FIELD"]
    feat = dataset.inter_feat
    for field in (item_list, time_list, length_field):
        if field not in feat:
            raise TimeplugError(
                f"ARERec expects a sequential dataset with `{field}` (RecBole builds it by data augmentation "
                f"from `{tfield}`); got fields {sorted(feat.columns)}."
            )
    first = feat[length_field] == 1
    users = torch.cat([feat[uid], feat[uid][first]])
    items = torch.cat([feat[iid], feat[item_list][first, 0]])
    times = torch.cat([feat[tfield], feat[time_list][first, 0]])
    return users.numpy(), items.numpy(), times.numpy()


class NeighborIndex(nn.Module):
    """Vectorised ``N_{t*}(j) \\ {u}`` lookup over the training interactions (see module docstring).

    Args:
        users, items, times: 1-D arrays of the training interactions (ids already remapped by RecBole).
        n_items: size of the item id space (``dataset.item_num``).
        max_neighbors: M, the most neighbours per (item, query); ``None`` or 0 = unlimited.
        window: ``"earliest"`` or ``"recent"``.
        exclude_self: mask neighbours equal to the querying user.
    """

    def __init__(self, users, items, times, n_items, max_neighbors=50, window="earliest", exclude_self=True):
        super().__init__()
        if window not in WINDOWS:
            raise TimeplugError(f"`neighbor_window` must be one of {WINDOWS}, got {window!r}.")
        if max_neighbors is not None and (int(max_neighbors) != max_neighbors or max_neighbors < 0):
            raise TimeplugError(
                f"`max_neighbors` must be a positive integer, or ~ / 0 for no limit; got {max_neighbors!r}."
            )
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        times = np.asarray(times)
        self.window = window
        self.exclude_self = bool(exclude_self)
        self.n_items = int(n_items)

        grid = np.unique(times)  # sorted distinct training times, in the dataset's dtype
        rank = np.searchsorted(grid, times, side="left").astype(np.int64)
        order = np.lexsort((users, rank, items))  # by item, then time, then user (deterministic ties)
        items, rank, users = items[order], rank[order], users[order]
        counts = np.bincount(items, minlength=self.n_items).astype(np.int64)
        item_ptr = np.zeros(self.n_items + 1, dtype=np.int64)
        np.cumsum(counts, out=item_ptr[1:])
        longest = int(counts.max()) if counts.size else 0
        limit = longest if not max_neighbors else min(int(max_neighbors), longest)
        self.max_neighbors = None if not max_neighbors else int(max_neighbors)
        self.width = max(limit, 1)  # W: tensors are never wider than the longest history
        lcu_count = np.minimum(counts, limit)
        lcu_ptr = np.zeros(self.n_items + 1, dtype=np.int64)
        np.cumsum(lcu_count, out=lcu_ptr[1:])
        self.num_lcu = int(lcu_ptr[-1]) + 1  # + padding row 0
        self.num_edges = int(items.size)
        self.stride = int(grid.size) + 1

        # For the `earliest` window LCU 1 + lcu_ptr[j] + p is edge item_ptr[j] + p: its user and item are
        # fixed, which lets ARERec precompute per-LCU products once per forward (ARERec._lcu_tables).
        lcu_item = np.repeat(np.arange(self.n_items, dtype=np.int64), lcu_count)
        pos = np.arange(lcu_item.size, dtype=np.int64) - lcu_ptr[lcu_item]
        lcu_user = users[item_ptr[lcu_item] + pos] if window == "earliest" else np.zeros_like(pos)

        def buf(name, array):
            self.register_buffer(name, torch.as_tensor(np.ascontiguousarray(array)), persistent=False)

        buf("time_grid", grid)
        buf("keys", items * self.stride + rank)
        buf("item_ptr", item_ptr)
        buf("lcu_ptr", lcu_ptr)
        buf("nbr_user", users)
        buf("nbr_time", grid[rank] if rank.size else grid[:0])
        buf("lcu_item", np.concatenate([[0], lcu_item]))  # indexed by LCU id (row 0 = padding)
        buf("lcu_user", np.concatenate([[0], lcu_user]))

    @classmethod
    def from_dataset(cls, dataset, max_neighbors=50, window="earliest", exclude_self=True):
        users, items, times = training_interactions(dataset)
        return cls(users, items, times, dataset.item_num, max_neighbors, window, exclude_self)

    def extra_repr(self):
        return (
            f"edges={self.num_edges}, items={self.n_items}, width={self.width}, lcus={self.num_lcu}, "
            f"window={self.window}, exclude_self={self.exclude_self}"
        )

    def count_before(self, items, query_time):
        """c(j, t*) = number of item j's training interactions with time strictly before t*.

        ``items``: LongTensor [B, C]; ``query_time``: [B] (any float dtype; compared in the grid's dtype).
        """
        q = torch.searchsorted(self.time_grid, query_time.to(self.time_grid.dtype).contiguous(), right=False)
        key = items * self.stride + q.unsqueeze(-1)
        return torch.searchsorted(self.keys, key.contiguous(), right=False) - self.item_ptr[items]

    def edge_users(self, start, pos, valid, query_users):
        """The neighbour users of edges ``start + pos`` (``start`` = ``item_ptr`` of each slot's item, all
        broadcastable) where ``valid``, and ``valid`` with the querying users ``query_users`` dropped when
        ``exclude_self`` (their slots become holes).  Returns ``(user, edge, valid)``; ``user`` is arbitrary
        where ``valid`` is False."""
        edge = start + pos
        if self.num_edges == 0:
            return torch.zeros_like(edge), edge, torch.zeros_like(valid)
        user = self.nbr_user[edge.clamp(0, self.num_edges - 1)]
        if self.exclude_self:
            valid = valid & (user != query_users)
        return user, edge, valid

    def lookup(self, users, items, query_time):
        """Neighbours of every (user, candidate) pair.

        Args:
            users: LongTensor [B]; items: LongTensor [B, C]; query_time: [B].

        Returns:
            ``(nbr, lcu, edge)``, each LongTensor [B, C, W]: neighbour user ids (0 = empty slot), LCU ids
            (0 = empty), and the index of the neighbour's interaction in ``nbr_user``/``nbr_time`` (-1 = empty).
        """
        count = self.count_before(items, query_time).unsqueeze(-1)  # [B, C, 1]
        start = self.item_ptr[items].unsqueeze(-1)
        slot = torch.arange(self.width, device=items.device)
        if self.window == "earliest":
            pos = slot.expand(*count.shape[:-1], self.width)
            valid = pos < count
        else:  # recent: slot 0 = most recent interaction strictly before t*
            pos = count - 1 - slot
            valid = pos >= 0
        user, edge, valid = self.edge_users(start, pos, valid, users.view(-1, 1, 1))
        lcu = 1 + self.lcu_ptr[items].unsqueeze(-1) + slot
        zero = torch.zeros((), dtype=torch.long, device=items.device)
        return (
            torch.where(valid, user, zero),
            torch.where(valid, lcu, zero),
            torch.where(valid, edge, zero - 1),
        )


def naive_neighbors(users, items, times, user, item, query_time, max_neighbors=None, window="earliest",
                    exclude_self=True):
    """Plain-Python reference: ``[(position/slot, neighbour user, time), ...]`` for one (user, item, t*).

    Positions follow the index's conventions: ``earliest`` -> position in the item's time-ordered history
    (ties by user id); ``recent`` -> 0 for the most recent interaction strictly before ``query_time``.
    Times are compared in the dtype of ``times``.
    """
    dtype = np.asarray(times).dtype.type
    query_time = dtype(query_time)
    history = sorted((dtype(t), int(u)) for u, i, t in zip(users, items, times) if int(i) == int(item))
    before = [(t, u) for t, u in history if t < query_time]
    limit = len(history) if not max_neighbors else min(max_neighbors, len(history))
    if window == "earliest":
        chosen = [(p, u, t) for p, (t, u) in enumerate(before) if p < limit]
    else:
        chosen = [(s, u, t) for s, (t, u) in enumerate(reversed(before)) if s < limit]
    if exclude_self:
        chosen = [c for c in chosen if c[1] != int(user)]
    return chosen
