"""benchmarks/results.py (accuracy table), benchmarks/synthetic.py (ML-1M-shaped data) and
benchmarks/efficiency.py (time/throughput/memory vs L), on generated data with tiny built-in models."""

import json
import os
import re
import statistics

import numpy as np
import pytest

from benchmarks import efficiency, results, synthetic
from conftest import write_inter

TINY = ["--set", "hidden_size=16", "--set", "inner_size=32", "--set", "n_layers=1", "--set", "n_heads=1",
        "--set", "MAX_ITEM_LIST_LENGTH=10", "--set", "train_batch_size=256", "--set", "state=ERROR",
        "--set", "GRU4Rec:embedding_size=16"]


def _table(md):
    """Rows of the first Markdown table as {model: [cells]}."""
    rows, started = {}, False
    for line in md.splitlines():
        if started and not line.startswith("|"):
            break  # the first table ended
        if line.startswith("| Model"):
            started = True
        elif started and line.startswith("| "):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0].split(" ")[0]] = cells
    return rows


def test_results_table_matches_the_runs(tmp_path):
    data = tmp_path / "data"
    write_inter(str(data / "tiny" / "tiny.inter"), n_users=60, n_items=40, min_len=8, max_len=14)
    user_yaml = tmp_path / "mine.yaml"
    user_yaml.write_text("attn_dropout_prob: 0.1\nepochs: 1\n")
    out = tmp_path / "out"
    records = results.main(["--dataset", "tiny", "--models", "SASRec,GRU4Rec,NoSuchModel", "--seeds", "1,2",
                            "--config_files", str(user_yaml), "--out", str(out),
                            "--set", f"data_path={data}", "--set", "GRU4Rec:epochs=2", *TINY])
    md = (out / "tiny.md").read_text()
    rows = _table(md)
    header = next(line for line in md.splitlines() if line.startswith("| Model"))
    columns = [c.strip() for c in header.strip("|").split("|")]

    # every cell is the mean ± std (ddof=1) of what the two runs returned
    for model in ("SASRec", "GRU4Rec"):
        runs = [r for r in records if r["model"] == model]
        assert [r["status"] for r in runs] == ["ok", "ok"] and [r["seed"] for r in runs] == [1, 2]
        for metric in results.METRICS:
            values = [r["test"][metric] for r in runs]
            cell = rows[model][columns.index(results.METRIC_LABELS[metric])].strip("▲▼").strip("*")
            assert cell == f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"
        assert rows[model][columns.index("params")] == f"{runs[0]['params']:,}"
    # epochs trained: 1 for SASRec (from the user's file), 2 for GRU4Rec (per-model --set wins over the file)
    assert [r["epochs"] for r in records if r["model"] == "SASRec"] == [1, 1]
    assert [r["epochs"] for r in records if r["model"] == "GRU4Rec"] == [2, 2]
    assert all(r["s_per_epoch"] > 0 and r["s_per_eval"] > 0 for r in records if r["status"] == "ok")
    # each run's learning curve: one point per epoch trained; its best validation score is the one RecBole's
    # early stopping kept (tracked apart from the curve), at the epoch it tested
    for r in (r for r in records if r["status"] == "ok"):
        assert [p["epoch"] for p in r["curve"]] == list(range(r["epochs"]))
        assert all(p["train_loss"] > 0 for p in r["curve"])
        valid = [p["valid"] for p in r["curve"]]
        assert max(valid) == pytest.approx(r["best_valid_score"]) and valid.index(max(valid)) == r["best_epoch"]

    # a failing model is a row with its error, the others still ran
    assert "**failed**" in rows["NoSuchModel"][1] and "Unknown model 'NoSuchModel'" in rows["NoSuchModel"][1]

    # config layering: common protocol < baseline/SASRec.yaml < user file < --set
    sas = next(r for r in records if r["model"] == "SASRec")["settings"]
    assert sas["hidden_dropout_prob"] == 0.2  # baseline/SASRec.yaml (RecBole's default is 0.5)
    assert sas["attn_dropout_prob"] == 0.1  # the user's file beats the baseline's 0.2
    assert sas["hidden_size"] == 16 and sas["MAX_ITEM_LIST_LENGTH"] == 10  # --set
    assert sas["eval_args"]["order"] == "TO" and sas["valid_metric"] == "NDCG@10"  # common protocol
    assert "| `hidden_dropout_prob` | `0.2` |" in md

    saved = json.loads((out / "tiny.json").read_text())
    assert [r["model"] for r in saved["records"]] == ["SASRec"] * 2 + ["GRU4Rec"] * 2 + ["NoSuchModel"] * 2
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not (out / "tiny.png").exists() and "![" not in md
    else:
        assert (out / "tiny.png").stat().st_size > 0 and "![test metrics on tiny](tiny.png)" in md
        assert (out / "tiny_curves.png").stat().st_size > 0 and "(tiny_curves.png)" in md


