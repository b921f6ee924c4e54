"""Raw-format converters (``recbole_timeplug.data.convert``) on small generated raw files.

Expected rows are written out by hand (timestamps computed independently), never taken from the
converter's own output. The last tests load a converted file through RecBole's Config + create_dataset.
"""

import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from recbole_timeplug.data.convert import ConvertError, convert, main, parse_time

HEADER_R = "user_id:token\titem_id:token\trating:float\ttimestamp:float"
HEADER = "user_id:token\titem_id:token\ttimestamp:float"


def _write(path, text, gz=False, raw=None):
    os.makedirs(os.path.dirname(str(path)) or ".", exist_ok=True)
    data = raw if raw is not None else text.encode("utf-8")
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        with open(path, "wb") as f:
            f.write(data)
    return str(path)


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def _run(fmt, raw, out, **kw):
    return convert(fmt, raw, str(out), progress=False, log=None, **kw)


# ------------------------------------------------------------------------------------ movielens
def test_movielens_dat_rows_bad_rows_and_rejected_file(tmp_path):
    raw = (b"1::1193::5::978300760\n"
           b"1::661::3::978302109\n"
           b"\n"                              # blank: counted, not an error
           b"2::48\n"                         # too few fields
           b"2::3408::4::yesterday\n"         # bad time
           b"\xff\xfe::1::1::1\n"            # not UTF-8
           b"::12::4::978301968\n"            # empty user id
           b"3::1::2.5::978824291\r\n")       # CRLF line end
    src = _write(tmp_path / "ratings.dat", None, raw=raw)
    s = _run("movielens", src, tmp_path / "ml-1m", rejected_file=True)
    out = _read(tmp_path / "ml-1m" / "ml-1m.inter")
    assert out == [HEADER_R, "1\t1193\t5\t978300760", "1\t661\t3\t978302109", "3\t1\t2.5\t978824291"]
    assert (s["read"], s["written"], s["rejected"], s["blank"], s["filtered"]) == (8, 3, 4, 1, 0)
    assert (s["users"], s["items"]) == (2, 3)
    assert (s["time_min"], s["time_max"]) == (978300760.0, 978824291.0)
    assert [e.split(" ")[0] for e in s["examples"]] == ["ratings.dat:4", "ratings.dat:5", "ratings.dat:6", "ratings.dat:7"]
    rejected = _read(tmp_path / "ml-1m" / "ml-1m.rejected")
    assert [r.split("\t")[0] for r in rejected] == ["ratings.dat:4", "ratings.dat:5", "ratings.dat:6", "ratings.dat:7"]
    assert "not a number" in rejected[1] and "not UTF-8" in rejected[2] and "empty user id" in rejected[3]


def test_movielens_csv_header_and_missing_column(tmp_path):
    src = _write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,296,5.0,1147880044\n1,306,3.5,1147868817\n")
    s = _run("movielens", src, tmp_path / "ml-25m")
    assert _read(tmp_path / "ml-25m" / "ml-25m.inter") == [HEADER_R, "1\t296\t5\t1147880044", "1\t306\t3.5\t1147868817"]
    assert s["header"] == 1 and s["rejected"] == 0
    bad = _write(tmp_path / "bad.csv", "userId,movieId,rating,time\n1,2,3,4\n")
    with pytest.raises(ConvertError) as err:
        _run("movielens", bad, tmp_path / "x")
    msg = str(err.value)
    assert "bad.csv" in msg and "'timestamp'" in msg and "'time'" in msg  # file, missing column, what was found
    assert not os.path.exists(tmp_path / "x" / "x.inter")  # no half-written output


# ------------------------------------------------------------------------------------ amazon
@pytest.mark.parametrize("gz", [False, True])
def test_amazon_csv_plain_and_gzip(tmp_path, gz):
    text = ("A1QA985ULVCQOB,B000GFDAUG,5.0,1380067200\n"
            "A3OW0L4Y2PJ1D5,B000GFDAUG,4.0,1371772800\n"
            "A3OW0L4Y2PJ1D5,B0002JHI1I,five,1371772800\n"  # bad rating
            "broken line\n")
    src = _write(tmp_path / ("r.csv.gz" if gz else "r.csv"), text, gz=gz)
    s = _run("amazon-csv", src, tmp_path / "beauty", dataset="Amazon_Beauty")
    assert _read(tmp_path / "beauty" / "Amazon_Beauty.inter") == [
        HEADER_R, "A1QA985ULVCQOB\tB000GFDAUG\t5\t1380067200", "A3OW0L4Y2PJ1D5\tB000GFDAUG\t4\t1371772800"]
    assert (s["written"], s["rejected"]) == (2, 2)
    assert s["reasons"] == {"rating 'five' is not a number": 1, "expected 4 fields (user,item,rating,timestamp), found 1": 1}


