"""ARERec: leak-free neighbour index (vs a plain-Python reference and the raw data file), factored and
chunked scoring (vs the literal per-neighbour formulation), config errors, and an ml-100k CLI run with
test-only evaluation and resume."""

import collections
import copy
import re

import numpy as np
import pytest
import torch

from conftest import cli_args, printed, printed_metrics, write_inter
from recbole_timeplug.config import Config
from recbole_timeplug.errors import TimeplugError
from recbole_timeplug.layers.neighbor_index import NeighborIndex, naive_neighbors, training_interactions
from recbole_timeplug.registry import get_model

SMALL = {  # ARERec small enough for a 2-core CPU
    "model": "ARERec",
    "state": "ERROR",
    "show_progress": False,
    "embedding_size": 8,
    "region_size": 3,
    "n_heads": 2,
    "max_neighbors": 6,
    "neighbor_window": "earliest",  # the official window, whose factored paths most tests check; `recent` has its own
    "MAX_ITEM_LIST_LENGTH": 10,
    "user_history": False,  # the item side alone (the official model); the user side has its own tests
    "train_batch_size": 64,
    "eval_batch_size": 4096,
    "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
    "seed": 1,
}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Generated data (repeats and equal timestamps included) and its RecBole splits, built once."""
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    root = tmp_path_factory.mktemp("arerec")
    inter_file = write_inter(str(root / "data" / "tiny" / "tiny.inter"), n_users=40, n_items=30, min_len=6,
                             max_len=18, seed=3)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.argv", ["pytest"])
        config = Config(dataset="tiny", config_dict=dict(SMALL, data_path=str(root / "data")))
        init_seed(config["seed"], True)
        dataset = create_dataset(config)
        train, valid, test = data_preparation(config, dataset)
    return {"config": config, "dataset": dataset, "train": train, "valid": valid, "test": test, "file": inter_file}


def _model(small, **overrides):
    """An ARERec on the module's training split with ``overrides`` applied to the config (then restored)."""
    from recbole.utils import init_seed

    config = small["config"]
    saved = {key: config[key] for key in overrides}
    try:
        for key, value in overrides.items():
            config[key] = value
        init_seed(0, True)
        model = get_model("ARERec")(config, small["train"]._dataset)
    finally:
        for key, value in saved.items():
            config[key] = value
    # non-trivial weights everywhere (biases included), so that every term of the score matters
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model


def _raw_interactions(small):
    """(user, item, float32 time) of every line of the generated file, in RecBole's internal ids."""
    dataset = small["dataset"]
    rows = [line.split("\t") for line in open(small["file"], encoding="utf-8").read().splitlines()[1:]]
    users = dataset.token2id(dataset.uid_field, [r[0] for r in rows])
    items = dataset.token2id(dataset.iid_field, [r[1] for r in rows])
    times = np.asarray([float(r[2]) for r in rows], dtype=np.float32)
    return collections.Counter(zip(users.tolist(), items.tolist(), times.tolist()))


def _targets(data):
    feat = data._dataset.inter_feat
    return collections.Counter(
        zip(feat["user_id"].tolist(), feat["item_id"].tolist(), feat["timestamp"].numpy().astype(np.float32).tolist())
    )


# ------------------------------------------------------------------------------------ neighbour index
def test_index_holds_exactly_the_training_interactions(small):
    """Index edges + valid targets + test targets == every line of the data file (as multisets): no valid or
    test interaction is in the index, and no training interaction is missing."""
    model = _model(small)
    index = model.neighbor_index
    items = torch.repeat_interleave(torch.arange(index.n_items), index.item_ptr[1:] - index.item_ptr[:-1])
    edges = collections.Counter(
        zip(index.nbr_user.tolist(), items.tolist(), index.nbr_time.numpy().astype(np.float32).tolist())
    )
    valid, test = _targets(small["valid"]), _targets(small["test"])
    assert sum(valid.values()) == sum(test.values()) == small["dataset"].user_num - 1
    assert edges + valid + test == _raw_interactions(small)
    # nothing of the index is in the state_dict (checkpoints stay data-size free)
    assert not any(k.startswith("neighbor_index") for k in model.state_dict())