def test_results_append_grows_one_table(tmp_path):
    data = tmp_path / "data"
    write_inter(str(data / "tiny" / "tiny.inter"), n_users=40, n_items=30, min_len=8, max_len=12)
    out = tmp_path / "out"
    common = ["--dataset", "tiny", "--seeds", "3", "--out", str(out), "--set", f"data_path={data}",
              "--set", "epochs=1", "--no_plot", *TINY]
    first = results.main(["--models", "SASRec", *common])
    second = results.main(["--models", "GRU4Rec", "--append", *common])
    md = (out / "tiny.md").read_text()
    rows = _table(md)
    header = next(line for line in md.splitlines() if line.startswith("| Model"))
    ndcg = [c.strip() for c in header.strip("|").split("|")].index("NDCG@10")
    # both rows, each with the numbers its own run returned, and both commands named
    assert list(rows) == ["SASRec", "GRU4Rec"]
    for model, records in (("SASRec", first), ("GRU4Rec", second)):
        assert rows[model][ndcg].strip("▲▼").strip("*") == f"{records[0]['test']['ndcg@10']:.4f}"
    assert md.count("python benchmarks/results.py") == 2 and "--models GRU4Rec" in md and "--append" in md
    # an interrupted table resumes: runs it has are kept, not repeated; a new seed of the same settings is added
    grown = results.main(["--models", "SASRec", "--append", *common[:2], "--seeds", "3,4", *common[4:]])
    assert [r["seed"] for r in grown] == [4]
    saved = json.loads((out / "tiny.json").read_text())
    assert [(r["model"], r["seed"]) for r in saved["records"]] == [("SASRec", 3), ("GRU4Rec", 3), ("SASRec", 4)]
    # the SASRec row: two seeds, made by the first and the third command of the "Made by" list
    assert _table((out / "tiny.md").read_text())["SASRec"][-2:] == ["2", "1, 3"]
    assert "\n3. `python benchmarks/results.py --dataset tiny --models SASRec" in (out / "tiny.md").read_text()
    # each run's per-user test metrics are saved beside the table; their mean is the run's test metric
    for record in saved["records"]:
        per_user = json.loads((out / record["per_user_file"]).read_text())
        assert per_user["seed"] == record["seed"] and len(per_user["users"]) == 40
        assert round(float(np.mean(per_user["metrics"]["ndcg@10"])), 4) == pytest.approx(record["test"]["ndcg@10"])
    # --rerun trains a kept run again; other settings replace the model's old runs (one row, one configuration)
    assert [r["seed"] for r in results.main(["--models", "SASRec", "--append", "--rerun", *common])] == [3]
    again = results.main(["--models", "SASRec", "--append", *common[:2], "--seeds", "4", *common[4:],
                          "--set", "SASRec:learning_rate=0.01"])
    saved = json.loads((out / "tiny.json").read_text())
    assert [(r["model"], r["seed"]) for r in saved["records"]] == [("GRU4Rec", 3), ("SASRec", 4)]
    assert saved["records"][1]["config_dict"]["learning_rate"] == 0.01
    # (and drops the commands no row comes from any more)
    assert len(saved["commands"]) == 2 and all("--append" in c["command"] for c in saved["commands"])
    md = (out / "tiny.md").read_text()
    assert _table(md)["SASRec"][ndcg].strip("▲▼").strip("*") == f"{again[0]['test']['ndcg@10']:.4f}"
    # --render trains nothing: same records, rows in the order asked for, runs cut by the epoch cap marked †
    before = (out / "tiny.json").read_text()
    assert results.main(["--dataset", "tiny", "--out", str(out), "--render", "--models", "SASRec", "--no_plot"])
    md = (out / "tiny.md").read_text()
    assert list(_table(md)) == ["SASRec", "GRU4Rec"] and json.loads(before) == json.loads((out / "tiny.json").read_text())
    assert _table(md)["SASRec"][ndcg].strip("▲▼").strip("*") == f"{again[0]['test']['ndcg@10']:.4f}"
    epochs_col = [c.strip() for c in header.strip("|").split("|")].index("epochs")
    assert _table(md)["GRU4Rec"][epochs_col].startswith("1†") and "† stopped by the `epochs` cap" in md
    # an unreadable earlier table is a clear error that names it, and is left as it was
    (out / "tiny.json").write_text("{not json")
    with pytest.raises(SystemExit, match="tiny.json"):
        results.main(["--models", "GRU4Rec", "--append", *common])
    assert (out / "tiny.json").read_text() == "{not json"


