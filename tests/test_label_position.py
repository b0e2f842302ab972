"""label_position="after" (decoders, lt-prompt): rows are [text][label soft prompt], the head reads the last
prompt position, and prediction runs each text once for all K labels (a shared text cache). The shared
path must give the full rows' scores; the option must train, save and load like any other."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_bert, tiny_llama
from test_cli import TRAIN, VALID, assert_clean_error, write_csv
from test_families import DECODERS, build, left_pad

from ltuning.adapter import CONFIG_NAME, load_adapter
from ltuning.backbones import Backbone
from ltuning.cli import main
from ltuning.config import LabelPosition, LTuningConfig
from ltuning.errors import AdapterError, ConfigError
from ltuning.model import LTuningModel

LABELS = ["negative", "positive", "neutral"]
LABEL_TEXTS = ["it is negative", "it is positive", "neutral"]  # 3, 3 and 1 tokens: a padded prompt
TEXTS = ["the movie was very good", "boring", "i really hated the plot and the actors were awful , not fun at all",
         "great fun", "the story is quite dull", "wonderful"]


def make(backbone: Backbone, position: str = "after", **kw) -> LTuningModel:
    cfg = LTuningConfig(method="lt-prompt", label_names=LABELS, label_texts=LABEL_TEXTS, label_position=position,
                        **kw)
    model = LTuningModel(backbone, cfg)
    torch.manual_seed(1)
    with torch.no_grad():  # move off the initialisation so that labels score differently
        for p in model.method.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def llama() -> Backbone:
    torch.manual_seed(0)
    return Backbone(*tiny_llama(), name="tiny-llama")


def full_rows(model: LTuningModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, K) from the B*K full [text][prompt] rows, one forward, no shared cache."""
    B, K = batch["input_ids"].shape[0], model.num_labels
    rows = {k: v.repeat_interleave(K, dim=0) for k, v in batch.items()}
    with torch.no_grad():
        return model(rows, torch.arange(K).repeat(B)).view(B, K)


def test_config_round_trip_and_default():
    assert LTuningConfig().label_position == LabelPosition.BEFORE
    cfg = LTuningConfig(method="lt-prompt", label_names=["a", "b"], label_position="after")
    assert cfg.to_dict()["label_position"] == "after"
    assert LTuningConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))).label_position == LabelPosition.AFTER


def test_after_row_is_text_then_prompt():
    """One text, one label, no padding: the model run by hand on [text embeddings][real prompt vectors]."""
    model = make(llama(), score_head="paper")  # the head computed by hand / its parameters
    inj = model.injection()
    emb = model.backbone.model.get_input_embeddings()
    with torch.no_grad():
        for text in TEXTS[:3]:
            batch = model.tokenize([text])
            for k in range(len(LABELS)):
                prompt = inj.prompt[k][inj.prompt_mask[k]]
                seq = torch.cat([emb(batch["input_ids"])[0], prompt], 0).unsqueeze(0)
                last = model.backbone.model(inputs_embeds=seq).last_hidden_state[0, -1]
                two = model.method.head(last)
                got = model(batch, torch.tensor([k]))
                torch.testing.assert_close(got[0], two[1] - two[0], atol=1e-5, rtol=1e-5)


def test_after_is_a_different_model_than_before():
    bb = llama()
    before, after = make(bb, "before"), make(bb, "after")
    after.method.load_state_dict(before.method.state_dict())
    assert not torch.allclose(before.score_texts(TEXTS), after.score_texts(TEXTS), atol=1e-3)


@pytest.mark.parametrize("side", ["right", "left"])
def test_shared_text_equals_full_rows(side):
    model = make(llama())
    batch = model.tokenize(TEXTS)  # variable lengths, right-padded
    if side == "left":
        batch = left_pad(batch)
    assert model.shares_text() is False  # gradients on: training's full rows
    with torch.no_grad():
        assert model.shares_text()
        fast = model.class_scores(batch)
    torch.testing.assert_close(fast, full_rows(model, batch), atol=1e-5, rtol=1e-5)
    ref = full_rows(model, model.tokenize(TEXTS))
    for max_tokens in (None, 1, 30, 10**9):
        for batch_size in (1, 4, 64):
            torch.testing.assert_close(model.score_texts(TEXTS, batch_size=batch_size, max_tokens=max_tokens), ref,
                                       atol=1e-5, rtol=1e-5)


def test_shared_text_calls_the_text_once(monkeypatch):
    """The fast path is really taken: two model calls per batch (texts, then the prompts of all labels)."""
    model = make(llama())
    calls = []
    orig = model.backbone.model.forward
    monkeypatch.setattr(model.backbone.model, "forward", lambda *a, **k: calls.append(k) or orig(*a, **k))
    model.score_texts(TEXTS, max_tokens=10**9)
    assert len(calls) == 2
    assert calls[0]["input_ids"].shape[0] == len(TEXTS)
    assert calls[1]["inputs_embeds"].shape[:2] == (len(TEXTS) * len(LABELS), model.config.label_length)


@pytest.mark.parametrize("family", DECODERS)
def test_shared_text_every_decoder_family(family):
    """Every decoder family, left and right padding (gemma's tiny sliding window takes the full-row fallback)."""
    model = make(build(family))
    batch = model.tokenize(TEXTS)
    ref = full_rows(model, batch)
    with torch.no_grad():
        torch.testing.assert_close(model.class_scores(batch), ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.class_scores(left_pad(batch)), ref, atol=1e-5, rtol=1e-5)


