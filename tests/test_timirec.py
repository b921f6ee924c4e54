"""TiMiRec (CIKM'22): extractor math against independent references, distillation, stage hand-over, CLI.

References used: ``torch.nn.TransformerEncoderLayer`` (post-LN, one head, output projection set to the
identity) for the extractor's Transformer layer; per-sequence GRU runs for the packed student encoder;
explicit ``[B, K, N]`` scores for "max over interests"; the KL formula written out by hand.
"""

import os
import re

import pytest
import torch
import torch.nn as nn

from conftest import cli_args, write_inter
from recbole_timeplug.checkpoint import load_checkpoint, save_checkpoint
from recbole_timeplug.config import Config
from recbole_timeplug.errors import CheckpointError
from recbole_timeplug.layers.interest import (
    InterestPredictor,
    InterestTransformerLayer,
    MultiInterestExtractor,
    distillation_loss,
    max_interest_scores,
    max_interest_scores_naive,
    reverse_positions,
    target_interest_logits,
)
from recbole_timeplug.model.sequential_recommender.timirec import TiMiRec, TiMiRecConfigError
from recbole_timeplug.quick_start import run_recbole

TINY = {"embedding_size": 16, "n_interests": 3, "MAX_ITEM_LIST_LENGTH": 10}


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("timirec")
    write_inter(str(root / "data" / "tiny" / "tiny.inter"), n_users=80, n_items=60, min_len=8, max_len=16)
    return root


def _config(data_dir, **extra):
    base = {
        "model": "TiMiRec",
        "dataset": "tiny",
        "data_path": str(data_dir / "data"),
        "checkpoint_dir": str(data_dir / "saved"),
        "state": "ERROR",
        "show_progress": False,
        "log_wandb": False,
        "epochs": 2,
        "train_batch_size": 128,
        "eval_batch_size": 1024,
        "learning_rate": 0.003,
        "metrics": ["Hit", "NDCG", "MRR"],
        "topk": [10],
        "valid_metric": "NDCG@10",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        **TINY,
    }
    base.update(extra)
    return base


@pytest.fixture(scope="module")
def built(data_dir):
    """``(config, train_dataset, one training batch)`` of the tiny dataset (built once), with the paper's BPR
    (one uniform negative per sample) so that the batch also holds negatives."""
    from recbole.data import create_dataset, data_preparation

    config = Config(config_dict=_config(data_dir, stage="pretrain", loss_type="BPR", train_neg_sample_args={
        "distribution": "uniform", "sample_num": 1}))
    dataset = create_dataset(config)
    train_data, _, _ = data_preparation(config, dataset)
    batch = next(iter(train_data))
    return config, train_data._dataset, batch


def _model(config, dataset, seed=0, **overrides):
    old = {k: config[k] for k in overrides}
    for k, v in overrides.items():
        config[k] = v
    try:
        torch.manual_seed(seed)
        return TiMiRec(config, dataset)
    finally:
        for k, v in old.items():
            config[k] = v


# ----------------------------------------------------------------------------------- extractor math
def test_reverse_positions_by_hand():
    lengths = torch.tensor([3, 1, 5])
    assert reverse_positions(lengths, 5).tolist() == [[3, 2, 1, 0, 0], [1, 0, 0, 0, 0], [5, 4, 3, 2, 1]]


def test_transformer_layer_matches_torch_encoder_layer():
    """One head, no output projection, key-padding mask, post-LN, d_ff = d == torch's layer with out_proj = I."""
    torch.manual_seed(0)
    d, L = 8, 6
    ours = InterestTransformerLayer(d)
    ref = nn.TransformerEncoderLayer(d, nhead=1, dim_feedforward=d, dropout=0.0, batch_first=True, norm_first=False)
    with torch.no_grad():
        qkv = (ours.q_linear, ours.k_linear, ours.v_linear)
        ref.self_attn.in_proj_weight.copy_(torch.cat([m.weight for m in qkv]))
        ref.self_attn.in_proj_bias.copy_(torch.cat([m.bias for m in qkv]))
        ref.self_attn.out_proj.weight.copy_(torch.eye(d))
        ref.self_attn.out_proj.bias.zero_()
        pairs = ((ref.linear1, ours.linear1), (ref.linear2, ours.linear2))
        for a, b in pairs + ((ref.norm1, ours.layer_norm1), (ref.norm2, ours.layer_norm2)):
            a.weight.copy_(b.weight)
            a.bias.copy_(b.bias)
    x = torch.randn(3, L, d)
    valid = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    ref.eval()
    expected = ref(x, src_key_padding_mask=~valid)
    got = ours(x, valid)
    assert torch.allclose(got[valid], expected[valid], atol=1e-5)