def test_results_table_shows_earlier_stages(tmp_path):
    # a TiMiRec-like run: the final stage's record, with stage one's own numbers in "stages"
    test = {m: 0.01 * (i + 1) for i, m in enumerate(results.METRICS)}
    pre = {m: 0.001 * (i + 1) for i, m in enumerate(results.METRICS)}
    record = {"model": "TiMiRec", "class": "TiMiRec", "seed": 1, "config_files": [], "config_dict": {"seed": 1},
              "status": "ok", "test": test, "valid": None, "best_valid_score": 0.5, "params": 1000,
              "epochs": 3, "best_epoch": 2, "s_per_epoch": 1.5, "s_per_eval": 0.1, "settings": {"seed": 1},
              "stages": {"pretrain": {"test_result": pre, "best_valid_score": 0.25, "best_epoch": 1}}}
    records = [record] + results.stage_records(record)
    models = ["TiMiRec", "TiMiRec · pretrain"]
    env = {"date": "d", "device": "cpu", "python": "3", "torch": "2", "recbole": "1", "commit": "c"}
    path = tmp_path / "t.md"
    results.write_markdown(str(path), "t", [("cmd", env)], records, models, results.aggregate(records, models), None)
    md = path.read_text()
    line = next(x for x in md.splitlines() if x.startswith("| TiMiRec · pretrain |"))
    cells = [c.strip().strip("▲▼").strip("*") for c in line.strip("|").split("|")]
    assert cells[1:7] == [f"{pre[m]:.4f}" for m in results.METRICS]  # stage one's test metrics
    assert cells[7] == "0.2500" and cells[9] == "– (1)" and cells[10] == "–"  # no epochs/timings of its own
    assert "pretrain only = ComiRec+" in md and md.count("### TiMiRec") == 2


def test_results_resume_a_run_stopped_midway_from_its_checkpoint(tmp_path):
    from recbole_timeplug.quick_start import run_recbole

    data = tmp_path / "data"
    write_inter(str(data / "tiny" / "tiny.inter"), n_users=40, n_items=30, min_len=8, max_len=12)
    common = ["--dataset", "tiny", "--models", "SASRec", "--seeds", "3", "--no_plot", "--set", f"data_path={data}",
              "--set", "epochs=3", "--set", "stopping_step=10", *TINY]
    whole = results.main([*common, "--out", str(tmp_path / "whole")])[0]
    # the same run, stopped after its first epoch: what results.py would have left in --checkpoint_dir
    args = results.parse_args([*common, "--out", str(tmp_path / "out")])
    ckpt = tmp_path / "ckpt"
    config = {"seed": 3, "show_progress": False, "log_wandb": False, "checkpoint_dir": str(ckpt / "SASRec-seed3"),
              **args.global_set, "epochs": 1}
    run_recbole("SASRec", "tiny", config_file_list=results.config_files_for("SASRec", results.BASELINE_DIR, []),
                config_dict=config)
    resumed = results.main([*common, "--out", str(tmp_path / "out"), "--checkpoint_dir", str(ckpt)])[0]
    assert resumed["resumed_from"].endswith("-last.pth") and "checkpoint_path" not in resumed["config_dict"]
    assert resumed["epochs"] == whole["epochs"] == 3 and resumed["test"] == whole["test"]
    # the curve of the resumed run is the whole run's: the epoch before the stop comes from the checkpoint
    assert len(whole["curve"]) == 3 and resumed["curve"] == whole["curve"]
    assert results._run_key(resumed) == results._run_key(whole)
    # the same label and seed under other settings (another batch size) does not continue that run's files
    other = results.main([*common, "--set", "train_batch_size=64", "--out", str(tmp_path / "out"),
                          "--checkpoint_dir", str(ckpt)])[0]
    assert other.get("resumed_from") is None and other["epochs"] == 3
    assert other["config_dict"]["train_batch_size"] == 64 and other["test"] != whole["test"]


