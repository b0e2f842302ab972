"""Nothing lost, nothing silently wrong (issue 14): no command writes over a file it did not create or reads
(a user's README.md, evaluate's own input), --resume never replaces a finished run, the backbone guard
(a missing fingerprint, other weights of the same shape, a relative base_model), unreadable inputs and
non-UTF-8 arguments end in one line, a full disk leaves the last good state and no partial files."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest
import torch
from test_cli import TRAIN, VALID, _offline, save_tiny_bert, write_csv  # noqa: F401 - _offline: autouse fixture

from ltuning.adapter import CONFIG_NAME, load_adapter
from ltuning.checkpoint import OPTIMIZER_NAME
from ltuning.cli import main
from ltuning.errors import AdapterError, WriteError


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("safety")
    tiny = save_tiny_bert(root / "tiny-bert")
    # the same architecture with other weights (another seed)
    other = root / "other-weights"
    shutil.copytree(tiny, other)
    from transformers import BertModel

    torch.manual_seed(1)
    BertModel(BertModel.config_class.from_pretrained(tiny)).save_pretrained(other)
    train = write_csv(root / "train.csv", TRAIN)
    valid = write_csv(root / "valid.csv", VALID)
    adapter = root / "adapter"
    assert main(train_argv(tiny, train, adapter)) == 0
    return {"root": root, "tiny": tiny, "other": other, "train": train, "valid": valid, "adapter": adapter}


def train_argv(model, train, out, *extra):
    return ["train", "--model", str(model), "--train-file", str(train), "--text-column", "text", "--label-column",
            "label", "--max-steps", "2", "--batch-size", "4", "--output-dir", str(out), "--quiet", *extra]


def one_line(capsys, rc, match: str) -> str:
    err = capsys.readouterr().err
    lines = [s for s in err.splitlines() if s.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert match in lines[0], lines[0]
    return lines[0]


def copy_adapter(env, tmp_path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(env["adapter"], dst)
    return dst


def edit_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / CONFIG_NAME).read_text())
    for k, v in changes.items():
        if v is ...:
            cfg.pop(k)
        else:
            cfg[k] = v
    (folder / CONFIG_NAME).write_text(json.dumps(cfg))


# ---------------------------------------------------------------------- 4, 5: the backbone guard
@pytest.mark.parametrize("value", [..., None, ""])
def test_a_missing_or_null_fingerprint_is_refused(env, tmp_path, value):
    folder = copy_adapter(env, tmp_path)
    edit_config(folder, backbone_fingerprint=value)
    with pytest.raises(AdapterError, match="backbone_fingerprint is missing"):
        load_adapter(folder, model=str(env["tiny"]))


def test_an_adapter_refuses_other_weights_of_the_same_shape(env, tmp_path, capsys):
    assert load_adapter(env["adapter"], model=str(env["tiny"])) is not None
    with pytest.raises(AdapterError, match="other weights"):
        load_adapter(env["adapter"], model=str(env["other"]))
    rc = main(["predict", "--adapter", str(env["adapter"]), "--model", str(env["other"]), "a good film"])
    one_line(capsys, rc, "other weights")


def test_the_weights_check_holds_across_dtypes(env):
    from transformers import BertModel

    from ltuning.backbones import same_weights, weights_sample

    model = BertModel.from_pretrained(env["tiny"])
    sample = weights_sample(model)
    assert len(sample) == 32
    for dtype in (torch.bfloat16, torch.float16):
        assert same_weights(sample, weights_sample(model.to(dtype)))
    assert not same_weights(sample, weights_sample(BertModel.from_pretrained(env["other"])))


def test_an_adapter_without_a_weights_sample_loads_with_a_warning(env, tmp_path):
    folder = copy_adapter(env, tmp_path)
    edit_config(folder, backbone_weights=...)
    with pytest.warns(UserWarning, match="cannot check"):
        load_adapter(folder, model=str(env["other"]))  # an old adapter: the architecture check only


@pytest.fixture(scope="module")
def other_settings(env):
    """The tiny backbone's weights, byte for byte, under a config with another activation and norm eps: same
    fingerprint (shapes), same weights sample, other computations."""
    folder = env["root"] / "other-settings"
    if not folder.exists():
        shutil.copytree(env["tiny"], folder)
        cfg = json.loads((folder / "config.json").read_text())
        cfg.update(hidden_act="relu", layer_norm_eps=1e-5)
        (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def test_an_adapter_records_its_backbones_settings(env):
    cfg = json.loads((env["adapter"] / CONFIG_NAME).read_text())
    assert set(cfg["backbone_settings"]) == {"hidden_act", "layer_norm_eps", "tokenizer"}
    assert cfg["backbone_settings"]["hidden_act"] == "gelu" and cfg["backbone_settings"]["layer_norm_eps"] == 1e-12


def test_an_adapter_refuses_the_same_weights_with_another_tokenizer(env, tmp_path, capsys):
    """The tiny backbone's weights and config with a tokenizer that lower-cases: the label texts and the texts
    would read other rows of the embedding matrix ('The' was [UNK], now 'the')."""
    from conftest import make_tokenizer
    from tokenizers import normalizers

    folder = tmp_path / "other-tokenizer"
    shutil.copytree(env["tiny"], folder)
    tok = make_tokenizer("encoder")
    tok.backend_tokenizer.normalizer = normalizers.Lowercase()
    tok.save_pretrained(folder)
    with pytest.raises(AdapterError, match=r"other settings .*tokenizer: it splits text differently now .*restore "
                                           r"the tokenizer it was trained with, or train again"):
        load_adapter(env["adapter"], model=str(folder))
    rc = main(["predict", "--adapter", str(env["adapter"]), "--model", str(folder), "a good film"])
    one_line(capsys, rc, "delete backbone_settings.tokenizer from its adapter_config.json")


def test_the_tokenizer_probe_is_pinned():
    """Every saved adapter records these hashes: a change of the probe sentence or of how it is hashed would make
    them all refuse their own backbones."""
    from conftest import make_tokenizer

    from ltuning.backbones import TOKENIZER_PROBE, tokenizer_probe
    from ltuning.loading import load_backbone

    assert TOKENIZER_PROBE == "The Quick brown fox didn't see 1984's owners; e-mail: info@example.org!"
    assert tokenizer_probe(make_tokenizer("encoder")) == "7ddbcafd2bbb23bd"
    assert tokenizer_probe(make_tokenizer("decoder")) == "bf659360e1751d8f"
    assert load_backbone("minilm").settings["tokenizer"] == "a675d1f882cfc1cb"


def test_a_tokenizer_that_samples_its_tokens_records_none():
    """BPE dropout gives other ids on each call: no record (nothing to compare), never a random refusal."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from ltuning.backbones import tokenizer_probe

    vocab = {c: i for i, c in enumerate("abcdefghijklmnopqrstuvwxyzTQ0123456789'@.;:!-")}
    # 14 independent merges, each dropped half the time: five equal draws in a row have odds of about 1e-17
    merges = [("T", "h"), ("Q", "u"), ("b", "r"), ("f", "o"), ("d", "i"), ("s", "e"), ("o", "w"), ("m", "a"),
              ("i", "n"), ("e", "x"), ("o", "r"), ("n", "t"), ("a", "m"), ("p", "l")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, dropout=0.5, unk_token="a"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok)
    assert len({tuple(fast(TOKENIZER_PROBE_TEXT)["input_ids"]) for _ in range(20)}) > 1  # it does sample
    assert tokenizer_probe(fast) is None