def test_candidate_labels_use_the_same_order():
    model = make(llama(), score_head="paper")  # the head computed by hand / its parameters
    names = ["bad", "good", "fun", "dull"]
    probs = model.predict(TEXTS, candidate_labels=names, return_scores=True)
    inj = model.method(*model.backbone.encode_labels(names, model.backbone.label_token_length(names)))
    batch = model.tokenize(TEXTS)
    rows = {k: v.repeat_interleave(len(names), dim=0) for k, v in batch.items()}
    with torch.no_grad():
        ref = model(rows, torch.arange(len(names)).repeat(len(TEXTS)), injection=inj).view(len(TEXTS), -1)
    for p, r in zip(probs, ref.softmax(-1), strict=True):
        scores = dict(zip(p["labels"], p["scores"], strict=True))
        torch.testing.assert_close(torch.tensor([scores[n] for n in names]), r, atol=1e-5, rtol=1e-5)


def test_gradients_reach_only_the_method():
    model = make(llama(), score_head="paper")  # the head computed by hand / its parameters
    model.train()
    frozen = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    batch = model.tokenize(TEXTS[:4])
    loss = model.loss(batch, None, torch.tensor([0, 1, 2, 0]), torch.tensor([1, 0, 1, 1]))
    loss.backward()
    names = {n for n, p in model.method.named_parameters()}
    assert names == {"head.weight", "project.weight"}
    for n, p in model.method.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n
    assert all(p.grad is None for p in model.backbone.parameters())
    before = {n: p.detach().clone() for n, p in model.method.named_parameters()}
    opt.step()
    assert all(not torch.equal(before[n], p) for n, p in model.method.named_parameters())
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, frozen[k]), k


def test_save_load_round_trip(tmp_path):
    bb = llama()
    model = make(bb)
    model.save_pretrained(tmp_path / "a")
    saved = json.loads((tmp_path / "a" / CONFIG_NAME).read_text())
    assert saved["label_position"] == "after"
    assert "label position | after" in (tmp_path / "a" / "README.md").read_text()
    loaded = load_adapter(tmp_path / "a", backbone=bb)
    assert loaded.config.label_position == LabelPosition.AFTER and loaded.prompt_after
    torch.testing.assert_close(loaded.score_texts(TEXTS), model.score_texts(TEXTS), atol=0, rtol=0)
    assert loaded.predict(TEXTS) == model.predict(TEXTS)
    # adapters saved before the option existed load as the paper's order
    del saved["label_position"]
    (tmp_path / "a" / CONFIG_NAME).write_text(json.dumps(saved))
    assert load_adapter(tmp_path / "a", backbone=bb).config.label_position == LabelPosition.BEFORE
    saved["label_position"] = "middle"
    (tmp_path / "a" / CONFIG_NAME).write_text(json.dumps(saved))
    with pytest.raises(AdapterError, match="label_position must be 'before' or 'after'"):
        load_adapter(tmp_path / "a", backbone=bb)


def test_encoder_refuses_after():
    torch.manual_seed(0)
    bert = Backbone(*tiny_bert(), name="tiny-bert")
    with pytest.raises(ConfigError, match="needs a decoder.*bidirectional"):
        make(bert)


@pytest.mark.parametrize("method", ["lt-prefix", "prefix", "prompt"])
def test_other_methods_refuse_after(method):
    # the method's own check (Method.check_config), before anything is built
    with pytest.raises(ConfigError, match=f"not supported for method '{method}'.*--method lt-prompt"):
        LTuningModel(llama(), LTuningConfig(method=method, label_names=LABELS, label_position="after"))


def test_after_needs_last_token_pooling():
    with pytest.raises(ConfigError, match="last soft-prompt position"):
        make(llama(), text_pooling="mean")


@pytest.fixture(scope="module")
def tiny_llama_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "tiny-llama"
    model, tok = tiny_llama()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def cli_train(model_dir, tmp_path, out, *extra):
    train = write_csv(tmp_path / "train.csv", TRAIN)
    valid = write_csv(tmp_path / "valid.csv", VALID)
    return main(["train", "--model", model_dir, "--train-file", str(train), "--validation-file", str(valid),
                 "--text-column", "text", "--label-column", "label", "--max-steps", "2", "--batch-size", "4",
                 "--eval-every", "2", "--output-dir", str(out), "--quiet", "--method", "lt-prompt", *extra])


def test_cli_label_position(tiny_llama_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "after"
    assert cli_train(tiny_llama_folder, tmp_path, out, "--label-position", "after") == 0
    assert json.loads((out / CONFIG_NAME).read_text())["label_position"] == "after"
    capsys.readouterr()
    assert main(["predict", "--adapter", str(out), "what a great film", "boring"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [s.split("\t")[0] for s in lines] == load_adapter(out).predict(["what a great film", "boring"])
    rc = cli_train(tiny_llama_folder, tmp_path, tmp_path / "bad", "--label-position", "after", "--method", "lt-prefix")
    assert_clean_error(capsys, rc, match="label_position='after' is not supported for method 'lt-prefix'")
    assert not (tmp_path / "bad").exists()


def test_cli_help_names_the_option(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--label-position {before,after}" in text and "n + K*l" in text


def test_resume_refuses_the_other_order(tiny_llama_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "ckpt"
    assert cli_train(tiny_llama_folder, tmp_path, out, "--label-position", "after", "--checkpoint-every", "1") == 0
    capsys.readouterr()
    rc = cli_train(tiny_llama_folder, tmp_path, out, "--checkpoint-every", "1", "--resume")
    assert_clean_error(capsys, rc, match="label_position: checkpoint 'after', now 'before'")  # the default, shown by name