def test_results_import_tests_saved_weights_with_their_stage(tmp_path):
    from recbole_timeplug.quick_start import run_recbole

    data = tmp_path / "data"
    write_inter(str(data / "tiny" / "tiny.inter"), n_users=50, n_items=40, min_len=8, max_len=14)
    trained = run_recbole(config_dict={
        "model": "TiMiRec", "dataset": "tiny", "data_path": str(data), "checkpoint_dir": str(tmp_path / "saved"),
        "state": "ERROR", "show_progress": False, "log_wandb": False, "epochs": 1, "train_batch_size": 128,
        "topk": [10, 20], "load_col": {"inter": ["user_id", "item_id", "timestamp"]}, "seed": 7,
        "embedding_size": 16, "n_interests": 2, "MAX_ITEM_LIST_LENGTH": 10}, per_user=True)
    out = tmp_path / "out"
    records = results.main(["--dataset", "tiny", "--import", f"TiMiRec={trained['saved_model_file']}",
                            "--out", str(out), "--no_plot"])
    final, stage = records
    assert final["status"] == "ok" and final["seed"] == 7 and final["epochs"] == 1 and final["best_epoch"] == 0
    assert final["test"] == trained["test_result"] and final["imported_from"] == trained["saved_model_file"]
    # the learning curve is read from the checkpoints: the one epoch of each stage, validated at its best score
    assert [p["epoch"] for p in final["curve"]] == [0] and final["curve"][0]["valid"] == pytest.approx(
        trained["best_valid_score"])
    assert stage["curve"][0]["valid"] == pytest.approx(trained["stages"]["pretrain"]["best_valid_score"])
    assert stage["model"] == "TiMiRec · pretrain" and stage["test"] == trained["stages"]["pretrain"]["test_result"]
    for record, per_user in ((final, trained["test_per_user"]), (stage, trained["stages"]["pretrain"]["test_per_user"])):
        saved = json.loads((out / record["per_user_file"]).read_text())
        assert saved["users"] == per_user["user_id"]
        np.testing.assert_allclose(saved["metrics"]["ndcg@10"], per_user["ndcg@10"], atol=1e-7)
    md = (out / "tiny.md").read_text()
    assert "Imported from `" + os.path.basename(trained["saved_model_file"]) + "`" in md
    assert "no training times" in md and _table(md)["TiMiRec"][-4:-2] == ["–", "–"]  # s/epoch, s/eval
    with pytest.raises(SystemExit):
        results.parse_args(["--dataset", "tiny", "--import", "TiMiRec"])  # no checkpoint named
    # a file that is not a checkpoint: a failed row that says why, the table is still written
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    broken = results.main(["--dataset", "tiny", "--import", f"Broken={tmp_path / 'broken.pth'}", "--append",
                           "--out", str(out), "--no_plot"])[0]
    assert broken["status"] == "failed" and broken["error"]
    assert "**failed**" in _table((out / "tiny.md").read_text())["Broken"][1]


def _per_user_file(out, model, seed, ndcg):
    folder = out / "per_user" / "t"
    folder.mkdir(parents=True, exist_ok=True)
    users = [f"u{i}" for i in range(len(ndcg))]
    metrics = {m: list(map(float, ndcg)) for m in results.METRICS}
    (folder / f"{model}-{seed}.json").write_text(json.dumps({"model": model, "seed": seed, "users": users,
                                                             "metrics": metrics}))
    return os.path.join("per_user", "t", f"{model}-{seed}.json")