TOKENIZER_PROBE_TEXT = "The Quick brown fox didn't see 1984's owners; e-mail: info@example.org!"


def test_an_adapter_refuses_a_backbone_with_other_settings(env, tmp_path, capsys, other_settings):
    """Same shapes and weights but another activation and norm eps: the predictions would silently differ."""
    with pytest.raises(AdapterError, match=r"other settings .*hidden_act: trained 'gelu', now 'relu'; "
                                           r"layer_norm_eps: trained 1e-12, now 1e-05"):
        load_adapter(env["adapter"], model=str(other_settings))
    rc = main(["predict", "--adapter", str(env["adapter"]), "--model", str(other_settings), "a good film"])
    one_line(capsys, rc, "other settings")
    # init_from checks its source's backbone the same way
    rc = main(train_argv(other_settings, env["train"], tmp_path / "warm", "--init-from", str(env["adapter"])))
    one_line(capsys, rc, "other settings")


@pytest.mark.parametrize("recorded", [..., {}, {"rope_theta": 10000.0}, {"hidden_act": "gelu", "layer_norm_eps": 1e-12}])
def test_settings_are_compared_only_where_both_sides_hold_them(env, tmp_path, recorded):
    """An adapter saved before the record (no key), or one that names settings this backbone's config does not
    spell (another transformers version), loads and predicts as before."""
    folder = copy_adapter(env, tmp_path)
    edit_config(folder, backbone_settings=recorded)
    model = load_adapter(folder, model=str(env["tiny"]))
    reference = load_adapter(env["adapter"], model=str(env["tiny"]))
    texts = ["a good film", "a bad film"]
    assert (model.predict_proba(texts) == reference.predict_proba(texts)).all()