def test_extractor_matches_per_sequence_reference():
    """Interest vectors z_k = sum_j softmax_j(W2 tanh(W1 x_j)) x_j over the real items only, x = E + P[reverse pos]."""
    torch.manual_seed(1)
    n_items, d, K, L = 30, 8, 3, 7
    ext = MultiInterestExtractor(n_items, d, 4, K, L, add_pos=True, add_trm=False)
    seqs = [[5, 9, 2], [7], [1, 2, 3, 4, 5, 6, 7]]
    item_seq = torch.zeros(len(seqs), L, dtype=torch.long)
    for b, s in enumerate(seqs):
        item_seq[b, : len(s)] = torch.tensor(s)
    z = ext(item_seq, torch.tensor([len(s) for s in seqs]))
    for b, s in enumerate(seqs):
        n = len(s)
        x = torch.stack([ext.item_embedding.weight[i] + ext.position_embedding.weight[n - j] for j, i in enumerate(s)])
        a = ext.W2(torch.tanh(ext.W1(x)))  # [n, K]
        expected = torch.softmax(a, dim=0).t() @ x
        assert torch.allclose(z[b], expected, atol=1e-6)


def test_student_gru_takes_the_last_real_item():
    """The student's state is the GRU's after each history's last real item: against each history run alone
    (no padding), in float64, values and the gradients of every parameter; an empty history (length 0, never made
    by RecBole) reads its first slot; padding wider than every history does not change anything."""
    torch.manual_seed(2)
    pred = InterestPredictor(20, 6).double()
    seqs = [[3, 4, 5], [7], [1, 2, 3, 4, 5, 6], [], [9, 8]]
    item_seq = torch.zeros(len(seqs), 8, dtype=torch.long)  # two slots wider than the longest history
    for b, s in enumerate(seqs):
        item_seq[b, : len(s)] = torch.tensor(s, dtype=torch.long)
    lengths = torch.tensor([len(s) for s in seqs])
    got = pred(item_seq, lengths)
    weights = torch.randn_like(got)
    grads = torch.autograd.grad((got * weights).sum(), list(pred.parameters()))
    alone = []
    for b, s in enumerate(seqs):
        _, h = pred.gru(pred.item_embedding(torch.tensor(s or [0])).unsqueeze(0))
        alone.append(h[-1, 0])
    alone = torch.stack(alone)
    expected_grads = torch.autograd.grad((alone * weights).sum(), list(pred.parameters()))
    torch.testing.assert_close(got, alone, rtol=1e-12, atol=1e-12)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)
    assert got[1].ne(got[4]).all() and got[3].ne(0).any()  # rows really differ; the empty one is its first slot's state


# --------------------------------------------------------------------------------- scoring / routing
def test_max_over_interests_matches_naive():
    torch.manual_seed(3)
    interests, items = torch.randn(5, 4, 8), torch.randn(50, 8)
    explicit = torch.stack([torch.stack([(interests[b] @ items[c]).max() for c in range(50)]) for b in range(5)])
    for chunk in (None, 1, 7, 50, 64):  # default ceil(N/K), ragged last chunk, one chunk, chunk > N
        assert torch.allclose(max_interest_scores(interests, items, chunk), explicit, atol=1e-5)
    with torch.enable_grad():  # the differentiable path (no preallocated output)
        z = interests.clone().requires_grad_(True)
        scores = max_interest_scores(z, items, 7)
        assert torch.allclose(scores, explicit, atol=1e-5)
        scores.sum().backward()
        assert z.grad is not None
    assert torch.allclose(max_interest_scores_naive(interests, items), explicit, atol=1e-5)