def test_results_significance_against_the_reference_and_pairs(tmp_path):
    from scipy.stats import wilcoxon

    rng = np.random.default_rng(0)
    base = [rng.random(300) for _ in range(2)]
    runs = {"SASRec": base,
            "Better": [b + 0.05 + rng.normal(0, 0.05, 300) for b in base],   # clearly above SASRec
            "Same": [b + rng.normal(0, 0.05, 300) for b in base],            # no systematic difference
            "Worse": [b - 0.05 + rng.normal(0, 0.05, 300) for b in base]}
    records = []
    for model, values in runs.items():
        for seed, ndcg in zip((1, 2), values):
            records.append({"model": model, "seed": seed, "status": "ok", "per_user_file":
                            _per_user_file(tmp_path, model, seed, ndcg)})
    models = list(runs)
    stats = results.significance(records, models, str(tmp_path), "SASRec", [("Better", "Same")])
    assert stats["markers"][("Better", "ndcg@10")] == "▲" and stats["markers"][("Worse", "hit@20")] == "▼"
    assert ("Same", "ndcg@10") not in stats["markers"]
    # pooled = each user's mean over the two seeds, paired with SASRec's; Holm over the three rows
    pooled = {m: (v[0] + v[1]) / 2 for m, v in runs.items()}
    raw = {m: wilcoxon(pooled[m], pooled["SASRec"]).pvalue for m in ("Better", "Same", "Worse")}
    ordered = sorted(raw, key=raw.get)
    holm, running = {}, 0.0
    for rank, m in enumerate(ordered):
        running = max(running, min(1.0, (3 - rank) * raw[m]))
        holm[m] = running
    for m in raw:
        test = stats["vs_reference"][m]["ndcg@10"]
        assert test["p"] == pytest.approx(raw[m]) and test["p_holm"] == pytest.approx(holm[m])
        assert test["diff"] == pytest.approx(float(np.mean(pooled[m] - pooled["SASRec"])))
        assert test["per_seed"][1] == pytest.approx(wilcoxon(runs[m][0], base[0]).pvalue)
    a, b, pair = stats["pairs"][0]
    assert (a, b) == ("Better", "Same") and pair["p"] == pytest.approx(wilcoxon(pooled["Better"], pooled["Same"]).pvalue)
    # the table: markers on the cells, the paired-test and ablation sections
    rows = [dict({m: (float(np.mean(pooled[model])), None) for m in results.METRICS}, model=model, n_ok=2,
                 n_runs=2, errors=[], valid=(None, None), params=(None, None), epochs=(2, None),
                 best_epoch=(1, None), s_per_epoch=(None, None), s_per_eval=(None, None), capped=False)
            for model in models]
    env = {"date": "d", "device": "cpu", "python": "3", "torch": "2", "recbole": "1", "commit": "c"}
    for r in records:
        r.update(settings=None, config_files=[], config_dict={})
    path = tmp_path / "t.md"
    results.write_markdown(str(path), "t", [("cmd", env)], records, models, rows, None, stats)
    md = path.read_text()
    assert _table(md)["Better"][2].endswith("▲") and _table(md)["Worse"][2].endswith("▼")
    assert not _table(md)["Same"][2].endswith(("▲", "▼"))
    assert "## Paired tests against SASRec" in md and "## Does the idea help" in md
    assert "| Better | Same |" in md