@pytest.mark.parametrize("value", [[1], {"hidden_act": None}, {"layer_norm_eps": float("nan")}, {"": 1}, "gelu"])
def test_a_malformed_settings_record_is_a_clear_error(env, tmp_path, value):
    folder = copy_adapter(env, tmp_path)
    edit_config(folder, backbone_settings=value)
    with pytest.raises(AdapterError, match="backbone_settings must be null or an object"):
        load_adapter(folder, model=str(env["tiny"]))


@pytest.mark.parametrize("sample", [[], [0.5] * 5, [10 ** 400] * 32, [0.1] * 31 + [float("nan")], ["0.1"] * 32,
                                    [True] * 16])
def test_a_malformed_weights_sample_is_a_clear_error(env, tmp_path, capsys, sample):
    """An edited backbone_weights (empty: the check would pass anything; an int beyond float range:
    OverflowError before) is refused naming the key, in the API and as one CLI line."""
    folder = copy_adapter(env, tmp_path)
    cfg = json.loads((folder / CONFIG_NAME).read_text())
    cfg["backbone_weights"] = sample
    (folder / CONFIG_NAME).write_text(json.dumps(cfg))  # NaN is written as the bare token NaN
    with pytest.raises(AdapterError, match="backbone_weights must be a list of 16 or 32 finite numbers"):
        load_adapter(folder, model=str(env["tiny"]))
    rc = main(["predict", "--adapter", str(folder), "--model", str(env["tiny"]), "a good film"])
    one_line(capsys, rc, "backbone_weights")


def test_a_relative_base_model_is_never_read_from_the_working_directory(env, tmp_path, monkeypatch, capsys):
    # an adapter trained with a relative --model names the folder by its absolute path
    monkeypatch.chdir(env["root"])
    out = tmp_path / "rel"
    assert main(train_argv("tiny-bert", env["train"], out)) == 0
    base = json.loads((out / CONFIG_NAME).read_text())["base_model"]
    assert base == str(env["tiny"].resolve())
    # an adapter (legacy or edited) that names a relative path is not resolved against the current folder
    edit_config(out, base_model="tiny-bert")
    with pytest.raises(AdapterError, match="relative path"):
        load_adapter(out)
    rc = main(["predict", "--adapter", str(out), "a good film"])
    one_line(capsys, rc, "--model")
    assert load_adapter(out, model="tiny-bert") is not None  # named by the user: fine


# ---------------------------------------------------------------------- 1-3: nothing written over
def test_a_users_readme_in_the_output_folder_is_never_replaced(env, tmp_path, capsys):
    out = tmp_path / "u"
    out.mkdir()
    (out / "README.md").write_text("my notes\n")
    rc = main(train_argv(env["tiny"], env["train"], out))
    one_line(capsys, rc, "README.md")
    assert (out / "README.md").read_text() == "my notes\n" and sorted(p.name for p in out.iterdir()) == ["README.md"]
    # the rule is the adapter writer's, not the CLI's: the Python API refuses too
    model = load_adapter(env["adapter"], model=str(env["tiny"]))
    with pytest.raises(AdapterError, match="README.md"):
        model.save_pretrained(out)
    assert (out / "README.md").read_text() == "my notes\n" and not (out / CONFIG_NAME).exists()
    # another library's adapter_config.json is not ltuning's either
    peft = tmp_path / "peft"
    peft.mkdir()
    (peft / CONFIG_NAME).write_text('{"peft_type": "LORA"}')
    with pytest.raises(AdapterError, match=CONFIG_NAME):
        model.save_pretrained(peft)
    # nor is a transformers model's (or a user's) config.json, where ltuning writes its pipeline marker
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(AdapterError, match="config.json"):
        model.save_pretrained(hf)
    assert (hf / "config.json").read_text() == '{"model_type": "bert"}' and not (hf / CONFIG_NAME).exists()
    # told to: --overwrite replaces it
    assert main(train_argv(env["tiny"], env["train"], out, "--overwrite")) == 0
    assert "library_name: ltuning" in (out / "README.md").read_text()
    # ltuning's own files are replaced without being told (saving twice)
    model.save_pretrained(out)


