"""A task column (``ltuning train --task-column``): one data file holding several tasks trains one multi-task
LT adapter. The reader (``data.read_table_tasks``: grouping, label sets, errors naming the file's row), the
per-task label texts (``data.load_task_label_texts``), and the command line end to end on a tiny BERT: the
saved tasks, predict / evaluate with ``--adapter-task``, the same weights as the Python API, the refusals (none
of which writes anything), names a file's task may have."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_cli import _offline, save_tiny_bert  # noqa: F401 - _offline: autouse fixture (no hub, cwd tmp_path)
from test_data import write

from ltuning.adapter import CONFIG_NAME, load_adapter
from ltuning.cli import main
from ltuning.data import FileLabels, TextDataset, load_task_label_texts, read_table_tasks
from ltuning.errors import DataError
from ltuning.recipe import build_and_train
from ltuning.train import TrainArgs

HEADER = ("task", "text", "label")
#: two tasks, interleaved: sent (neg / pos) and topic (actors / movie / plot); a header makes these rows 2-11
ROWS = [("sent", "the movie was great fun", "pos"), ("topic", "the plot and story", "plot"),
        ("sent", "boring and awful plot", "neg"), ("topic", "the actors were good", "actors"),
        ("sent", "i loved it", "pos"), ("topic", "the movie was a film", "movie"),
        ("sent", "i hated it", "neg"), ("topic", "the story", "plot"), ("topic", "good actors", "actors"),
        ("topic", "a film", "movie")]
VALID = [("topic", "a good plot", "plot"), ("sent", "really fun", "pos"), ("topic", "the film", "movie"),
         ("sent", "terrible story", "neg"), ("topic", "great actors", "actors")]
#: words the label texts and task labels below use, beyond the tiny vocabulary
EXTRA_WORDS = ("ham", "spam", "message", "normal")


def write_tasks(path: Path, rows, header=HEADER) -> Path:
    """rows as .csv / .tsv / .jsonl (by the suffix), with ``header`` (None: none; .jsonl keys are it)."""
    fmt = path.suffix[1:]
    if fmt == "jsonl":
        return write(path, [dict(zip(header, r, strict=True)) for r in rows], fmt)
    return write(path, [list(header), *map(list, rows)] if header else [list(r) for r in rows], fmt)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return str(save_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert", extra_words=EXTRA_WORDS))


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
    with pytest.raises(DataError, match=rf"row {row}: task name 'a\\tb' holds a control or invisible character"):
        read([*ROWS[:3], ("a\tb", "a film", "plot"), *ROWS[4:]])
    for invisible in ("\u200b", "a\u2028b"):  # a zero-width space (a name that looks empty), a line separator
        with pytest.raises(DataError, match=rf"row {row}: task name .* holds a control or invisible character"):
            read([*ROWS[:3], (invisible, "a film", "plot"), *ROWS[4:]])
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


# ---------------------------------------------------------------------- the command line
@pytest.fixture
def files(tmp_path):
    return {"train": str(write_tasks(tmp_path / "mixed.csv", ROWS)),
            "valid": str(write_tasks(tmp_path / "mixed_val.tsv", VALID))}


def train_argv(tiny, files, out, *extra, validation=True) -> list[str]:
    return ["train", "--model", tiny, "--train-file", files["train"],
            *(["--validation-file", files["valid"]] if validation else []), "--text-column", "text",
            "--label-column", "label", "--task-column", "task", "--max-steps", "4", "--batch-size", "4",
            "--eval-every", "2", "--quiet", *(["--output-dir", str(out)] if out else []), *extra]


def error(capsys, argv) -> str:
    """The command fails with exit status 2 and one ``error: ...`` line."""
    rc = main(argv)
    err = [s for s in capsys.readouterr().err.splitlines() if s.strip()]
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_train_predict_evaluate(tiny, files, tmp_path, capsys):
    out = tmp_path / "adapter"
    texts = '{"sent": {"neg": "bad", "pos": "good"}}'
    assert main(train_argv(tiny, files, out, "--label-texts", texts)) == 0
    printed = capsys.readouterr().out
    assert "sent: 4 train / 2 validation texts, labels {'neg': 'bad', 'pos': 'good'}" in printed
    assert "topic: 6 train / 3 validation texts, labels {'actors': 'actors', 'movie': 'movie', 'plot': 'plot'}" in printed
    assert "best validation (step" in printed and " on topic:" in printed and "mean over the tasks" in printed
    config = json.loads((out / CONFIG_NAME).read_text())
    assert config["tasks"] == {"sent": {"label_names": ["neg", "pos"], "label_texts": ["bad", "good"]},
                               "topic": {"label_names": ["actors", "movie", "plot"],
                                         "label_texts": ["actors", "movie", "plot"]}}
    assert (config["label_names"], config["label_texts"]) == (["neg", "pos"], ["bad", "good"])  # the first task's
    assert config["_meta"]["tasks"] == ["sent", "topic"] and config["_meta"]["task_column"] == "task"
    run_config = json.loads((out / "run_config.json").read_text())
    assert run_config["task_column"] == "task"
    history = json.loads((out / "train_results.json").read_text())["history"]
    assert set(history[-1]["tasks"]) == {"sent", "topic"}

    # predict with a task's labels, as with a --tasks adapter
    sentences = ["the actors were good", "a film"]
    assert main(["predict", "--adapter", str(out), "--adapter-task", "topic", *sentences]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    expected = load_adapter(out).for_task("topic").predict(sentences)
    assert [s.split("\t")[0] for s in lines] == expected and set(expected) <= {"actors", "movie", "plot"}
    assert main(["predict", "--adapter", str(out), *sentences]) == 0  # the primary labels: sent's
    assert {s.split("\t")[0] for s in capsys.readouterr().out.strip().splitlines()} <= {"neg", "pos"}
    # evaluate one task's own file
    topic = write_tasks(tmp_path / "topic.csv", [r[1:] for r in VALID if r[0] == "topic"], header=("text", "label"))
    assert main(["evaluate", "--adapter", str(out), "--file", str(topic), "--text-column", "text", "--label-column",
                 "label", "--adapter-task", "topic", "--quiet"]) == 0
    metrics = json.loads((out / "eval_topic_file.json").read_text())
    assert metrics["num_examples"] == 3 and len(metrics["confusion_matrix"]) == 3


def test_same_weights_as_the_python_api(tiny, files, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(train_argv(tiny, files, out)) == 0
    capsys.readouterr()

    def dataset(rows, names) -> TextDataset:
        return TextDataset([t for _, t, _ in rows], [names.index(y) for _, _, y in rows], names)

    def tasks(rows) -> dict[str, TextDataset]:
        return {"sent": dataset([r for r in rows if r[0] == "sent"], ["neg", "pos"]),
                "topic": dataset([r for r in rows if r[0] == "topic"], ["actors", "movie", "plot"])}

    run = build_and_train(tiny, tasks(ROWS), tasks(VALID), TrainArgs(max_steps=4, batch_size=4, eval_every=2,
                                                                     progress=False), method="lt-prefix", say=None)
    cli = load_adapter(out)
    assert cli.config.tasks == run.model.config.tasks
    a, b = cli.method.state_dict(), run.model.method.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((out / "train_results.json").read_text())["best_step"] == run.result.best_step


def test_samples_per_task_no_header_and_the_default_folder(tiny, tmp_path, capsys):
    path = write_tasks(tmp_path / "plain.tsv", ROWS, header=None)
    argv = ["train", "--model", tiny, "--train-file", str(path), "--no-header", "--text-column", "1",
            "--label-column", "2", "--task-column", "0", "--max-train-samples", "3", "--max-steps", "2",
            "--batch-size", "4", "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "sent: 3 train / 0 validation texts" in printed and "topic: 3 train / 0 validation texts" in printed
    assert (tmp_path / "runs" / "plain-lt-prefix-seed0" / CONFIG_NAME).is_file()
    # a file with a header given an index: the usual pointer to --no-header
    argv = [a for a in argv if a != "--no-header"]
    assert "a file without a header row takes column indices with --no-header" in error(
        capsys, [*argv, "--output-dir", str(tmp_path / "other")])


def test_refusals_write_nothing(tiny, files, tmp_path, capsys):
    out = tmp_path / "out"
    cases = [
        (["--tasks", "demo", "trec"], "--task-column takes the tasks from a column of --train-file and --tasks takes"),
        (["--task", "sst2"], "leave out --task sst2"),
        (["--method", "prefix"], "prefix has a fixed K-way head"),
        (["--method", "prompt"], "multi-task training needs a label-conditioned method"),
        (["--label-texts", '{"tickets": ["a", "b"]}'], "['tickets'] are not tasks of the training file"),
        (["--task-column", "kind"], "column 'kind' not in"),
    ]
    for extra, match in cases:
        assert match in error(capsys, train_argv(tiny, files, out, *extra))
        assert not out.exists() and not (tmp_path / "runs").exists()
    no_file = [a for a in train_argv(tiny, files, out) if a not in ("--train-file", files["train"])]
    assert "--task-column needs --train-file" in error(capsys, no_file)
    write_tasks(Path(files["valid"]), [*VALID, ("tickets", "bug", "b")])
    assert "['tickets'] are not training tasks" in error(capsys, train_argv(tiny, files, out))
    assert not out.exists()


def test_a_failing_run_keeps_the_previous_one(tiny, files, tmp_path, capsys):
    """--overwrite removes the previous run only once everything is checked: a run that train() would refuse
    (here: early stopping without validation data; a task of one row) leaves it as it was."""
    out = tmp_path / "out"
    assert main(train_argv(tiny, files, out)) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    for extra in (["--early-stopping-patience", "2"], ["--max-train-samples", "1"]):
        assert "error: " in error(capsys, train_argv(tiny, files, out, "--overwrite", *extra, validation=False))
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_task_names_of_known_tasks_and_odd_names(tiny, tmp_path, capsys):
    """A file's task named like a packaged task is the file's: its labels and label names as texts, never the
    packaged task's (sms-spam's 'normal message'); evaluate --task sst2 does not take it for GLUE's sst2."""
    rows = [("sst2", "great fun", "good"), ("sms-spam", "win now", "spam"), ("sst2", "awful", "bad"),
            ("sms-spam", "see you", "ham"), ("my reviews #2", "fun", "pos"), ("my reviews #2", "dull", "neg")]
    files = {"train": str(write_tasks(tmp_path / "named.csv", rows))}
    out = tmp_path / "named"
    assert main(train_argv(tiny, files, out, validation=False)) == 0
    tasks = json.loads((out / CONFIG_NAME).read_text())["tasks"]
    assert tasks == {"sst2": {"label_names": ["bad", "good"], "label_texts": ["bad", "good"]},
                     "sms-spam": {"label_names": ["ham", "spam"], "label_texts": ["ham", "spam"]},
                     "my reviews #2": {"label_names": ["neg", "pos"], "label_texts": ["neg", "pos"]}}
    capsys.readouterr()
    assert main(["predict", "--adapter", str(out), "--adapter-task", "my reviews #2", "fun"]) == 0
    assert capsys.readouterr().out.split("\t")[0] in ("neg", "pos")
    message = error(capsys, ["evaluate", "--adapter", str(out), "--task", "sst2", "--output", str(tmp_path / "e.json")])
    assert "the adapter's task 'sst2' has the labels ['bad', 'good'], not the known task's" in message
    assert "--adapter-task sst2, without --task" in message and not (tmp_path / "e.json").exists()
