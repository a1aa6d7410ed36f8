"""Every shell and Python example in README.md and docs/ is run here, or says why it is not.

The line before each ```bash, ```shell, ```console or ```python fence is an HTML comment
(invisible on GitHub and in the site):

    <!-- run -->               this test runs the block
    <!-- run: slow -->         the same, with the slow tests (the block trains)
    <!-- not-run: REASON -->   shown only; REASON says why (a GPU, the hub, hours, a server)
    <!-- run: exit 2 -->       run, and each command must be refused: exit code 2 and one
                               stderr line (bad input, see docs/bad-input.md)
    <!-- run: writes FILE -->  (any language) the block is a file the next blocks read, e.g. a
                               recipe: it is written to FILE

A bash, shell, console or python block without one fails ``test_every_example_is_marked``.

How a page's runnable blocks run (``test_examples_run``): in page order, in one scratch folder
per page, offline (HF_HUB_OFFLINE=1), with $OBERT_GLUE_DIR at the real GLUE copy.

- bash/shell: each command (``\\`` continuations joined, ``#`` comments dropped) must be
  ``obert ...`` or ``python -m obert ...`` (run in this process through ``obert.cli.main``; it
  must exit 0, and a trailing ``> FILE`` writes its stdout to FILE) or ``mkdir -p DIR``.
- console: the same for each ``$ `` line; the lines after it are its output, compared with the
  error line of a refused command (``...`` at the end: the rest is not compared), else not.
- python: exec'd, one namespace per page.

Stand-ins keep the examples fast: the hub id ``sentence-transformers/all-MiniLM-L6-v2`` is a tiny
random BERT with MiniLM-L6's 6 layers and tokenizer (hidden 32); ``runs/sst2`` and
``runs/sst2-80``, when a block reads one that no earlier block of the page wrote, are that model
fine-tuned on SST-2 and it pruned to 80%; and the options that only say how much work to do
(``SCALED_DOWN``: training rows, gradients, timing rounds) are set small whether the command
names them or not, so a command runs as written, only smaller.

Every ``obert`` command line in any block, run or not, may name only options its subcommand
has (``test_examples_name_real_options``), so a renamed flag fails here even in a block that is
only shown.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LANGS = {"bash", "shell", "console", "python"}
HUB_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
README_MAX_LINES = 200

FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+|~~~+)\s*(?P<lang>[\w-]*)")
MARK = re.compile(r"^\s*<!--\s*(?P<kind>run|not-run)\s*(?::\s*(?P<note>.*?))?\s*-->\s*$")


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    mark: str | None  # "run", "not-run" or None
    note: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def slow(self) -> bool:
        return self.mark == "run" and self.note == "slow"

    @property
    def refused(self) -> bool:
        return self.mark == "run" and self.note == "exit 2"

    @property
    def writes(self) -> str | None:
        m = re.fullmatch(r"writes (\S+)", self.note) if self.mark == "run" else None
        return m and m[1]


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of a page in the languages above, each with the comment before it."""
    lines = page.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, start = m["fence"], i
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            j += 1
        lang = m["lang"].lower()
        prev = next((t for t in reversed(lines[:start]) if t.strip()), "")
        mark = MARK.match(prev)
        if lang in LANGS or mark:
            body = "\n".join(t[len(m["indent"]):] for t in lines[start + 1:j])
            found.append(Block(page, start + 1, lang, body, mark and mark["kind"],
                               (mark and mark["note"]) or ""))
        i = j + 1
    return found


ALL = [b for p in PAGES for b in blocks(p)]
CODE = [b for b in ALL if b.lang in LANGS]


def console_output(block: Block) -> dict[str, list[str]]:
    """A console block's shown output, by the command line it follows."""
    shown: dict[str, list[str]] = {}
    current = None
    for t in block.text.splitlines():
        if t.startswith("$ "):
            current = shown.setdefault(t[2:].strip(), [])
        elif current is not None:
            current.append(t)
    return shown


def commands(block: Block) -> list[str]:
    """The command lines of a shell or console block: continuations joined, output dropped."""
    lines = block.text.splitlines()
    if block.lang == "console":
        lines = [t[2:] for t in lines if t.startswith("$ ")]
    joined, cur = [], ""
    for t in lines:
        cur += t.rstrip()
        if cur.endswith("\\"):
            cur = cur[:-1] + " "
            continue
        if cur.strip():
            joined.append(cur.strip())
        cur = ""
    return joined