def test_amazon_csv_wrong_width_first_line_is_an_error(tmp_path):
    src = _write(tmp_path / "r.csv", "u1,i1,1380067200\n")
    with pytest.raises(ConvertError, match=r"r\.csv.*4 comma-separated columns.*has 3"):
        _run("amazon-csv", src, tmp_path / "o")


def test_amazon_json_python_literal_2014_gzip_and_no_eval(tmp_path):
    marker = tmp_path / "pwned"
    lines = [
        "{'reviewerID': 'A1YJEY40YUW4SE', 'asin': '7806397051', 'reviewerName': 'Andrea', 'helpful': [3, 4], "
        "'reviewText': 'Very oily and creamy.', 'overall': 1.0, 'summary': \"Don't waste\", "
        "'unixReviewTime': 1391040000, 'reviewTime': '01 30, 2014'}",
        "{'reviewerID': 'A60XNB876KYML', 'asin': '7806397051', 'overall': 3.0, 'reviewTime': '04 18, 2014'}",
        f"{{'reviewerID': __import__('os').system('touch {marker}'), 'asin': 'x', 'overall': 1.0, 'unixReviewTime': 1}}",
        "{'reviewerID': 'A3G6XNM240RMWA', 'overall': 4.0, 'unixReviewTime': 1378425600}",  # no asin
        "not a record at all",
    ]
    src = _write(tmp_path / "reviews_Beauty_5.json.gz", "\n".join(lines) + "\n", gz=True)
    s = _run("amazon-json", src, tmp_path / "amazon-beauty", rejected_file=True)
    assert _read(tmp_path / "amazon-beauty" / "amazon-beauty.inter") == [
        HEADER_R, "A1YJEY40YUW4SE\t7806397051\t1\t1391040000",
        "A60XNB876KYML\t7806397051\t3\t1397779200"]  # 2014-04-18 00:00 UTC from reviewTime
    assert not marker.exists()  # the malicious line was parsed as a literal (and rejected), never executed
    assert (s["written"], s["rejected"]) == (2, 3)
    assert s["reasons"]["neither valid JSON nor a Python literal"] == 2
    assert s["reasons"]["missing field 'asin' (item)"] == 1


def test_amazon_json_strict_json_and_missing_field_error(tmp_path):
    recs = [{"overall": 5.0, "vote": "2", "verified": True, "reviewTime": "01 1, 2018", "reviewerID": "U1",
             "asin": "0001713353", "unixReviewTime": 1514764800},
            {"overall": 4.0, "reviewerID": "U2", "asin": "0001713353", "unixReviewTime": 1514851200, "style": None}]
    src = _write(tmp_path / "Books_5.json", "\n".join(json.dumps(r) for r in recs) + "\n")
    s = _run("amazon-json", src, tmp_path / "books", no_rating=True)
    assert _read(tmp_path / "books" / "books.inter") == [HEADER, "U1\t0001713353\t1514764800", "U2\t0001713353\t1514851200"]
    assert s["rejected"] == 0
    wrong = _write(tmp_path / "w.json", json.dumps({"user": "a", "item": "b", "time": 1}) + "\n")
    with pytest.raises(ConvertError) as err:
        _run("amazon-json", wrong, tmp_path / "w")
    assert "w.json" in str(err.value) and "'reviewerID'" in str(err.value) and "['item', 'time', 'user']" in str(err.value)
    s = _run("amazon-json", wrong, tmp_path / "w2", user_field="user", item_field="item", time_field="time",
             rating_field=None, no_rating=True)
    assert _read(tmp_path / "w2" / "w2.inter") == [HEADER, "a\tb\t1"]