@pytest.mark.parametrize("window", ["earliest", "recent"])
@pytest.mark.parametrize("max_neighbors", [3, None])
@pytest.mark.parametrize("time_ref", ["target", "last_history"])
def test_lookup_matches_naive_reference_and_never_leaks(small, window, max_neighbors, time_ref):
    """For every training sample (target, its negative and a random item): the neighbours equal the plain-
    Python reference, are strictly earlier than t*, never the user, and only training interactions."""
    users, items, times = training_interactions(small["train"]._dataset)
    index = NeighborIndex(users, items, times, small["dataset"].item_num, max_neighbors, window)
    by_item = collections.defaultdict(list)
    for u, i, t in zip(users, items, times):
        by_item[int(i)].append((u, i, t))
    train_set = set(zip(users.tolist(), items.tolist(), times.tolist()))
    model = _model(small, time_ref=time_ref)
    gen = torch.Generator().manual_seed(0)
    checked = slots = 0
    for inter in small["train"]:
        user = inter["user_id"]
        t_star = model.query_time(inter)
        if time_ref == "last_history":  # independent: the latest time in the history list
            assert torch.equal(t_star, inter["timestamp_list"].max(dim=1).values)
        else:
            assert torch.equal(t_star, inter["timestamp"])
        cands = torch.stack(
            [inter["item_id"], inter["neg_item_id"], torch.randint(1, index.n_items, user.shape, generator=gen)], 1
        )
        nbr, lcu, edge = index.lookup(user, cands, t_star)
        assert torch.equal(nbr > 0, lcu > 0) and torch.equal(nbr > 0, edge >= 0)
        ptr = index.lcu_ptr.tolist()
        nbr_l, lcu_l, edge_l, time_l = nbr.tolist(), lcu.tolist(), edge.tolist(), index.nbr_time.tolist()
        for b, (u_b, t_b) in enumerate(zip(user.tolist(), t_star.tolist())):
            for c, j in enumerate(cands[b].tolist()):
                rows = by_item[j]
                expected = naive_neighbors([r[0] for r in rows], [r[1] for r in rows], np.array([r[2] for r in rows]),
                                           u_b, j, t_b, max_neighbors, window)
                got = [(s, n, time_l[e]) for s, (n, e) in enumerate(zip(nbr_l[b][c], edge_l[b][c])) if n > 0]
                assert got == [(s, n, float(t)) for s, n, t in expected]
                for (s, n, t), ell in zip(got, [x for x in lcu_l[b][c] if x > 0]):
                    assert t < t_b and n != u_b and (n, j, t) in train_set
                    assert 1 + ptr[j] <= ell < 1 + ptr[j + 1]
                slots += len(got)
            checked += cands.shape[1]
    assert checked > 1000 and slots > 1000  # the check really ran over many non-empty neighbour lists


def test_count_before_treats_equal_float32_times_as_not_before():
    users, items = np.array([1, 2, 3, 4]), np.array([5, 5, 5, 5])
    times = np.array([1_000_000_000, 1_000_000_010, 1_000_000_100, 1_000_000_200], dtype=np.float32)
    index = NeighborIndex(users, items, times, n_items=6, max_neighbors=None)
    # 1_000_000_010 and 1_000_000_000 are the same float32 (64-s grid): not strictly before
    query = torch.tensor([1_000_000_010.0, 1_000_000_300.0, 0.0], dtype=torch.float32)
    counts = index.count_before(torch.full((3, 1), 5), query)
    assert counts.flatten().tolist() == [0, 4, 0]
    nbr, _, _ = index.lookup(torch.tensor([9, 3, 9]), torch.full((3, 1), 5), query)
    assert nbr[1, 0].tolist() == [1, 2, 0, 4] and not nbr[0].any()  # self (user 3) leaves a hole