def test_pretrain_full_sort_is_max_over_interests(built):
    config, dataset, batch = built
    model = _model(config, dataset).eval()
    assert model.phase == "pretrain" and not hasattr(model, "interest_predictor")
    with torch.no_grad():
        scores = model.full_sort_predict(batch)
        z = model.interest_extractor(batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN])
        explicit = torch.einsum("bkd,nd->bkn", z, model.interest_extractor.item_embedding.weight).amax(dim=1)
        assert torch.allclose(scores, explicit, atol=1e-6)
        # predict() (sampled-negative protocol) agrees with the full-sort row
        items = batch[model.ITEM_ID]
        assert torch.allclose(model.predict(batch), explicit[torch.arange(len(items)), items], atol=1e-6)


def test_pretrain_loss_routes_to_the_dot_product_argmax(built):
    config, dataset, batch = built
    model = _model(config, dataset)
    ext = model.interest_extractor
    z = ext(batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN])
    pos, neg = ext.item_embedding(batch[model.POS_ITEM_ID]), ext.item_embedding(batch[model.NEG_ITEM_ID])
    k = torch.einsum("bkd,bd->bk", z, pos).argmax(-1)
    u = z[torch.arange(len(k)), k]
    expected = -torch.log(1e-10 + torch.sigmoid((u * pos).sum(-1) - (u * neg).sum(-1))).mean()
    assert torch.allclose(model.calculate_loss(batch), expected, atol=1e-6)


def test_default_ce_loss_is_softmax_over_all_items_of_the_routed_interest(built):
    """The default loss_type CE: cross-entropy of z_k* . E^T (all items) against the target, by hand."""
    config, dataset, batch = built
    model = _model(config, dataset, loss_type="CE", train_neg_sample_args=None)
    ext = model.interest_extractor
    z = ext(batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN])
    pos = ext.item_embedding(batch[model.POS_ITEM_ID])
    u = z[torch.arange(len(z)), torch.einsum("bkd,bd->bk", z, pos).argmax(-1)]
    logits = u @ ext.item_embedding.weight.t()
    target = batch[model.POS_ITEM_ID]
    expected = (logits.logsumexp(-1) - logits[torch.arange(len(target)), target]).mean()
    assert torch.allclose(model.calculate_loss(batch), expected, atol=1e-5)
    from recbole_timeplug.registry import model_config_files

    defaults = [p for p in model_config_files("TiMiRec", "none") if p.endswith("TiMiRec.yaml")]
    assert "loss_type: CE" in open(defaults[0], encoding="utf-8").read()


def test_extractor_dropout_is_off_by_default_and_only_acts_in_training(built):
    """dropout_prob 0 (official): no random numbers drawn; > 0: train-mode interests vary, eval-mode ones equal
    the undropped model with the same weights."""
    config, dataset, batch = built
    seq, lens = batch[config["ITEM_ID_FIELD"] + config["LIST_SUFFIX"]], batch[config["ITEM_LIST_LENGTH_FIELD"]]
    plain = _model(config, dataset).train()
    state = torch.get_rng_state()
    plain.interest_extractor(seq, lens)
    assert torch.equal(torch.get_rng_state(), state)
    dropped = _model(config, dataset, dropout_prob=0.3).train()
    dropped.load_state_dict(plain.state_dict())
    a, b = dropped.interest_extractor(seq, lens), dropped.interest_extractor(seq, lens)
    assert (a - b).abs().max() > 1e-3
    with torch.no_grad():
        torch.testing.assert_close(dropped.eval().interest_extractor(seq, lens), plain.eval().interest_extractor(seq, lens))


def test_kl_term_is_zero_when_student_equals_teacher():
    torch.manual_seed(4)
    t = torch.randn(6, 4)
    for T in (0.1, 0.5, 1.0, 2.0):
        assert distillation_loss(t.clone(), t, T).abs().item() < 1e-6
    s = torch.randn(6, 4)
    p, q = torch.softmax(t / 0.5, -1), torch.softmax(s / 0.5, -1)
    by_hand = 0.25 * (p * (p.log() - q.log())).sum() / 6
    assert torch.allclose(distillation_loss(s, t, 0.5), by_hand, atol=1e-6) and by_hand > 0


