"""run_hyper.py: concurrent searches writing one --output_file never interleave; bad input is one line, exit 2."""

import multiprocessing
import os

from conftest import one_line_error
from recbole_timeplug.hyper import write_report


def _summary(tag, n_trials=3000):
    trials = [{"params": {"lr": f"{tag}{i}"}, "best_valid_score": i / n_trials,
               "best_valid_result": {"ndcg@10": i / n_trials}, "test_result": {"ndcg@10": i / n_trials}}
              for i in range(n_trials)]
    return {"model": tag, "dataset": "d", "tool": "hyperopt", "algo": "exhaustive", "params_file": "p.hyper",
            "config_file_list": None, "valid_metric": "ndcg@10", "valid_score_bigger": True, "trials": trials,
            "param_names": ["lr"], "best_index": 0, "best_params": trials[0]["params"], "best_valid_score": 0.0,
            "best_valid_result": trials[0]["best_valid_result"], "test_result": trials[0]["test_result"]}


def _writer(path, tag, times):
    summary = _summary(tag)
    for _ in range(times):
        write_report(path, summary)


def test_two_searches_writing_one_report_never_interleave(tmp_path):
    path = str(tmp_path / "report.md")
    expected = set()
    for tag in ("A", "B"):
        write_report(path, _summary(tag))
        expected.add(open(path, encoding="utf-8").read())
    assert len(expected) == 2 and all(len(t) > 100_000 for t in expected)  # big enough to be written in pieces
    ctx = multiprocessing.get_context("fork")
    writers = [ctx.Process(target=_writer, args=(path, tag, 40)) for tag in ("A", "B")]
    for w in writers:
        w.start()
    reads = 0
    while any(w.is_alive() for w in writers):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        assert text in expected, f"a reader saw a partial or mixed report ({len(text)} chars)"
        reads += 1
    for w in writers:
        w.join()
        assert w.exitcode == 0
    assert open(path, encoding="utf-8").read() in expected and reads > 0
    assert [p for p in os.listdir(tmp_path) if ".tmp-" in p] == []  # no temp files left behind


def test_run_hyper_bad_input_is_one_line(run_cli, tmp_path):
    proc = run_cli("run_hyper.py", "--model=SASRec", "--dataset=ml-100k", "--params_file=nope.hyper", check=False)
    assert "nope.hyper" in one_line_error(proc, "run_hyper.py")