# ------------------------------------------------------------------------------------ scoring
@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"use_attention": False},
        {"masked_max": False, "cold_item_bias": False},
        # unlimited M: items differ in their number of LCUs, so full ranking cuts blocks narrower than W
        {"max_neighbors": None},
        {"max_neighbors": None, "masked_max": False, "eval_item_chunk": 5, "eval_user_chunk": 7},
        {"max_neighbors": None, "use_attention": False, "masked_max": False, "exclude_self": False},
    ],
    ids=["attention", "no-attention", "official-max", "unlimited", "unlimited-official-max-chunked",
         "unlimited-no-attention-official-max-with-self"],
)
def test_factored_and_block_scoring_equal_the_literal_formulation(small, overrides):
    model = _model(small, **overrides)
    if "max_neighbors" in overrides:  # some items have fewer LCUs than the widest: narrow blocks are exercised
        n_lcu = model.neighbor_index.lcu_ptr.diff()
        assert 0 < n_lcu[1:].min() < n_lcu.max() == model.neighbor_index.width
    inter = next(iter(small["train"]))
    user, t_star = inter["user_id"], model.query_time(inter)
    cands = torch.stack([inter["item_id"], inter["neg_item_id"]], 1)
    model.train()  # training path (keys gathered per neighbour, LCU tables over the whole table)
    torch.testing.assert_close(model._score_factored(user, cands, t_star), model._score_reference(user, cands, t_star))
    model.eval()
    batch = next(iter(small["test"]))[0]
    with torch.no_grad():
        fast = model.full_sort_predict(batch)  # per-LCU rating tables, blocks shared by rows
        u, t = batch["user_id"], model.query_time(batch)
        items = torch.arange(model.n_items).expand(u.shape[0], -1)
        literal = model._score_reference(u, items, t)
    torch.testing.assert_close(fast, literal)
    model.train()  # no dropout active: full ranking through forward(), attention logits from the user table
    with torch.no_grad():
        torch.testing.assert_close(model.full_sort_predict(batch), literal)
    assert fast.std() > 1e-3 and fast.unique().numel() > fast.shape[1]  # scores really differ between items


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"use_attention": False},
        {"max_neighbors": 3, "masked_max": False, "cold_item_bias": False},
        {"max_neighbors": None, "masked_max": False, "eval_item_chunk": 5, "eval_user_chunk": 7},
        {"max_neighbors": None, "use_attention": False, "exclude_self": False, "eval_item_chunk": 3},
    ],
    ids=["attention", "no-attention", "M3-official-max", "unlimited-official-max-chunked", "unlimited-no-attention-with-self"],
)
def test_recent_window_full_sort_equals_the_literal_formulation(small, overrides):
    """``neighbor_window: recent``: a slot's user changes with t*, so full ranking has its own path
    (``_full_sort_recent``); it must give every (user, item) the literal per-slot score."""
    model = _model(small, neighbor_window="recent", **overrides).eval()
    for split in ("valid", "test"):
        batch = next(iter(small[split]))[0]
        u, t = batch["user_id"], model.query_time(batch)
        items = torch.arange(model.n_items).expand(u.shape[0], -1)
        with torch.no_grad():
            literal = model._score_reference(u, items, t)
            fast = model.full_sort_predict(batch)
        torch.testing.assert_close(fast, literal)
        assert fast.std() > 1e-3 and fast.unique().numel() > fast.shape[1]
    # the windows really differ on this data: some slot holds another user than under `earliest`
    recent, _, _ = model.neighbor_index.lookup(u, items, t)
    earliest, _, _ = _model(small, neighbor_window="earliest", **overrides).neighbor_index.lookup(u, items, t)
    assert (recent > 0).any() and not torch.equal(recent, earliest)