def test_results_significance_pairs_users_tested_several_times_once(tmp_path):
    """A split that tests a user several times (ARERec's 80/20 protocol) enters the paired tests once per user,
    with the mean of that user's cases, whatever order the cases are stored in."""
    from scipy.stats import wilcoxon

    rng = np.random.default_rng(1)
    n_users = 60
    cases = rng.integers(1, 6, n_users)  # 1-5 test cases per user
    users = [f"u{u}" for u in range(n_users) for _ in range(cases[u])]
    ref = rng.random(len(users))
    other = ref + rng.normal(0.02, 0.1, len(users))
    order = rng.permutation(len(users))  # the other model's file lists the same cases in another order
    folder = tmp_path / "per_user" / "t"
    folder.mkdir(parents=True)
    records = []
    for model, us, values in (("SASRec", users, ref), ("Other", [users[i] for i in order], other[order])):
        (folder / f"{model}.json").write_text(json.dumps({"model": model, "seed": 1, "users": us, "metrics": {
            m: list(map(float, values)) for m in results.METRICS}}))
        records.append({"model": model, "seed": 1, "status": "ok",
                        "per_user_file": os.path.join("per_user", "t", f"{model}.json")})
    test = results.significance(records, ["SASRec", "Other"], str(tmp_path))["vs_reference"]["Other"]["ndcg@10"]
    # by hand: each user's mean over their own cases, in the reference file's order
    mean_ref, mean_other, start = [], [], 0
    for u in range(n_users):
        mean_ref.append(ref[start:start + cases[u]].mean())
        mean_other.append(other[start:start + cases[u]].mean())
        start += cases[u]
    assert test["n_users"] == n_users
    assert test["diff"] == pytest.approx(float(np.mean(np.subtract(mean_other, mean_ref))))
    assert test["p"] == pytest.approx(wilcoxon(mean_other, mean_ref).pvalue)