def obert_argv(command: str) -> list[str] | None:
    """The arguments after ``obert`` (or ``python -m obert``) in a command line, else None."""
    words = shlex.split(command, comments=True)
    for k, w in enumerate(words):
        if w == "obert" and (k == 0 or words[k - 1] == "-m"):
            return words[k + 1:]
    return None


def test_there_are_examples() -> None:
    assert (ROOT / "docs" / "index.md").is_file(), "docs/ is missing"
    assert len(CODE) > 20, f"only {len(CODE)} example blocks found: is the fence parser broken?"
    assert any(b.mark == "run" for b in CODE)


@pytest.mark.parametrize("block", ALL, ids=lambda b: b.where)
def test_every_example_is_marked(block: Block) -> None:
    assert block.mark, (f"{block.where}: put <!-- run --> or <!-- not-run: why --> on the line "
                        "before this block")
    if block.mark == "not-run":
        assert len(block.note) >= 8, f"{block.where}: say why the block is not run"
    else:
        assert block.note in ("", "slow", "exit 2") or block.writes, (
            f"{block.where}: <!-- run -->, <!-- run: slow -->, <!-- run: exit 2 --> or "
            "<!-- run: writes FILE -->")


@functools.cache
def _subcommands() -> dict[str, argparse.ArgumentParser]:
    from obert.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {"": parser, **sub.choices}


@pytest.mark.parametrize("block", [b for b in CODE if b.lang != "python"], ids=lambda b: b.where)
def test_examples_name_real_options(block: Block) -> None:
    parsers = _subcommands()
    for command in commands(block):
        argv = obert_argv(command)
        if argv is None:
            continue
        name = "" if not argv or argv[0].startswith("-") else argv[0]  # "": obert --version
        assert name in parsers, f"{block.where}: no subcommand {name!r} in {command!r}"
        known = set(parsers[name]._option_string_actions)
        for word in argv:
            for part in word.strip("[]").split("|"):  # [--teacher T], [--bf16|--fp16]
                part = part.strip("[]").split("=")[0]
                if part.startswith("--"):
                    assert part in known, (f"{block.where}: `obert {name}` has no option {part} "
                                           f"(in {command!r})")


def test_readme_is_short_and_leads_with_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    lines = text.splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most 200)"
    first_block = next(b for b in blocks(ROOT / "README.md"))
    assert "make demo" in first_block.text and "make test" in first_block.text
    assert "benchmarks/results/" in text


def test_readme_tour_is_the_tested_one() -> None:
    # The README's tour is not run itself: its commands are the getting-started tour's, which is.
    tour = next(b for b in blocks(ROOT / "README.md") if "obert finetune" in b.text)
    ran = {c for b in blocks(ROOT / "docs" / "getting-started.md") if b.mark == "run"
           for c in commands(b)}
    missing = [c for c in commands(tour) if c not in ran]
    assert not missing, f"README.md's tour has commands docs/getting-started.md does not run: {missing}"


LINK = re.compile(r"\]\((?!https?://|#|mailto:)([^)\s]+)\)")


def test_readme_links_resolve() -> None:
    # The site's links are checked by `mkdocs build --strict`; the README is not part of it.
    for target in LINK.findall((ROOT / "README.md").read_text()):
        path = ROOT / target.split("#")[0]
        assert path.exists(), f"README.md links to {target}, which does not exist"


# -- running the examples ----------------------------------------------------------------------

# option -> the value the examples run with: how much work, never what the command does
SCALED_DOWN = {"--max-train-samples": "64", "--num-grads": "8", "--rounds": "1", "--warmup": "0",
               "--check-rows": "4"}


def scaled_down(argv: list[str]) -> list[str]:
    """``argv`` with the SCALED_DOWN options its subcommand has set small, given or not."""
    out = [SCALED_DOWN[argv[k - 1]] if k and argv[k - 1] in SCALED_DOWN else w
           for k, w in enumerate(argv)]
    parser = _subcommands().get(argv[0]) if argv else None
    if parser is not None and "--help" not in argv and "--list" not in argv:
        for option, value in SCALED_DOWN.items():
            if option in parser._option_string_actions and option not in argv:
                if option == "--num-grads" and "magnitude" in argv:
                    continue  # magnitude computes no Fisher and refuses its flags
                out += [option, value]
    return out


def _mentions(text: str, path: str) -> bool:
    return re.search(rf"(?<![\w/.-]){re.escape(path)}(?![\w.-])", text) is not None


def _writes(text: str, path: str) -> bool:
    return re.search(rf"--output\s+{re.escape(path)}(?![\w.-])", text) is not None