@pytest.mark.parametrize(
    "table_floats, row_chunk, int32_limit",
    [(1, 3, 1 << 31), (200, 5, 1 << 31), (200, 5, 0)],
    ids=["one-item-blocks", "cut-blocks", "cut-blocks-int64-indices"],
)
def test_recent_window_full_sort_with_small_tables_and_row_chunks(small, table_floats, row_chunk, int32_limit):
    """``_full_sort_recent`` cuts item blocks to ``recent_table_floats`` floats of its (LCU, position) table and
    rows to ``recent_row_chunk``: blocks of one item (every block cut) and of a few items must still give the literal
    scores, and the cut must really happen on this data; so must its int64 indices (used where a chunk's flattened
    (row, user) logits would overflow int32)."""
    model = _model(small, neighbor_window="recent", max_neighbors=None, eval_item_chunk=7).eval()
    model.recent_table_floats, model.recent_row_chunk = table_floats, row_chunk
    model.recent_int32_limit = int32_limit
    batch = next(iter(small["test"]))[0]
    u, t = batch["user_id"], model.query_time(batch)
    items = torch.arange(model.n_items).expand(u.shape[0], -1)
    index = model.neighbor_index
    blocks = []  # (items, rows) of every block full ranking visits
    count_before = index.count_before

    def recording(block_items, query_time):
        blocks.append(tuple(block_items.shape[::-1]))  # block_items [b, C]
        return count_before(block_items, query_time)

    with torch.no_grad(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(index, "count_before", recording)
        fast = model.full_sort_predict(batch)
    with torch.no_grad():
        literal = model._score_reference(u, items, t)
    torch.testing.assert_close(fast, literal)
    assert fast.std() > 1e-3
    item_counts = {c for c, _ in blocks}
    assert max(b for _, b in blocks) == row_chunk < u.shape[0]
    assert max(item_counts) == 1 if table_floats == 1 else 1 < max(item_counts) < 7  # 7 = eval_item_chunk


def test_official_max_with_negative_ratings_keeps_the_padding_zero_in_narrow_blocks(small):
    """masked_max False: an item with fewer LCUs than W has padding slots, whose zero wins the max when every
    neighbour rating is negative; full ranking cuts such items' blocks narrower and must keep that zero."""
    model = _model(small, max_neighbors=None, use_attention=False, masked_max=False, eval_item_chunk=4)
    with torch.no_grad():  # p = K_IU x > 0 and q = K_UI e < 0: every neighbour rating is negative
        for p in (model.user_embedding.weight, model.lcu_item_user.weight, model.lcu_user_item.weight):
            p.abs_()
        model.item_embedding.weight.abs_().neg_()
    model.eval()
    batch = next(iter(small["test"]))[0]
    u, t = batch["user_id"], model.query_time(batch)
    items = torch.arange(model.n_items).expand(u.shape[0], -1)
    with torch.no_grad():
        literal = model._score_reference(u, items, t)
        torch.testing.assert_close(model.full_sort_predict(batch), literal)
        model.masked_max = True  # the zero really matters for some (user, item)
        assert not torch.allclose(model._score_reference(u, items, t), literal)


def test_chunked_full_sort_equals_unchunked(small):
    model = _model(small).eval()
    batch = next(iter(small["valid"]))[0]
    with torch.no_grad():
        model.eval_item_chunk, model.eval_user_chunk = None, None
        whole = model.full_sort_predict(batch)
        model.eval_item_chunk, model.eval_user_chunk = 7, 5
        chunked = model.full_sort_predict(batch)
    assert whole.shape == (len(batch), model.n_items)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-6)


def test_predict_equals_full_sort_column(small):
    """Sampled evaluation (uni100) scores a candidate exactly as full ranking does."""
    model = _model(small).eval()
    batch = next(iter(small["test"]))[0]
    items = torch.randint(1, model.n_items, (len(batch),), generator=torch.Generator().manual_seed(1))
    batch.update(type(batch)({"item_id": items}))
    with torch.no_grad():
        torch.testing.assert_close(model.predict(batch), model.full_sort_predict(batch)[torch.arange(len(batch)), items])


def _history_term_naive(model, user_seq, seq_len, item):
    """Steps 6-7 for one (history, candidate), written out position by position."""
    d, r = model.embedding_size, model.region_size
    e = model.item_embedding.weight
    pooled = None
    for m in range(int(seq_len)):
        h = int(user_seq[m])
        p = model.lcu_history.weight[h].view(r, d) @ e[h]
        q = model.lcu_history_candidate.weight[h].view(r, d) @ e[item]
        s = p * q
        pooled = s if pooled is None else torch.maximum(pooled, s)
    return float(model.fc_history.weight[0].detach() @ pooled.detach())


def test_user_history_adds_the_region_embedding_of_the_users_own_history(small):
    """user_history: the score is the item side plus steps 6-7 over the user's own items (naive loop), in
    training, sampled evaluation and chunked full ranking; the history's padding never counts."""
    plain = _model(small, user_history=False)
    model = _model(small, user_history=True)
    model.load_state_dict(plain.state_dict(), strict=False)  # same item side
    assert {"lcu_history.weight", "lcu_history_candidate.weight", "fc_history.weight"} == set(
        model.state_dict()) - set(plain.state_dict())
    inter = next(iter(small["train"]))
    seq, lens = inter["item_id_list"], inter["item_length"]
    assert (lens < seq.shape[1]).any()  # some histories are padded
    cands = torch.stack([inter["item_id"], inter["neg_item_id"]], 1)
    args = (inter["user_id"], cands, plain.query_time(inter))
    with torch.no_grad():
        got = model(*args, seq, lens) - plain(*args)
    want = torch.tensor([[_history_term_naive(model, seq[b], lens[b], int(cands[b, c])) for c in range(2)]
                         for b in range(len(cands))])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    loss = model.calculate_loss(inter)
    loss.backward()
    assert model.lcu_history_candidate.weight.grad.abs().sum() > 0
    model.eval()
    plain.eval()
    batch = next(iter(small["test"]))[0]
    with torch.no_grad():
        full = model.full_sort_predict(batch) - plain.full_sort_predict(batch)
        model.eval_user_chunk = 3  # blocks of rows in the history term too
        torch.testing.assert_close(model.full_sort_predict(batch) - plain.full_sort_predict(batch), full)
        for b in (0, len(batch) - 1):
            want = torch.tensor([_history_term_naive(model, batch["item_id_list"][b], batch["item_length"][b], j)
                                 for j in range(model.n_items)])
            torch.testing.assert_close(full[b], want, rtol=1e-5, atol=1e-6)
        items = torch.randint(1, model.n_items, (len(batch),), generator=torch.Generator().manual_seed(2))
        batch.update(type(batch)({"item_id": items}))
        torch.testing.assert_close(model.predict(batch), model.full_sort_predict(batch)[torch.arange(len(batch)), items])