def test_results_table_of_a_sampled_protocol_with_its_own_metrics(tmp_path):
    data = tmp_path / "data"
    write_inter(str(data / "tiny" / "tiny.inter"), n_users=40, n_items=60, min_len=8, max_len=12)
    out = tmp_path / "out"
    records = results.main(["--dataset", "tiny", "--models", "SASRec", "--seeds", "1", "--out", str(out), "--no_plot",
                            "--metrics", "hit@5,ndcg@5", "--set", f"data_path={data}", "--set", "epochs=1",
                            "--set", "topk=[5]", "--set", "metrics=['Hit','NDCG']", "--set", "valid_metric=NDCG@5",
                            "--set", "eval_args={'split': {'LS': 'valid_and_test'}, 'group_by': 'user', "
                                     "'order': 'TO', 'mode': 'uni50'}", *TINY])
    md = (out / "tiny.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| Model"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns[1:3] == ["Hit@5", "NDCG@5"] and "Hit@10" not in columns
    cells = _table(md)["SASRec"]
    assert cells[2].strip("*") == f"{records[0]['test']['ndcg@5']:.4f}"
    assert "uni50" in md
    with pytest.raises(SystemExit):
        results.parse_args(["--dataset", "x", "--models", "SASRec", "--metrics", "ndcg10"])


def test_results_bad_arguments(tmp_path):
    with pytest.raises(SystemExit):
        results.parse_args(["--dataset", "x", "--models", "SASRec", "--seeds", "a,b"])
    with pytest.raises(SystemExit):
        results.parse_args(["--dataset", "x", "--models", "SASRec", "--config_files", str(tmp_path / "none.yaml")])
    args = results.parse_args(["--dataset", "x", "--models", " SASRec , GRU4Rec ", "--set", "SASRec:n_layers=3",
                               "--set", "epochs=4"])
    assert args.models == ["SASRec", "GRU4Rec"]
    assert args.model_set == {"SASRec": {"n_layers": 3}} and args.global_set == {"epochs": 4}
    # a baseline YAML may name another class: SSD4Rec = TiM4Rec with is_time False, in its own row
    assert results.resolve_model("SSD4Rec", results.BASELINE_DIR) == ("TiM4Rec", "SSD4Rec")
    assert results.resolve_model("SASRec", results.BASELINE_DIR) == ("SASRec", "SASRec")


# ------------------------------------------------------------------------------------ synthetic
def test_results_refuses_a_preset_that_undoes_a_variant(tmp_path, capsys):
    """A user file (or a plain --set) wins over the baseline YAML, so a preset that sets the key a variant is
    made of would turn the variant back into its plain model. That is an error naming the file and the key;
    the label's own --set keeps the variant."""
    preset = tmp_path / "protocol.yaml"
    preset.write_text("time_span: 256\nlearning_rate: 0.001\n")
    with pytest.raises(SystemExit):
        results.parse_args(["--dataset", "x", "--models", "TiSASRec,TiSASRec-no-intervals",
                            "--config_files", str(preset)])
    err = capsys.readouterr().err
    assert "protocol.yaml sets time_span: 256" in err and "TiSASRec-no-intervals:time_span=0" in err
    with pytest.raises(SystemExit):
        results.parse_args(["--dataset", "x", "--models", "SSD4Rec", "--set", "is_time=True"])
    assert "--set sets is_time: True" in capsys.readouterr().err
    kept = results.parse_args(["--dataset", "x", "--models", "TiSASRec,TiSASRec-no-intervals", "--config_files",
                               str(preset), "--set", "TiSASRec-no-intervals:time_span=0"])
    assert kept.model_set == {"TiSASRec-no-intervals": {"time_span": 0}}
    # a plain model, or a variant whose key the files agree with, is not touched
    results.parse_args(["--dataset", "x", "--models", "TiSASRec,MASAN-softmax", "--config_files", str(preset),
                        "--set", "alpha_mode=softmax"])


def test_synthetic_shape_and_statistics():
    n_users, n_items, n = 300, 2000, 60_000
    users, items, times = synthetic.generate(n_users, n_items, n, min_len=20, seed=3)
    assert users.size == items.size == times.size == n
    lengths = np.bincount(users, minlength=n_users + 1)[1:]
    assert lengths.sum() == n and lengths.min() >= 20 and lengths.max() <= n_items
    assert 1.2 < lengths.mean() / np.median(lengths) < 2.5  # right-skewed like ML-1M (165 / 96)
    assert lengths.max() > 3 * lengths.mean()  # long histories exist
    assert items.min() >= 1 and items.max() <= n_items
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    for u in range(n_users):  # per user: distinct items, time never goes back
        seg = slice(starts[u], starts[u] + lengths[u])
        assert np.unique(items[seg]).size == lengths[u]
        assert np.all(np.diff(times[seg]) >= 0)
    counts = np.sort(np.bincount(items, minlength=n_items + 1)[1:])[::-1]
    assert counts[: n_items // 10].sum() > 0.2 * n  # popularity skew: top 10% of items > 20% of rows
    again = synthetic.generate(n_users, n_items, n, min_len=20, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((users, items, times), again))  # deterministic
    other = synthetic.generate(n_users, n_items, n, min_len=20, seed=4)
    assert not np.array_equal(items, other[1])
    with pytest.raises(ValueError, match="n_users\\*min_len"):
        synthetic.generate(100, 50, 1000, min_len=20)
    with pytest.raises(ValueError, match="distinct items"):
        synthetic.generate(10, 30, 1000, min_len=5)


def test_synthetic_cli_writes_atomic_file(tmp_path):
    path = synthetic.main(["--out", str(tmp_path), "--name", "syn", "--n_users", "50", "--n_items", "60",
                           "--n_interactions", "2000", "--min_len", "5"])
    lines = open(path).read().splitlines()
    assert lines[0] == "user_id:token\titem_id:token\ttimestamp:float" and len(lines) == 2001
    assert re.fullmatch(r"\d+\t\d+\t\d+", lines[1])


# ------------------------------------------------------------------------------------ efficiency
def test_efficiency_tiny_cpu(tmp_path):
    out = tmp_path / "eff"
    rows = efficiency.main(["--models", "GRU4Rec,SASRec,NoSuchModel", "--lengths", "8,16", "--batch_size", "4",
                            "--hidden_size", "8", "--steps", "2", "--warmup", "1", "--eval_batches", "2",
                            "--eval_batch_size", "4", "--n_users", "30", "--n_items", "50",
                            "--n_interactions", "600", "--data_path", str(tmp_path / "d"), "--out", str(out),
                            "--device", "cpu", "--set", "n_layers=1", "--set", "n_heads=1", "--set", "inner_size=16"])
    assert [(r["L"], r["model"]) for r in rows] == [(L, m) for L in (8, 16) for m in ("SASRec", "GRU4Rec", "NoSuchModel")]
    for r in rows:
        if r["model"] == "NoSuchModel":
            assert "Unknown model" in r["error"]
            continue
        assert "error" not in r, r
        assert r["train_ms"] > 0 and r["eval_users_s"] > 0 and r["peak_mb"] > 0
    sas = {r["L"]: r for r in rows if r["model"] == "SASRec"}
    assert all(s["train_x"] == 1.0 and s["eval_x"] == 1.0 and s["mem_x"] == 1.0 for s in sas.values())
    gru16 = next(r for r in rows if r["model"] == "GRU4Rec" and r["L"] == 16)
    assert gru16["train_x"] == pytest.approx(gru16["train_ms"] / sas[16]["train_ms"])
    # SASRec's attention scores grow as L^2: doubling L must raise the step's peak memory
    assert sas[16]["peak_mb"] > sas[8]["peak_mb"]
    md = (out / "efficiency.md").read_text()
    assert "| 16 | GRU4Rec |" in md and "**failed**: UnknownModelError" in md
    assert json.loads((out / "efficiency.json").read_text())["rows"][0]["model"] == "SASRec"
    # --render measures nothing and writes the same table from the JSON
    (out / "efficiency.md").write_text("stale")
    assert efficiency.main(["--render", "--out", str(out)]) == json.loads((out / "efficiency.json").read_text())["rows"]
    assert (out / "efficiency.md").read_text() == md


def test_efficiency_interleaves_the_timed_steps(tmp_path, monkeypatch):
    """All models of one L are warmed up, then timed one step each per round (the starting model rotating),
    then measured for memory: a load change during the run falls on every model alike."""
    calls = []
    step = efficiency._step

    def recording(model, optimizer, batch):
        calls.append(type(model).__name__)
        step(model, optimizer, batch)

    monkeypatch.setattr(efficiency, "_step", recording)
    efficiency.main(["--models", "GRU4Rec,SASRec", "--lengths", "8", "--batch_size", "4", "--hidden_size", "8",
                     "--steps", "3", "--warmup", "1", "--eval_batches", "1", "--eval_batch_size", "4",
                     "--n_users", "30", "--n_items", "50", "--n_interactions", "600", "--data_path",
                     str(tmp_path / "d"), "--out", str(tmp_path / "eff"), "--device", "cpu", "--no_plot",
                     "--set", "n_layers=1", "--set", "n_heads=1", "--set", "inner_size=16"])
    S, G = "SASRec", "GRU4Rec"
    assert calls == [S, G] + [S, G, G, S, S, G] + [S, G]  # warm-up, three timed rounds, memory


def test_cpu_peak_memory_matches_a_hand_count():
    """One step of a bias-free linear layer with a known activation size: the CPU measure sees the big
    intermediate (independent count: B x out floats for the output, the same again for its gradient)."""
    import torch

    class Lin(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(64, 4096, bias=False)

        def calculate_loss(self, batch):
            return self.w(batch["x"]).square().mean()

    model = Lin()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = {"x": torch.randn(512, 64)}
    peak = efficiency.train_step_memory(model, opt, batch, "cpu")
    activation = 512 * 4096 * 4  # one float32 [512, 4096] tensor = 8 MiB
    assert 2 * activation <= peak <= 6 * activation


def test_results_resume_of_a_finished_run_keeps_its_epochs_curve_and_settings(tmp_path):
    """A run that finished in --checkpoint_dir but whose row was lost (its process killed before the table was
    written) resumes with nothing left to train: its row still gets the run's epochs, best epoch, curve,
    parameters and settings (from the checkpoint), and the same test metrics."""
    data = tmp_path / "data"
    write_inter(str(data / "tiny" / "tiny.inter"), n_users=40, n_items=30, min_len=8, max_len=12)
    common = ["--dataset", "tiny", "--models", "SASRec", "--seeds", "3", "--no_plot", "--set", f"data_path={data}",
              "--set", "epochs=3", "--set", "stopping_step=10", *TINY, "--checkpoint_dir", str(tmp_path / "ckpt")]
    whole = results.main([*common, "--out", str(tmp_path / "whole")])[0]
    again = results.main([*common, "--out", str(tmp_path / "lost")])[0]  # a fresh table, the same run's files
    assert again["resumed_from"].endswith("-last.pth") and again["test"] == whole["test"]
    for key in ("epochs", "best_epoch", "params", "curve", "settings"):
        assert again[key] == whole[key], key
    assert whole["epochs"] == 3 and len(whole["curve"]) == 3 and whole["params"] > 0