# ------------------------------------------------------------------------------------ steam
def test_steam_python_literal_dates(tmp_path):
    lines = [
        "{u'username': u'Chaos Syren', u'hours': 0.1, u'products': 41, u'product_id': u'725280', "
        "u'page_order': 0, u'date': u'2017-12-17', u'text': u'This would not be acceptable', u'early_access': False}",
        "{'username': 'Ariman1', 'hours': 13.2, 'product_id': '328100', 'date': '2018-01-04', 'user_id': '7656119', "
        "'text': 'Addictive RPG ! \\n Fun', 'found_funny': 1}",
        "{'username': 'x', 'product_id': '1', 'date': 'Jan 4'}",  # unparsable date
    ]
    src = _write(tmp_path / "steam_reviews.json.gz", "\n".join(lines) + "\n", gz=True)
    s = _run("steam", src, tmp_path / "steam")
    assert _read(tmp_path / "steam" / "steam.inter") == [
        HEADER, "Chaos Syren\t725280\t1513468800", "Ariman1\t328100\t1515024000"]
    assert (s["written"], s["rejected"]) == (2, 1)
    assert "does not match format" in s["examples"][0]
    # --user-field user_id: the first record lacks it -> a clear error, not a silent drop
    with pytest.raises(ConvertError, match=r"no field 'user_id'.*'username'"):
        _run("steam", src, tmp_path / "steam2", user_field="user_id")


# ------------------------------------------------------------------------------------ kuairand
KUAI_HEADER = "user_id,video_id,date,hourmin,time_ms,is_click,is_like,play_time_ms,tab"


def test_kuairand_folder_click_only_and_ms(tmp_path):
    d = tmp_path / "KuaiRand-Pure" / "data"
    _write(d / "log_standard_4_08_to_4_21_pure.csv", KUAI_HEADER + "\n"
           "0,4229,20220408,1000,1649383200123,1,0,1000,1\n"
           "0,9999,20220408,1000,1649383260000,0,0,0,1\n"          # not clicked -> filtered
           "1,77,20220408,1000,not_a_time,1,0,0,1\n")              # rejected
    _write(d / "log_standard_4_22_to_5_08_pure.csv", KUAI_HEADER + "\n"
           "1,4229,20220422,900,1650589200000,1,0,1000,2\n"
           "1,5,20220422,900,1650589200500,2,0,1000,2\n")          # is_click not 0/1 -> rejected
    _write(d / "video_features_basic_pure.csv", "video_id,author_id\n1,2\n")  # not a log file: ignored
    s = _run("kuairand", str(d), tmp_path / "kuairand", click_only=True)
    assert _read(tmp_path / "kuairand" / "kuairand.inter") == [
        HEADER, "0\t4229\t1649383200.123", "1\t4229\t1650589200"]
    assert (s["read"], s["header"], s["written"], s["filtered"], s["rejected"]) == (7, 2, 2, 1, 2)
    assert len(s["inputs"]) == 2
    s_all = _run("kuairand", str(d / "log_standard_4_08_to_4_21_pure.csv"), tmp_path / "k2")
    assert (s_all["written"], s_all["filtered"]) == (2, 0)  # without --click-only the 0-click row stays


def test_kuairand_missing_column(tmp_path):
    src = _write(tmp_path / "log.csv", "user_id,video_id,date\n1,2,20220408\n")
    with pytest.raises(ConvertError) as err:
        _run("kuairand", src, tmp_path / "k")
    assert "log.csv" in str(err.value) and "'time_ms'" in str(err.value) and "['user_id', 'video_id', 'date']" in str(err.value)


# ------------------------------------------------------------------------------------ generic csv
def test_generic_csv_formats(tmp_path):
    src = _write(tmp_path / "yelp.csv", 'business_id,stars,user_id,date\n'
                 'b1,4,u1,2019-05-01 10:00:00\n'
                 '"b,2",5,u2,2019-05-01 10:00:01\n'        # quoted field with the separator
                 'b3,5,u3,05/01/2019\n')                   # other date format -> rejected
    s = _run("csv", src, tmp_path / "yelp", user_col="user_id", item_col="business_id", time_col="date",
             rating_col="stars", time_format="%Y-%m-%d %H:%M:%S")
    assert _read(tmp_path / "yelp" / "yelp.inter") == [HEADER_R, "u1\tb1\t4\t1556704800", "u2\tb,2\t5\t1556704801"]
    assert s["rejected"] == 1
    tsv = _write(tmp_path / "t.tsv", "u1\ti1\t2019-05-01T10:00:00+02:00\nu1\ti2\t2019-05-02\n")
    _run("csv", tsv, tmp_path / "t", user_col="0", item_col="1", time_col="2", sep="tab", no_header=True,
         time_format="iso")
    assert _read(tmp_path / "t" / "t.inter") == [HEADER, "u1\ti1\t1556697600", "u1\ti2\t1556755200"]
    with pytest.raises(ConvertError, match="--time-col"):
        _run("csv", src, tmp_path / "z", user_col="user_id", item_col="business_id")
    with pytest.raises(ConvertError, match="no rows written"):
        _run("csv", src, tmp_path / "z", user_col="user_id", item_col="business_id", time_col="date",
             time_format="%d.%m.%Y")