def test_ssm_loss_is_the_softmax_over_the_positive_and_the_shared_negatives(small):
    """loss_type SSM: per row, -log softmax of the positive among itself and the batch's K negatives (those equal
    to the row's positive left out), each candidate scored on its own; averaged over rows."""
    model = _model(small, loss_type="SSM", train_neg_sample_args=None, ssm_negatives=6, user_history=True)
    inter = next(iter(small["train"]))
    pos = inter["item_id"]
    neg = torch.cat([pos[:2], torch.tensor([1, 2, 3, 4])])  # two rows meet their own positive among the negatives
    model._sample_negatives = lambda k, device: neg[:k]
    loss = model.calculate_loss(inter)
    t = model.query_time(inter)
    want = []
    with torch.no_grad():
        for b in range(len(pos)):
            cands = [int(pos[b])] + [int(n) for n in neg if int(n) != int(pos[b])]
            scores = model(inter["user_id"][b:b + 1], torch.tensor([cands]), t[b:b + 1],
                           inter["item_id_list"][b:b + 1], inter["item_length"][b:b + 1])[0]
            want.append(-torch.log_softmax(scores, 0)[0])
    torch.testing.assert_close(loss.detach(), torch.stack(want).mean(), rtol=1e-5, atol=1e-6)
    loss.backward()
    assert model.lcu_item_user.weight.grad.abs().sum() > 0 and model.lcu_history.weight.grad.abs().sum() > 0
    # the sampler itself: K real items (never the padding id 0)
    del model._sample_negatives
    drawn = model._sample_negatives(1000, pos.device)
    assert drawn.shape == (1000,) and drawn.min() >= 1 and drawn.max() < model.n_items
    with pytest.raises(TimeplugError, match="train_neg_sample_args"):
        _model(small, loss_type="SSM")  # RecBole's negatives are still on


def test_max_neighbors_beyond_longest_history_equals_unlimited(small):
    unlimited = _model(small, max_neighbors=None)
    longest = int((unlimited.neighbor_index.item_ptr[1:] - unlimited.neighbor_index.item_ptr[:-1]).max())
    assert longest > SMALL["max_neighbors"]  # otherwise the default would already be "unlimited"
    larger = _model(small, max_neighbors=longest + 5)
    larger.load_state_dict(unlimited.state_dict())  # same LCU table sizes
    inter = next(iter(small["train"]))
    for model in (unlimited, larger):
        model.train()
    torch.testing.assert_close(larger.calculate_loss(inter), unlimited.calculate_loss(inter), rtol=0, atol=0)
    batch = next(iter(small["test"]))[0]
    with torch.no_grad():
        a = unlimited.eval().full_sort_predict(batch)
        b = larger.eval().full_sort_predict(batch)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    limited = _model(small)  # and a real limit does change things (the comparison above can fail)
    assert limited.neighbor_index.num_lcu < unlimited.neighbor_index.num_lcu


def test_dropout_slots_switch_to_the_literal_path_and_regularisers_add_up(small):
    model = _model(small, dropout_probs=[0, 0, 0, 0.5, 0.5, 0, 0, 0, 0], reg_weights=[0.1, 0, 0, 0, 0.2])
    model.train()
    assert not model._factored_ok()
    expected = 0.1 * model.w_q.weight.pow(2).sum() + 0.2 * model.fc.weight.pow(2).sum()
    torch.testing.assert_close(model.reg_loss(), expected)
    model.eval()
    assert model._factored_ok()