def test_teacher_is_cosine_and_gets_no_gradient(built):
    config, dataset, batch = built
    model = _model(config, dataset, stage="finetune", require_pretrained=False)
    z, logits = model(batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN])
    target = model.interest_extractor.item_embedding(batch[model.POS_ITEM_ID])
    teacher = target_interest_logits(z, target)
    assert not teacher.requires_grad
    cos = (z / z.norm(dim=-1, keepdim=True) * (target / target.norm(dim=-1, keepdim=True)).unsqueeze(1)).sum(-1)
    assert torch.allclose(teacher, cos, atol=1e-6)

    rec, kl = model.calculate_loss(batch)
    kl.backward(retain_graph=True)  # the KL term alone: reaches the student only
    for name, p in model.named_parameters():
        if name.startswith("interest_extractor."):
            assert p.grad is None or p.grad.abs().max() == 0, name
    assert model.proj[-1].weight.grad.abs().max() > 0
    assert model.interest_predictor.gru.weight_hh_l0.grad.abs().max() > 0
    model.zero_grad(set_to_none=True)
    rec.backward()  # the recommendation loss trains the extractor too
    assert model.interest_extractor.W2.weight.grad.abs().max() > 0


# ----------------------------------------------------------------------------------- stage hand-over
def _save_pretrain(model, path, dataset="tiny", **config):
    return save_checkpoint(
        {"model": "TiMiRec", "dataset": dataset, "config": config, "epoch": 3, "state_dict": model.state_dict()}, path
    )


def test_finetune_loads_exactly_the_extractor_tensors(built, tmp_path):
    config, dataset, _ = built
    pre = _model(config, dataset, seed=10)
    path = _save_pretrain(pre, str(tmp_path / "pre.pth"))
    fresh = _model(config, dataset, seed=11, stage="finetune", require_pretrained=False)
    fine = _model(config, dataset, seed=11, stage="finetune", pretrained_path=path)

    pre_sd, fine_sd, fresh_sd = pre.state_dict(), fine.state_dict(), fresh.state_dict()
    extractor = sorted(k for k in fine_sd if k.startswith("interest_extractor."))
    assert sorted(pre_sd) == extractor  # the pretrain model holds the extractor only
    assert fine.pretrained_loaded == len(extractor) == 20  # E, P, W1, W2 (w, b), 12 Transformer tensors
    for k in fine_sd:
        expected = pre_sd[k] if k in pre_sd else fresh_sd[k]  # student: untouched initialisation
        assert torch.equal(fine_sd[k], expected), k
    assert any(k.startswith("interest_predictor.") for k in fine_sd) and any(k.startswith("proj.") for k in fine_sd)


def test_finetune_refuses_unusable_pretrained_files(built, tmp_path):
    config, dataset, _ = built
    with pytest.raises(CheckpointError, match=r"pretrained_path.*--stage=both.*require_pretrained=False"):
        _model(config, dataset, stage="finetune")
    with pytest.raises(CheckpointError, match="does not exist"):
        _model(config, dataset, stage="finetune", pretrained_path=str(tmp_path / "missing.pth"))

    other = _model(config, dataset, n_interests=2)
    path = _save_pretrain(other, str(tmp_path / "k2.pth"), n_interests=2)
    shapes = r"interest_extractor\.W2\.weight: file \(2, 8\), this model \(3, 8\)(.|\n)*n_interests: file 2, this run 3"
    with pytest.raises(CheckpointError, match=shapes):
        _model(config, dataset, stage="finetune", pretrained_path=path)

    no_trm = _model(config, dataset, add_trm=False)
    path = _save_pretrain(no_trm, str(tmp_path / "notrm.pth"))
    with pytest.raises(CheckpointError, match=r"missing in the file: \['interest_extractor\.transformer"):
        _model(config, dataset, stage="finetune", pretrained_path=path)

    empty = str(tmp_path / "empty.pth")
    save_checkpoint({"model": "TiMiRec", "dataset": "tiny", "state_dict": {"x": torch.zeros(1)}}, empty)
    with pytest.raises(CheckpointError, match="holds no `interest_extractor"):
        _model(config, dataset, stage="finetune", pretrained_path=empty)

    path = _save_pretrain(_model(config, dataset), str(tmp_path / "other.pth"), dataset="ml-100k")
    with pytest.raises(CheckpointError, match="trained on dataset 'ml-100k'"):
        _model(config, dataset, stage="finetune", pretrained_path=path)