def test_a_peft_adapter_in_the_output_folder_is_not_called_a_run(env, tmp_path, capsys):
    """peft's adapter_config.json has our file name: train names it as a file ltuning did not write (not
    'already holds a run', which would suggest --resume), keeps it through a failed --overwrite run, and
    replaces it only when the adapter is saved."""
    out = tmp_path / "peft"
    out.mkdir()
    (out / CONFIG_NAME).write_text('{"peft_type": "LORA"}')
    line = one_line(capsys, main(train_argv(env["tiny"], env["train"], out)), CONFIG_NAME)
    assert "did not write" in line and "holds a run" not in line
    one_line(capsys, main(train_argv(env["tiny"], env["train"], out, "--resume")), "did not write")
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\n")  # no rows: the run fails after the output folder was accepted
    assert main(train_argv(env["tiny"], bad, out, "--overwrite")) == 2
    assert (out / CONFIG_NAME).read_text() == '{"peft_type": "LORA"}'
    capsys.readouterr()
    assert main(train_argv(env["tiny"], env["train"], out, "--overwrite")) == 0
    assert json.loads((out / CONFIG_NAME).read_text())["method"]


def test_resume_never_replaces_a_finished_run(env, tmp_path, capsys):
    out = tmp_path / "done"
    shutil.copytree(env["adapter"], out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    rc = main(train_argv(env["tiny"], env["train"], out, "--resume", "--method", "prompt"))
    line = one_line(capsys, rc, "no checkpoint")
    assert str(out) in line and "--overwrite" in line
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_evaluate_never_writes_over_its_input(env, tmp_path, capsys):
    data = tmp_path / "data.csv"
    shutil.copy(env["valid"], data)
    original = data.read_bytes()
    evaluate = ["evaluate", "--adapter", str(env["adapter"]), "--file", str(data), "--text-column", "text",
                "--label-column", "label", "--quiet"]
    for extra in ([], ["--overwrite"]):
        one_line(capsys, main([*evaluate, "--output", str(data), *extra]), "evaluate reads")
        assert data.read_bytes() == original
    one_line(capsys, main([*evaluate, "--output", str(env["adapter"] / CONFIG_NAME)]), "evaluate reads")
    # every file the adapter folder holds, the pipeline's config.json marker too, whatever the flags
    before = (env["adapter"] / "config.json").read_bytes()
    one_line(capsys, main([*evaluate, "--output", str(env["adapter"] / "config.json"), "--overwrite"]),
             "evaluate reads")
    assert (env["adapter"] / "config.json").read_bytes() == before
    # an existing file evaluate did not write: only with --overwrite
    notes = tmp_path / "notes.json"
    notes.write_text("{}")
    one_line(capsys, main([*evaluate, "--output", str(notes)]), "--overwrite")
    assert notes.read_text() == "{}"
    assert main([*evaluate, "--output", str(notes), "--overwrite"]) == 0
    assert main([*evaluate, "--output", str(notes)]) == 0  # its own metrics: replaced as before


def test_train_never_reads_a_file_it_writes(env, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    data = out / "loss.png"  # an odd name, but a readable table
    shutil.copy(env["train"], data)
    argv = train_argv(env["tiny"], data, out)
    argv[argv.index("--train-file") + 1:argv.index("--train-file") + 2] = [str(data)]
    one_line(capsys, main(argv), "would write over")
    # the adapter's config.json marker is written too, and --overwrite does not make that right
    marker = out / "config.json"
    shutil.copy(env["train"], marker)
    one_line(capsys, main(train_argv(env["tiny"], marker, out, "--overwrite")), "would write over")
    assert marker.read_bytes() == Path(env["train"]).read_bytes()


# ---------------------------------------------------------------------- 10: a full disk
def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_saving_the_adapter_leaves_no_trace(env, tmp_path, capsys, monkeypatch):
    import safetensors.torch

    def save_file(state, path, metadata=None):
        Path(path).write_bytes(b"half a file")
        disk_full()

    out = tmp_path / "new"
    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    one_line(capsys, main(train_argv(env["tiny"], env["train"], out)), "No space left on device")
    assert not out.exists()  # no empty run folder


def test_a_full_disk_while_replacing_an_adapter_keeps_the_old_one(env, tmp_path, monkeypatch):
    folder = copy_adapter(env, tmp_path)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    model = load_adapter(env["adapter"], model=str(env["tiny"]))
    torch.nn.init.normal_(next(model.method.parameters()))
    real = Path.write_text

    def write_text(self, *args, **kwargs):  # the weights and card are written, then the config fails
        if CONFIG_NAME in self.name:
            self.open("w").write("{partial")
            disk_full()
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)
    with pytest.raises(OSError, match="No space left") as e:
        model.save_pretrained(folder)
    assert isinstance(e.value, WriteError)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # no new weights, no temporary files


def test_a_full_disk_while_writing_a_checkpoint_keeps_the_last_good_one(env, tmp_path, capsys, monkeypatch):
    import ltuning.checkpoint as ck

    out = tmp_path / "ck"
    calls = [0]
    real = ck.torch.save

    def save(obj, f, *args, **kwargs):
        calls[0] += 1
        if "step-2" in str(f) and OPTIMIZER_NAME in str(f):
            Path(f).write_bytes(b"half")
            disk_full()
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(ck.torch, "save", save)
    rc = main(train_argv(env["tiny"], env["train"], out, "--max-steps", "3", "--checkpoint-every", "1"))
    line = one_line(capsys, rc, "No space left on device")
    assert "step-1" in line
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-1"]  # no .tmp-step-2
    assert not (out / CONFIG_NAME).exists()
    monkeypatch.setattr(ck.torch, "save", real)
    assert main(train_argv(env["tiny"], env["train"], out, "--max-steps", "3", "--checkpoint-every", "1",
                           "--resume")) == 0
    assert "resumed from" in capsys.readouterr().out


# ---------------------------------------------------------------------- 7: unreadable inputs
@pytest.fixture
def unreadable(monkeypatch):
    """Files the user may not read (tests run as root, which ignores modes): open() and Path.read_text()
    raise PermissionError for the paths added to the returned set."""
    import builtins
    import io

    denied: set[str] = set()
    real_open, real_read_text = builtins.open, Path.read_text

    def check(path):
        if str(path) in denied:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))

    def fake_open(file, *args, **kwargs):
        check(file)
        return real_open(file, *args, **kwargs)

    def read_text(self, *args, **kwargs):
        check(self)
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)
    monkeypatch.setattr(Path, "read_text", read_text)
    return denied