# ------------------------------------------------------------------------------------ optimizer variants
def _steps(model, optimizer, batches):
    model.train()
    for inter in batches:
        optimizer.zero_grad(set_to_none=True)
        model.calculate_loss(inter).backward()
        optimizer.step()


def _batches(small, n):
    return [inter for _, inter in zip(range(n), small["train"])]


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_dense_adam_variant_gives_bitwise_the_updates_of_recboles_adam(small, weight_decay):
    """adam_variant dense: BufferedAdam, the very same numbers and state as RecBole's torch Adam."""
    from recbole_timeplug.model.sequential_recommender.arerec import BufferedAdam

    ours, recbole = _model(small, adam_variant="dense"), _model(small)
    batches = _batches(small, 3)
    ours_opt = ours.build_optimizer(0.01, weight_decay)
    assert isinstance(ours_opt, BufferedAdam)
    recbole_opt = torch.optim.Adam(recbole.parameters(), lr=0.01, weight_decay=weight_decay)
    _steps(ours, ours_opt, batches)
    _steps(recbole, recbole_opt, batches)
    ours_state, recbole_state = ours_opt.state_dict(), recbole_opt.state_dict()
    assert ours_state["param_groups"] == recbole_state["param_groups"]
    for key, value in recbole_state["state"].items():
        for name, tensor in value.items():
            assert torch.equal(ours_state["state"][key][name], tensor) and ours_state["state"][key][name].dtype == tensor.dtype
    # a state dict of torch's Adam (an older checkpoint) continues bitwise too
    ours_opt.load_state_dict(copy.deepcopy(recbole_state))
    _steps(ours, ours_opt, batches[:1])
    _steps(recbole, recbole_opt, batches[:1])
    for (name, a), b in zip(ours.named_parameters(), recbole.parameters()):
        assert torch.equal(a, b), name
    reference = _model(small)
    moved = any(not torch.equal(a, b) for a, b in zip(ours.parameters(), reference.parameters()))
    assert moved


def test_fused_adam_variant_is_adam_up_to_rounding(small):
    """adam_variant fused (the default). Compared on what the model computes: Adam turns rounding noise in directions without gradient (e.g. the key
    bias, which the softmax ignores) into lr-sized moves, so such parameters are not comparable element-wise."""
    ours, recbole = _model(small, adam_variant="fused"), _model(small)
    ours_opt, recbole_opt = ours.build_optimizer(0.01), torch.optim.Adam(recbole.parameters(), lr=0.01)
    for inter in _batches(small, 3):
        losses = []
        for model, opt in ((ours, ours_opt), (recbole, recbole_opt)):
            opt.zero_grad(set_to_none=True)
            loss = model.calculate_loss(inter)
            loss.backward()
            opt.step()
            losses.append(loss)
        torch.testing.assert_close(*losses)
    batch = next(iter(small["test"]))[0]
    with torch.no_grad():
        a, b = ours.eval().full_sort_predict(batch), recbole.eval().full_sort_predict(batch)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert not torch.equal(ours.lcu_item_user.weight, _model(small).lcu_item_user.weight)  # it did train


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_fused_variant_with_sparse_lcu_gradients_is_dense_fused_adam(small, weight_decay):
    """adam_variant fused: the LCU tables get sparse gradients, which DenseGradAdam writes into persistent dense
    buffers: the very same updates as torch's fused Adam over dense gradients (every row moves every step), also
    when a step's gradient is dense or zero_grad keeps the buffers."""
    from recbole_timeplug.model.sequential_recommender.arerec import DenseGradAdam

    ours, reference = _model(small, adam_variant="fused"), _model(small, adam_variant="dense")  # dense LCU gradients
    ours_opt = ours.build_optimizer(0.01, weight_decay)
    assert isinstance(ours_opt, DenseGradAdam) and ours.sparse_lcu_grad and not reference.sparse_lcu_grad
    reference_opt = torch.optim.Adam(reference.parameters(), lr=0.01, weight_decay=weight_decay, fused=True)
    full = _batches(small, 1)[0]
    # 4-row batches touch a few LCUs (sparse gradients); the whole batch uses the whole tables (dense gradients)
    batches = [full[0:4], full[4:8], full[8:12], full, full[12:16]]
    sparse = [True, True, False, False, True]
    ours.train(), reference.train()
    for step, inter in enumerate(batches):
        keep = step == 2  # zero_grad(set_to_none=False): the dense buffer stays param.grad, zeroed in place
        for model, opt in ((ours, ours_opt), (reference, reference_opt)):
            opt.zero_grad(set_to_none=not keep)
            model.calculate_loss(inter).backward()
            if model is ours:
                assert model.lcu_item_user.weight.grad.is_sparse == sparse[step], step
            opt.step()
        for (name, a), b in zip(ours.named_parameters(), reference.parameters()):
            assert torch.equal(a, b), (step, name)
    touched = ours_opt._dense_grads[id(ours.lcu_item_user.weight)][1]
    assert 0 < len(touched) < ours.lcu_item_user.weight.shape[0]  # sparse indeed: a few rows per batch
    assert ours_opt.state_dict()["state"].keys() == reference_opt.state_dict()["state"].keys()


