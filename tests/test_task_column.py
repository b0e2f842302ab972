"""A task column: one data file holding several tasks. The reader (``data.read_table_tasks``: grouping, label
sets, errors naming the file's row) and the per-task label texts (``data.load_task_label_texts``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_data import write

from ltuning.data import FileLabels, load_task_label_texts, read_table_tasks
from ltuning.errors import DataError

HEADER = ("task", "text", "label")
#: two tasks, interleaved: sent (neg / pos) and topic (actors / movie / plot); a header makes these rows 2-11
ROWS = [("sent", "the movie was great fun", "pos"), ("topic", "the plot and story", "plot"),
        ("sent", "boring and awful plot", "neg"), ("topic", "the actors were good", "actors"),
        ("sent", "i loved it", "pos"), ("topic", "the movie was a film", "movie"),
        ("sent", "i hated it", "neg"), ("topic", "the story", "plot"), ("topic", "good actors", "actors"),
        ("topic", "a film", "movie")]
VALID = [("topic", "a good plot", "plot"), ("sent", "really fun", "pos"), ("topic", "the film", "movie"),
         ("sent", "terrible story", "neg"), ("topic", "great actors", "actors")]


def write_tasks(path: Path, rows, header=HEADER) -> Path:
    """rows as .csv / .tsv / .jsonl (by the suffix), with ``header`` (None: none; .jsonl keys are it)."""
    fmt = path.suffix[1:]
    if fmt == "jsonl":
        return write(path, [dict(zip(header, r, strict=True)) for r in rows], fmt)
    return write(path, [list(header), *map(list, rows)] if header else [list(r) for r in rows], fmt)


# ---------------------------------------------------------------------- the reader
@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "no-header"])
def test_rows_grouped_by_task(tmp_path, fmt):
    if fmt == "no-header":  # columns by 0-based index, as --no-header takes them
        path = write_tasks(tmp_path / "mixed.csv", ROWS, header=None)
        tasks = read_table_tasks(path, ["1"], "2", "0", header=False)
    else:
        path = write_tasks(tmp_path / f"mixed.{fmt}", ROWS)
        tasks = read_table_tasks(path, ["text"], "label", "task")
    assert list(tasks) == ["sent", "topic"]  # first appearance
    sent, topic = tasks["sent"], tasks["topic"]
    assert sent.texts == ["the movie was great fun", "boring and awful plot", "i loved it", "i hated it"]
    assert sent.label_names == ["neg", "pos"] and sent.labels == [1, 0, 1, 0]
    assert topic.texts == ["the plot and story", "the actors were good", "the movie was a film", "the story",
                           "good actors", "a film"]
    assert topic.label_names == ["actors", "movie", "plot"] and topic.labels == [2, 0, 1, 2, 0, 1]
    # the label sets are read off the file (read_table's rule), so the validation file cannot read integers
    assert all(isinstance(d.label_names, FileLabels) for d in tasks.values())
    assert sent.source == f"{path} (task 'sent')" and sent.label_names.source == sent.source


def test_task_names_are_stripped_and_kept_as_written(tmp_path):
    rows = [(" my reviews ", "good", "pos"), ("sst2", "bad", "neg"), ("my reviews", "bad", "neg"),
            ("sst2", "fun", "pos"), ("ünï/çødé #1", "a", "neg"), ("ünï/çødé #1", "b", "pos")]
    tasks = read_table_tasks(write_tasks(tmp_path / "m.csv", rows), ["text"], "label", "task")
    assert list(tasks) == ["my reviews", "sst2", "ünï/çødé #1"]
    assert tasks["my reviews"].texts == ["good", "bad"]
    # a JSONL task value that is a number is its text
    path = write(tmp_path / "m.jsonl", [{"t": 7, "x": "a", "y": "p"}, {"t": 7, "x": "b", "y": "q"}], "jsonl")
    assert list(read_table_tasks(path, ["x"], "y", "t")) == ["7"]


def test_validation_file_read_with_the_training_labels(tmp_path):
    train = read_table_tasks(write_tasks(tmp_path / "train.csv", ROWS), ["text"], "label", "task")
    labels = {t: d.label_names for t, d in train.items()}
    val = read_table_tasks(write_tasks(tmp_path / "val.tsv", VALID), ["text"], "label", "task", labels)
    assert list(val) == ["topic", "sent"]  # the validation file's own order
    assert val["topic"].label_names == ["actors", "movie", "plot"] and val["topic"].labels == [2, 1, 0]
    assert val["sent"].labels == [1, 0]
    # a validation file holding some of the tasks validates those
    only = read_table_tasks(write_tasks(tmp_path / "topic.csv", VALID[:1]), ["text"], "label", "task", labels)
    assert list(only) == ["topic"]
    # a label outside its task's set: the file's row (row 4: the header is row 1), not the row within the task
    bad = write_tasks(tmp_path / "bad.csv", [*VALID[:2], ("sent", "meh", "plot")])
    with pytest.raises(DataError, match=r"bad\.csv, row 4: label 'plot' is not in the label set \['neg', 'pos'\]"):
        read_table_tasks(bad, ["text"], "label", "task", labels)
    # integers against labels read off the training file are refused, naming the task's labels' source
    ints = write_tasks(tmp_path / "ints.csv", [("sent", "meh", "1"), ("sent", "fun", "0")])
    with pytest.raises(DataError, match=r"read from .*train\.csv \(task 'sent'\)"):
        read_table_tasks(ints, ["text"], "label", "task", labels)
    unknown = write_tasks(tmp_path / "unknown.csv", [*VALID, ("spam", "win now", "spam")])
    with pytest.raises(DataError, match=r"unknown\.csv: task\(s\) \['spam'\] are not training tasks \(the training "
                                        r"file has \['sent', 'topic'\]\)"):
        read_table_tasks(unknown, ["text"], "label", "task", labels)


@pytest.mark.parametrize("fmt,first_row", [("csv", 2), ("jsonl", 1)])
def test_errors_name_the_files_row(tmp_path, fmt, first_row):
    def read(rows):
        return read_table_tasks(write_tasks(tmp_path / f"m.{fmt}", rows), ["text"], "label", "task")

    # the 4th data row is the 2nd of its task: errors name the file's row
    row = 3 + first_row
    with pytest.raises(DataError, match=rf"m\.{fmt}, row {row}: empty text"):
        read([*ROWS[:3], ("topic", "", "actors"), *ROWS[4:]])
    with pytest.raises(DataError, match=rf"m\.{fmt}, row {row}: missing label"):
        read([*ROWS[:3], ("topic", "a film", ""), *ROWS[4:]])
    with pytest.raises(DataError, match=rf"m\.{fmt}, row {row}: empty task \(column 'task'\)"):
        read([*ROWS[:3], ("  ", "a film", "plot"), *ROWS[4:]])
    with pytest.raises(DataError, match=rf"row {row}: task name 'a\\tb' holds a control character"):
        read([*ROWS[:3], ("a\tb", "a film", "plot"), *ROWS[4:]])
    with pytest.raises(DataError, match=r"task 'topic' has only the label 'plot'; every task needs at least 2 labels"):
        read([r for r in ROWS if r[0] == "sent"] + [("topic", "a", "plot"), ("topic", "b", "plot")])


def test_missing_task_column_lists_the_columns(tmp_path):
    for fmt in ("csv", "jsonl"):
        path = write_tasks(tmp_path / f"m.{fmt}", ROWS)
        with pytest.raises(DataError, match=rf"column 'kind' not in .*m\.{fmt} \(columns: task, text, label\)"):
            read_table_tasks(path, ["text"], "label", "kind")
    with pytest.raises(DataError, match="no header row; give columns as 0-based indices"):
        read_table_tasks(write_tasks(tmp_path / "n.csv", ROWS, header=None), ["1"], "2", "task", header=False)


# ---------------------------------------------------------------------- label texts per task
def test_task_label_texts(tmp_path):
    labels = {"sent": ["neg", "pos"], "topic": ["actors", "movie", "plot"]}
    # a list in label order or an object label -> text; a task left out reads its names
    assert load_task_label_texts('{"sent": {"pos": "good", "neg": "bad"}}', labels) == {
        "sent": ["bad", "good"], "topic": ["actors", "movie", "plot"]}
    assert load_task_label_texts(None, labels) == labels
    spec = tmp_path / "texts.json"
    spec.write_text(json.dumps({"topic": ["the actors", "the film", "the plot"]}), encoding="utf-8")
    assert load_task_label_texts(str(spec), labels)["topic"] == ["the actors", "the film", "the plot"]
    bad = [('["bad", "good"]', "must be a JSON object {task: label texts}"),
           ("bad,good", "invalid JSON"),
           ('{"neg": "bad", "pos": "good"}', r"\['neg', 'pos'\] are not tasks of the training file \(its tasks: "
                                             r"\['sent', 'topic'\]\)"),
           ('{"sent": "bad,good"}', r"--label-texts\['sent'\] must be a list of texts in label order or an object"),
           ('{"sent": ["bad"]}', r"--label-texts\['sent'\] has 1 texts for 2 labels"),
           ('{"topic": {"actors": "a", "film": "b", "plot": "c"}}', r"--label-texts\['topic'\]: names"),
           ('{"sent": ["bad", " "]}', r"--label-texts\['sent'\]: label 'pos' has an empty text"),
           (str(tmp_path / "missing.json"), "label-texts file not found")]
    for text, match in bad:
        with pytest.raises(DataError, match=match):
            load_task_label_texts(text, labels)