def test_parse_time_units():
    assert parse_time("1649383200123", "ms") == pytest.approx(1649383200.123)
    assert parse_time("2018-01-04", "%Y-%m-%d") == 1515024000.0
    assert parse_time(" 978300760 ") == 978300760.0


def test_cli_errors_and_module_entry(tmp_path, capsys):
    assert main(["movielens", str(tmp_path / "nope.dat"), str(tmp_path / "o"), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err
    src = _write(tmp_path / "r.csv", "u,i,5,100\nu,j,4,200\n")
    proc = subprocess.run([sys.executable, "-m", "recbole_timeplug.data.convert", "amazon-csv", src,
                           str(tmp_path / "cli"), "--dataset", "mini"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "rows written   2" in proc.stdout and "users 1, items 2" in proc.stdout
    assert "100%" in proc.stderr  # the progress bar
    assert _read(tmp_path / "cli" / "mini.inter") == [HEADER_R, "u\ti\t5\t100", "u\tj\t4\t200"]


# ------------------------------------------------------------------------------------ RecBole loads it
def test_converted_file_loads_in_recbole(tmp_path):
    from recbole.data import create_dataset

    from recbole_timeplug.config import Config

    rng = np.random.default_rng(0)
    rows, expected = [], {}
    for u in range(1, 31):
        t = 978300000 + u * 1000
        for k in range(8):
            t += int(rng.integers(1, 500))
            item = int(rng.integers(1, 40))
            rows.append(f"{u}::{item}::{1 + k % 5}::{t}")
            # RecBole stores float fields as float32 (64 s resolution at ~1e9): compare at that precision
            expected.setdefault(u, []).append((str(item), float(np.float32(t))))
    rows.insert(5, "oops")
    _write(tmp_path / "raw" / "ratings.dat", "\n".join(rows) + "\n")
    s = _run("movielens", str(tmp_path / "raw" / "ratings.dat"), tmp_path / "data" / "conv")
    assert (s["written"], s["rejected"]) == (240, 1)
    config = Config(model="SASRec", dataset="conv", config_dict={
        "data_path": str(tmp_path / "data"), "load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"]},
        "user_inter_num_interval": "[0,inf)", "item_inter_num_interval": "[0,inf)", "state": "ERROR",
        "train_neg_sample_args": None, "log_wandb": False})
    dataset = create_dataset(config)
    assert dataset.inter_num == 240
    assert dataset.user_num - 1 == 30 and dataset.item_num - 1 == s["items"]
    assert dataset.field2type["timestamp"].value == "float"
    feat = dataset.inter_feat
    users = dataset.id2token("user_id", np.asarray(feat["user_id"]))
    items = dataset.id2token("item_id", np.asarray(feat["item_id"]))
    got = {}
    for u, i, t in zip(users, items, np.asarray(feat["timestamp"])):
        got.setdefault(int(u), []).append((str(i), float(np.float32(t))))
    assert {u: sorted(v) for u, v in got.items()} == {u: sorted(v) for u, v in expected.items()}


def test_generic_json_yelp_reviews(tmp_path):
    recs = [{"review_id": "r1", "user_id": "u-1", "business_id": "b-9", "stars": 4.0, "date": "2018-07-07 22:09:11",
             "text": "Great\tplace"},
            {"review_id": "r2", "user_id": "u-2", "business_id": "b-9", "stars": 2.0, "date": "2018-07-07"}]
    src = _write(tmp_path / "yelp_academic_dataset_review.json", "\n".join(json.dumps(r) for r in recs) + "\n")
    s = _run("json", src, tmp_path / "yelp", user_field="user_id", item_field="business_id", time_field="date",
             rating_field="stars", time_format="%Y-%m-%d %H:%M:%S")
    # 2018-07-07 00:00 UTC = 1530921600; + 22:09:11 = 79751 s
    assert _read(tmp_path / "yelp" / "yelp.inter") == [HEADER_R, "u-1\tb-9\t4\t1531001351"]
    assert s["rejected"] == 1 and "does not match format" in s["examples"][0]
    with pytest.raises(ConvertError, match="--item-field"):
        _run("json", src, tmp_path / "y2", user_field="user_id", time_field="date")