def test_lazy_adam_variant_steps_only_the_touched_lcu_rows(small):
    """adam_variant lazy: sparse LCU gradients + SparseAdam.  Rows a batch does not touch stay put, unlike
    dense Adam, which keeps moving every row with non-zero moments."""
    lazy, dense = _model(small, adam_variant="lazy"), _model(small, adam_variant="dense")
    first, second = _batches(small, 2)
    lazy.train(), dense.train()
    torch.testing.assert_close(lazy.calculate_loss(first), dense.calculate_loss(first))  # same forward
    lazy_opt, dense_opt = lazy.build_optimizer(0.01), dense.build_optimizer(0.01)
    _steps(lazy, lazy_opt, [first])
    _steps(dense, dense_opt, [first])
    assert lazy.lcu_item_user.weight.grad.is_sparse and not dense.lcu_item_user.weight.grad.is_sparse
    before = lazy.lcu_item_user.weight.detach().clone()
    dense_before = dense.lcu_item_user.weight.detach().clone()
    _steps(lazy, lazy_opt, [second])
    _steps(dense, dense_opt, [second])
    touched = torch.zeros(before.shape[0], dtype=torch.bool)
    touched[lazy.lcu_item_user.weight.grad.coalesce().indices()[0]] = True
    assert touched.any() and not touched.all()
    after = lazy.lcu_item_user.weight.detach()
    assert torch.equal(after[~touched], before[~touched]) and not torch.equal(after[touched], before[touched])
    moved = dense.lcu_item_user.weight.detach() - dense_before
    assert moved[~touched].abs().max() > 1e-4  # dense Adam keeps moving rows touched only in step 1
    # one state dict for both optimizers (checkpoints, resume)
    state = lazy_opt.state_dict()
    fresh = lazy.build_optimizer(0.01)
    fresh.load_state_dict(state)
    assert fresh.state_dict()["sparse"]["state"].keys() == state["sparse"]["state"].keys()


def test_arerec_trainer_builds_the_adam_variant(small, tmp_path):
    from recbole_timeplug.model.sequential_recommender.arerec import OptimizerPair
    from recbole_timeplug.registry import get_trainer

    config = small["config"]
    saved = config["checkpoint_dir"]
    config["checkpoint_dir"] = str(tmp_path)
    try:
        for variant, kind in (("lazy", OptimizerPair), ("dense", torch.optim.Adam), (None, torch.optim.Adam)):
            if variant is None:  # the default: fused
                assert config["adam_variant"] == "fused"
                variant = "fused"
            model = _model(small, adam_variant=variant)
            trainer = get_trainer(config["MODEL_TYPE"], "ARERec")(config, model)
            assert isinstance(trainer.optimizer, kind)
            assert bool(trainer.optimizer.param_groups[0].get("fused")) == (variant == "fused") or variant == "lazy"
        config["learner"] = "sgd"  # another learner: RecBole's optimizer, whatever the (default) adam_variant
        trainer = get_trainer(config["MODEL_TYPE"], "ARERec")(config, _model(small))
        assert isinstance(trainer.optimizer, torch.optim.SGD)

    finally:
        config["checkpoint_dir"] = saved
        config["learner"] = "adam"


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("neighbor_window", "latest", "neighbor_window"),
        ("time_ref", "now", "time_ref"),
        ("max_neighbors", -2, "max_neighbors"),
        ("dropout_probs", [0.5], "dropout_probs"),
        ("reg_weights", [0, 0, -1, 0, 0], "reg_weights"),
        ("eval_item_chunk", 1.5, "eval_item_chunk"),
        ("loss_type", "CE", "loss_type"),
        ("adam_variant", "sparse", "adam_variant"),
    ],
)
def test_bad_config_values_name_the_key(small, key, value, match):
    with pytest.raises(TimeplugError, match=match):
        _model(small, **{key: value})