def _run_obert(argv: list[str], where: str, refused: bool = False,
               shown: list[str] | None = None) -> None:
    """Run ``obert argv`` in this process; ``refused``: it must end in one error line, and
    ``shown`` (a console block's output, ``...`` at the end for "and the rest") must be it."""
    from obert.cli import main

    out_file = None
    if ">" in argv:
        k = argv.index(">")
        argv, out_file = argv[:k], argv[k + 1]
    argv = argv if refused else scaled_down(argv)
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            rc = main(argv)
        except SystemExit as e:  # --help and --version exit through argparse
            rc = e.code or 0
    if refused:
        lines = stderr.getvalue().splitlines()
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("obert: error: "), (
            f"{where}: `obert {shlex.join(argv)}` should be refused with one line, got exit "
            f"{rc} and {lines}")
        if shown:
            want = " ".join(t.strip() for t in shown)
            got = lines[0]
            ok = got.startswith(want[:-3].rstrip()) if want.endswith("...") else got == want
            assert ok, f"{where}: the page shows {want!r}, obert says {got!r}"
        return
    assert rc == 0, (f"{where}: `obert {shlex.join(argv)}` exited {rc}: "
                     f"{stderr.getvalue()[-2000:]}")
    if out_file:
        Path(out_file).write_text(stdout.getvalue())


def _page_params() -> list:
    params = []
    for page in PAGES:
        runnable = [b for b in blocks(page) if b.mark == "run"]
        if runnable:
            marks = [pytest.mark.slow] if any(b.slow for b in runnable) else []
            params.append(pytest.param(page, marks=marks, id=str(page.relative_to(ROOT))))
    return params


@pytest.fixture(scope="session")
def docs_models(tmp_path_factory: pytest.TempPathFactory, minilm_path: Path,
                glue_dir: Path) -> dict[str, Path]:
    """The stand-ins: a random 6-layer BERT (hidden 32) with MiniLM's tokenizer, it fine-tuned on
    128 SST-2 rows, and that pruned to 80% (magnitude)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from obert.cli import main

    root = tmp_path_factory.mktemp("docs-models")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=6,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=512)
    BertForSequenceClassification(config).save_pretrained(root / "minilm", safe_serialization=True)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(root / "minilm")
    assert main(["finetune", "--model", str(root / "minilm"), "--task", "sst2", "--data-dir",
                 str(glue_dir), "--max-train-samples", "128", "--epochs", "1", "--output",
                 str(root / "sst2"), "--quiet"]) == 0
    assert main(["oneshot", "--model", str(root / "sst2"), "--task", "sst2", "--data-dir",
                 str(glue_dir), "--sparsity", "0.8", "--method", "magnitude", "--output",
                 str(root / "sst2-80"), "--quiet"]) == 0
    return {HUB_MODEL: root / "minilm", "runs/sst2": root / "sst2",
            "runs/sst2-80": root / "sst2-80"}


@pytest.mark.parametrize("page", _page_params())
def test_examples_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                      glue_dir: Path, docs_models: dict[str, Path]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OBERT_GLUE_DIR", str(glue_dir))
    stand_ins = {k: v for k, v in docs_models.items() if k != HUB_MODEL}
    namespace: dict = {"__name__": "__docs__"}
    for block in (b for b in blocks(page) if b.mark == "run"):
        if block.writes:
            Path(block.writes).write_text(block.text + "\n")
            continue
        text = block.text.replace(HUB_MODEL, str(docs_models[HUB_MODEL]))
        for name, source in stand_ins.items():
            if (_mentions(text, name) and not _writes(text, name)
                    and not (tmp_path / name).exists()):
                shutil.copytree(source, tmp_path / name)
        if block.lang == "python":
            exec(compile(text, block.where, "exec"), namespace)  # noqa: S102  (the page's code)
            continue
        substituted = Block(page, block.line, block.lang, text, block.mark, block.note)
        shown = console_output(substituted)
        for command in commands(substituted):
            words = shlex.split(command, comments=True)
            if not words:  # a comment line
                continue
            if words[:2] == ["mkdir", "-p"]:
                for folder in words[2:]:
                    Path(folder).mkdir(parents=True, exist_ok=True)
                continue
            argv = obert_argv(command)
            assert argv is not None, (f"{block.where}: a runnable shell block holds only obert "
                                      f"commands, not {command!r} (mark it not-run)")
            _run_obert(argv, block.where, block.refused, shown.get(command))