def test_unreadable_input_files_are_one_line_errors(env, tmp_path, capsys, unreadable):
    train, valid = tmp_path / "train.csv", tmp_path / "valid.csv"
    shutil.copy(env["train"], train)
    shutil.copy(env["valid"], valid)
    cols = ["--text-column", "text", "--label-column", "label"]
    unreadable.add(str(train))
    one_line(capsys, main(train_argv(env["tiny"], train, tmp_path / "a")), "Permission denied")
    unreadable.clear()
    unreadable.add(str(valid))
    one_line(capsys, main(train_argv(env["tiny"], train, tmp_path / "b", "--validation-file", str(valid))),
             "Permission denied")
    one_line(capsys, main(["evaluate", "--adapter", str(env["adapter"]), "--file", str(valid), *cols,
                           "--output", str(tmp_path / "m.json")]), "Permission denied")
    one_line(capsys, main(["predict", "--adapter", str(env["adapter"]), "--file", str(valid)]), "Permission denied")
    unreadable.add(str(env["adapter"] / CONFIG_NAME))
    one_line(capsys, main(["predict", "--adapter", str(env["adapter"]), "a good film"]), "Permission denied")
    config = tmp_path / "c.json"
    config.write_text("{}")
    unreadable.add(str(config))
    one_line(capsys, main(["predict", "--config", str(config), "--adapter", str(env["adapter"]), "x"]),
             "Permission denied")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ---------------------------------------------------------------------- 8: bytes that are not UTF-8
