"""Tiny random models and tokenizers built from configs: no network, seconds per test."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

WORDS = (
    "the a movie film was is very not good bad great awful boring fun loved hated plot actors story "
    "negative positive neutral acceptable unacceptable entailment sentiment text label it this and "
    "of to in what display wowed i am really quite terrible wonderful dull"
).split()
#: Short label names tests use. Two labels the vocabulary lacks both become [CLS] [UNK] [SEP], the same
#: tokens, which ltuning refuses (they would always tie); these ids come after WORDS', so adding them moves
#: no token of the texts above (nor the pinned numbers of test_regression.py).
LABEL_WORDS = "neg pos neu b c 0 1 2 no yes method =".split()


def make_tokenizer(kind: str, extra_words: tuple[str, ...] = ()):
    """A word-level fast tokenizer; encoders get [CLS] x [SEP] (y [SEP]) templates, decoders get none.
    ``extra_words`` get ids after every other word (so the ids of the others do not move)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    words = specials + sorted(set(WORDS)) + [w for w in LABEL_WORDS if w not in WORDS]
    words += [w for w in dict.fromkeys(extra_words) if w not in words]
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if kind == "encoder":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
        )
        return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                       cls_token="[CLS]", sep_token="[SEP]")
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", eos_token="[SEP]")


def tiny_bert():
    from transformers import BertConfig, BertModel

    cfg = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64)
    return BertModel(cfg), make_tokenizer("encoder")


def tiny_llama():
    from transformers import LlamaConfig, LlamaModel

    cfg = LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128)
    return LlamaModel(cfg), make_tokenizer("decoder")


TINY = {"bert": tiny_bert, "llama": tiny_llama}


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(params=sorted(TINY))
def family(request):
    return request.param


@pytest.fixture
def backbone(family):
    from ltuning.backbones import Backbone

    model, tok = TINY[family]()
    return Backbone(model, tok, name=f"tiny-{family}")


def rerun(tmp_path, content: dict):
    """`ltuning train --config run_config.json` with ``content`` as that file: the parsed arguments, and the
    run_config.json this rerun would write (``cli._resolved_config``)."""
    from ltuning.cli import _apply_config, _resolved_config, build_parser

    path = tmp_path / "run_config.json"
    path.write_text(json.dumps(content))
    parser = build_parser()
    argv, _ = _apply_config(parser, ["train", "--config", str(path)])
    args = parser.parse_args(argv)
    return args, _resolved_config(args)