def test_bad_config_values_name_the_key(built):
    config, dataset, _ = built
    bad = (("stage", "joint"), ("loss_type", "BCE"), ("n_interests", 0), ("temperature", 0.0), ("proj_layers", 0))
    for key, value in bad:
        with pytest.raises(TiMiRecConfigError, match=f"`{key}`"):
            _model(config, dataset, **{key: value})
    with pytest.raises(TiMiRecConfigError, match="pretrained_path"):
        _model(config, dataset, stage="both", pretrained_path="x.pth")


# ------------------------------------------------------------------------------------ end to end
def test_both_equals_two_commands_and_resumes_exactly(data_dir):
    """`stage: both` = `--stage=pretrain` then `--stage=finetune --pretrained_path=...`; resume / test-only work."""
    both = run_recbole(config_dict=_config(data_dir))
    stage1 = both["stages"]["pretrain"]
    assert stage1["best_model_file"].endswith("-pretrain.pth") and "test_result" in stage1
    assert sorted(load_checkpoint(stage1["best_model_file"])["state_dict"]) == sorted(
        k for k in load_checkpoint(both["saved_model_file"])["state_dict"] if k.startswith("interest_extractor.")
    )

    # the same two stages as two commands
    pre = run_recbole(config_dict=_config(data_dir, stage="pretrain"))
    assert pre["test_result"] == stage1["test_result"] and pre["best_valid_result"] == stage1["best_valid_result"]
    fine = run_recbole(config_dict=_config(data_dir, stage="finetune", pretrained_path=stage1["best_model_file"]))
    assert fine["test_result"] == both["test_result"]

    # stopped after one pretrain epoch, resumed from the stage-one file: continues into stage two, same numbers
    short = run_recbole(config_dict=_config(data_dir, epochs=1))
    resumed = run_recbole(
        config_dict={"checkpoint_path": short["stages"]["pretrain"]["last_model_file"], "epochs": 2, "state": "ERROR"}
    )
    assert resumed["stages"]["pretrain"]["test_result"] == stage1["test_result"]
    assert resumed["test_result"] == both["test_result"]

    # test-only on either stage's file: that stage's numbers
    files = ((stage1["best_model_file"], stage1["test_result"]), (both["saved_model_file"], both["test_result"]))
    for path, expected in files:
        only = run_recbole(config_dict={"checkpoint_path": path, "test_only": True, "state": "ERROR"})
        assert only["test_result"] == expected


def test_cli_stage_both_on_ml100k(cli_config, tmp_path, run_cli, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # one intra-op thread: on a busy 2-core CI box two threads thrash
    config = cli_config(
        "TiMiRec",
        train_batch_size=2048,
        eval_batch_size=4096,
        embedding_size=16,
        MAX_ITEM_LIST_LENGTH=20,
    )
    out = run_cli("run_recbole.py", *cli_args(config))
    text = out.stdout + out.stderr
    assert "TiMiRec stage 1/2: pretrain" in text and "TiMiRec stage 2/2: finetune" in text
    assert re.search(r"loaded 20 interest_extractor tensors from pretrained file '\S+-pretrain\.pth'", text)
    pretrain_test = re.search(r"stage 1/2 \(pretrain\) test result\s*: (\{[^}]*\})", text)
    final_test = re.search(r"test result\s*: (\{[^}]*\})\s*$", text, re.M)
    assert pretrain_test and final_test and "ndcg@10" in final_test.group(1)
    saved = sorted(os.listdir(tmp_path / "saved"))
    assert len([f for f in saved if f.endswith("-pretrain.pth")]) == 1 and len(saved) == 4, saved