BAD = b"caf\xe9".decode("utf-8", "surrogateescape")  # how Python hands such an argument over


@pytest.mark.parametrize("argv, name", [
    (["predict", "--adapter", "ADAPTER", BAD], "argument 4"),
    (["predict", "--adapter", "ADAPTER", "--candidate-labels", f"good,{BAD}", "a film"], "--candidate-labels"),
    (["predict", "--adapter", "ADAPTER", f"--hypothesis-template={BAD} {{}}", "a film"], "--hypothesis-template"),
    (["train", "--model", "MODEL", "--train-file", "TRAIN", "--text-column", "text", "--label-column", "label",
      "--label-texts", f"bad,{BAD}", "--max-steps", "1", "--output-dir", "out"], "--label-texts"),
])
def test_arguments_that_are_not_utf8_are_one_line_errors(env, capsys, argv, name):
    subs = {"ADAPTER": str(env["adapter"]), "MODEL": str(env["tiny"]), "TRAIN": str(env["train"])}
    line = one_line(capsys, main([subs.get(a, a) for a in argv]), "not UTF-8")
    assert line.startswith(f"error: {name}:") and "caf\\xe9" in line
    assert not Path("out").exists()


def test_stdin_that_is_not_utf8_is_a_one_line_error(env, capsys, monkeypatch):
    import io
    import sys

    monkeypatch.setattr(sys, "stdin", io.StringIO(f"a good film\n{BAD}\n"))
    one_line(capsys, main(["predict", "--adapter", str(env["adapter"])]), "stdin, line 2: not UTF-8")
    assert capsys.readouterr().out == ""


def test_a_rename_failing_midway_names_the_files_already_replaced(tmp_path, monkeypatch):
    """atomic_write_many's promise has one gap it cannot close (renames are atomic one by one): when the
    second rename fails, the error says which file was replaced instead of 'nothing was written'."""
    import os as os_module

    from ltuning import fileio

    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text("old a")
    b.write_text("old b")
    real, calls = os_module.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(fileio.os, "replace", replace)
    with pytest.raises(WriteError, match=r"b\.json: .*a\.json already replaced, the other files left") as e:
        fileio.atomic_write_many([(a, lambda p: p.write_text("new a")), (b, lambda p: p.write_text("new b"))])
    assert "nothing was written" not in str(e.value)
    assert (a.read_text(), b.read_text()) == ("new a", "old b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json"]  # no temporary file left


def test_settings_record_rope_per_layer_type_and_its_default_type():
    """Gemma 3 keeps RoPE per layer type (transformers 5.x): each is recorded; a RoPE model without scaling
    records rope_type 'default', so a record made where the config had no rope_scaling still refuses a scaled one."""
    from transformers import Gemma3TextConfig, LlamaConfig

    from ltuning.backbones import config_settings, settings_differ

    gemma = config_settings(Gemma3TextConfig())
    assert {"full_attention.rope_theta", "sliding_attention.rope_theta", "full_attention.rope_type"} <= set(gemma)
    scaled = Gemma3TextConfig(rope_parameters={"full_attention": {"rope_type": "linear", "rope_theta": 1e6,
                                                                  "factor": 8.0},
                                               "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})
    assert settings_differ(gemma, config_settings(scaled)) == [
        "full_attention.rope_type: trained 'default', now 'linear'"]
    plain = config_settings(LlamaConfig())
    assert plain["rope_type"] == "default"
    assert settings_differ(plain, config_settings(LlamaConfig(rope_scaling={"rope_type": "linear", "factor": 2.0}))) == [
        "rope_type: trained 'default', now 'linear'"]


def test_settings_read_from_float32_are_the_same_setting():
    """A GGUF file stores 1e-05 as float32 (9.999999747e-06): the same setting, not another backbone."""
    from ltuning.backbones import settings_differ

    assert settings_differ({"rms_norm_eps": 1e-05, "rope_theta": 10000}, {"rms_norm_eps": 9.999999747378752e-06,
                                                                          "rope_theta": 10000.0}) == []
    assert settings_differ({"rms_norm_eps": 1e-05}, {"rms_norm_eps": 1e-06}) == ["rms_norm_eps: trained 1e-05, now 1e-06"]