@pytest.mark.parametrize("key, value", [("weight_decay", 0.01), ("clip_grad_norm", {"max_norm": 5}), ("learner", "sgd")])
def test_lazy_adam_variant_rejects_what_sparse_adam_cannot_do(small, key, value):
    with pytest.raises(TimeplugError, match="adam_variant"):
        _model(small, adam_variant="lazy", **{key: value})


# ------------------------------------------------------------------------------------ end to end
@pytest.mark.parametrize("adam_variant, loss, batch", [("dense", "BPR", 128), ("fused", "BPR", 128), ("lazy", "BPR", 128),
                                                      ("fused", "SSM", 128), ("fused", "BPR", 32)])
def test_resume_is_exact_with_the_index_rebuilt_from_data(tiny_config, adam_variant, loss, batch):
    """The index is not in checkpoints: resuming rebuilds it from the data and continues exactly (also with the
    two optimizers of adam_variant lazy in one state dict, with SSM's own negatives drawn from torch's RNG, and
    with fused Adam's dense buffers of sparse gradients, which small batches use and checkpoints do not hold)."""
    from recbole_timeplug.quick_start import run_recbole

    config = dict(tiny_config, model="ARERec", embedding_size=8, region_size=3, max_neighbors=6, train_batch_size=batch,
                  adam_variant=adam_variant, loss_type=loss)
    if loss == "SSM":
        config["train_neg_sample_args"] = None
    whole = run_recbole(config_dict=dict(config, epochs=2))
    first = run_recbole(config_dict=dict(config, epochs=1))
    resumed = run_recbole(config_dict=dict(config, epochs=2, checkpoint_path=first["last_model_file"]))
    assert resumed["test_result"] == whole["test_result"]
    assert resumed["best_valid_result"] == whole["best_valid_result"]


def test_cli_trains_evaluates_and_reloads_on_ml100k(cli_config, tmp_path, run_cli):
    config = cli_config(
        "ARERec",
        embedding_size=16,
        region_size=4,
        n_heads=1,
        max_neighbors=10,
        MAX_ITEM_LIST_LENGTH=20,
        train_batch_size=4096,
        learning_rate=0.003,
    )
    out = run_cli("run_recbole.py", *cli_args(config))
    text = out.stdout + out.stderr
    test_line = printed(text, "test result")
    metrics = printed_metrics(text)
    assert set(metrics) == {"hit@10", "ndcg@10", "mrr@10"} and 0 < metrics["hit@10"] <= 1
    best = re.search(r"best checkpoint\s*: (\S+)", text).group(1)
    payload = torch.load(best, weights_only=True)
    assert not any(k.startswith("neighbor_index") for k in payload["state_dict"])

    # test-only: the index is rebuilt from the data, the metrics are those of the training run
    again = run_cli("run_recbole.py", f"--checkpoint_path={best}", "--test_only=True", "--state=INFO")
    assert printed(again.stdout + again.stderr, "test result") == test_line


def test_history_full_sort_table_path_equals_the_direct_product(small):
    """Full ranking's user side: the shared candidate-profile table (eval, no autograd) equals the literal per-row
    product, with several candidate blocks, padded histories and an empty history (its term is 0)."""
    model = _model(small, user_history=True).eval()
    batch = next(iter(small["test"]))[0]
    seq, lens = batch["item_id_list"].clone(), batch["item_length"].clone()
    assert (lens < seq.shape[1]).any()
    lens[0] = 0
    seq[0] = 0
    B, N = len(lens), model.n_items
    with torch.no_grad():
        direct = torch.zeros(B, N)
        model._history_full_sort_direct(seq, lens, direct, 4)
        model.history_table_floats = 5 * N * model.region_size  # blocks of 5 candidates, the last one shorter
        assert N % 5
        table = torch.zeros(B, N)
        model._history_full_sort(seq, lens, table, 4)
    assert torch.equal(direct[0], torch.zeros(N))
    torch.testing.assert_close(table, direct, rtol=1e-5, atol=1e-6)
    with torch.enable_grad():  # under autograd the direct form runs (gradients reach the history units)
        scores = torch.zeros(B, N)
        model._history_full_sort(seq, lens, scores, 4)
        scores.sum().backward()
    assert model.lcu_history_candidate.weight.grad.abs().sum() > 0
    torch.testing.assert_close(scores.detach(), direct, rtol=1e-5, atol=1e-6)
