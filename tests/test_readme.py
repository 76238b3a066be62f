"""Every command in README.md runs as written (shrunk to seconds), and every command it quotes inline parses.

How the README's examples are run, in document order, in one empty directory that holds a tiny image tree
`photos/CLASS/*.png` and an image `new.jpg`:

- ```bash blocks, one command per line (`#` starts a comment):
  - `bnas ...` runs in this process (`bnas.cli.main`) and must exit 0, after these changes, which make it
    take seconds on synthetic data: a data set other than `synthetic` or `folder` becomes `synthetic` (its
    `--data-dir` and `--download` are dropped); `search` gets `--epochs 1` (`--budget 2s` in place of its
    budget) and tiny sizes appended, its `--arch-start-epoch` dropped; `train`
    gets `--budget 2s` in place of its budget (else `--epochs 1` appended) and tiny sizes appended; `study`
    gets `--dry-run` appended (the ```json block that follows it in the README is its `--config` file);
    `bench` gets one tiny step appended. Appended options override the README's (argparse keeps the last).
  - `make TARGET` needs the target in the Makefile; `pip install -e '.[EXTRA,...]'` needs the extras in
    pyproject.toml. Any other program fails the test until a rule for it is added here.
- ```python blocks run with `exec`, with `dataset="..."` -> `dataset="synthetic"`, `epochs=N` -> 1,
  `budget="..."` -> "2s", `init_channels=N` -> 4, `batch_size=N` -> 8, `subset=N` -> 64.
- Inline `bnas ...` (and `torchrun ... -m bnas.cli ...`) in the text and tables must parse with bnas's own
  argument parser, after placeholders are replaced (NAME -> a bundled genotype, RUN_DIR/RUN -> a run
  directory, FILE, DIR, IMAGE..., ...), `[optional]` brackets are dropped, and every alternative of an
  `a|b|c` token is tried. A span of bare words (`bnas report`) names a command: its `--help` must work.
- The bundled-cell table's parameter counts and parameter-free ops are those of the networks bnas builds.
"""

from __future__ import annotations

import itertools
import re
import shlex
import tomllib
from pathlib import Path

import pytest

from bnas.cli import build_parser, main

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()

TINY_SEARCH = ["--epochs", "1", "--batch-size", "8", "--init-channels", "4", "--synthetic-size", "32"]
TINY_SEARCH += ["--eval-every", "0", "--quiet"]
TINY_TRAIN = ["--init-channels", "4", "--layers", "2", "--enhance-cells", "1", "--batch-size", "8"]
TINY_TRAIN += ["--test-subset", "16", "--quiet"]
TINY_BENCH = ["--steps", "1", "--warmup", "0", "--batch-size", "2", "--init-channels", "4"]
PLACEHOLDERS = {
    "NAME": "BNASv2_CLR_v1", "FILE": "g.json", "RUN_DIR": "runs/x", "RUN": "runs/x", "IMAGE...": "new.jpg",
    "IMAGE": "new.jpg", "DIR": "data", "SUBSET": "subset", "IMAGENET": "imagenet", "STUDY.json": "study.json",
    "FILE.json": "options.json", "N": "10", "PATH": "p",
}  # fmt: skip
PY_SHRINK = [
    (r'dataset="[^"]*"', 'dataset="synthetic"'), (r"\bepochs=\d+", "epochs=1"), (r'budget="[^"]*"', 'budget="2s"'),
    (r"\binit_channels=\d+", "init_channels=4"), (r"\bbatch_size=\d+", "batch_size=8"), (r"\bsubset=\d+", "subset=64"),
]  # fmt: skip


def blocks(text: str) -> list[tuple[str, str]]:
    """The fenced code blocks as (language, body), in document order."""
    return [(m[1], m[2]) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)]


def shell_commands(body: str) -> list[list[str]]:
    return [argv for line in body.replace("\\\n", " ").splitlines() if (argv := shlex.split(line, comments=True))]


def option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv[:-1] else None


def without(argv: list[str], name: str, takes_value: bool = True) -> list[str]:
    if name not in argv:
        return argv
    i = argv.index(name)
    return argv[:i] + argv[i + 1 + takes_value :]


def shrink(argv: list[str]) -> list[str]:
    """A README command made to take seconds on synthetic data (the rules of the module docstring)."""
    command = argv[1]
    if command in ("search", "train"):
        dataset = option(argv, "--dataset")
        if dataset not in ("synthetic", "folder"):
            argv = without(without(without(argv, "--dataset"), "--data-dir"), "--download", takes_value=False)
            argv = [*argv, "--dataset", "synthetic"]
    if command == "search":  # a budget: 2 s in place of it (--epochs and --budget exclude each other)
        argv = without(argv, "--arch-start-epoch")  # a warm-up as long as the shrunk search would leave no steps
        if "--budget" in argv:
            return [*without(argv, "--budget"), *TINY_SEARCH[2:], "--budget", "2s"]
        return [*argv, *TINY_SEARCH]
    if command == "train":
        length = ["--budget", "2s"] if "--budget" in argv else ["--epochs", "1"]
        return [*without(argv, "--budget"), *length, *TINY_TRAIN]
    if command == "study":
        return [*argv, "--dry-run"]
    if command == "bench":
        return [*argv, *TINY_BENCH]
    return argv


def make_images(tmp: Path) -> None:
    from PIL import Image

    for c, color in enumerate([(200, 40, 40), (40, 60, 210)]):
        folder = tmp / "photos" / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(20):
            shade = tuple(max(0, min(255, v + 5 * i - 50)) for v in color)
            Image.new("RGB", (32, 32), shade).save(folder / f"{i}.png")
    Image.new("RGB", (40, 32), (190, 50, 40)).save(tmp / "new.jpg")


def test_every_shell_and_python_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    make_images(tmp_path)
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    code_blocks = blocks(README)
    ran = []
    for k, (lang, body) in enumerate(code_blocks):
        if lang == "python":
            code = body
            for pattern, repl in PY_SHRINK:
                code = re.sub(pattern, repl, code)
            exec(compile(code, f"README.md python block {k}", "exec"), {"__name__": "readme"})
            ran.append(f"python block {k}")
            continue
        if lang != "bash":
            continue
        for argv in shell_commands(body):
            text = shlex.join(argv)
            if argv[0] == "make":
                assert set(argv[1:]) <= targets, f"README: {text}: no such Makefile target"
            elif argv[:3] == ["pip", "install", "-e"]:
                named = re.findall(r"\[([^\]]*)\]", argv[3])
                assert all(e in extras for group in named for e in group.split(",")), f"README: {text}"
            elif argv[0] == "bnas":
                config = option(argv, "--config")
                if config and not Path(config).exists():  # the JSON block that follows the command
                    follow = next(b for lang2, b in code_blocks[k + 1 :] if lang2 == "json")
                    Path(config).write_text(follow)
                shrunk = shrink(argv)
                try:
                    rc = main(shrunk[1:])
                except SystemExit as e:  # argparse
                    rc = e.code
                assert rc == 0, f"README command failed: {text}\n(run as {shlex.join(shrunk)})\n{capsys.readouterr()}"
                ran.append(text)
            else:
                pytest.fail(f"README: no rule to run {text!r}; add one to tests/test_readme.py")
    assert any(r.startswith("bnas search") for r in ran) and any(r.startswith("bnas train") for r in ran)
    assert any(r.startswith("bnas predict") for r in ran) and any(r.startswith("python") for r in ran)


def inline_commands(text: str) -> list[str]:
    """Inline code spans that are bnas commands (table cells unescape `\\|`)."""
    spans = re.findall(r"(?<!`)`([^`]+)`(?!`)", re.sub(r"^```.*?^```", "", text, flags=re.S | re.M))
    spans = [" ".join(s.replace("\\|", "|").split()) for s in spans]  # a span may wrap across lines
    return [s for s in spans if s.startswith("bnas ") or (s.startswith("torchrun ") and "-m bnas.cli" in s)]


def expansions(span: str) -> list[list[str]]:
    """The argument vectors a quoted command stands for: placeholders filled, brackets dropped, alternatives."""
    if span.startswith("torchrun "):
        span = "bnas " + span.split("-m bnas.cli", 1)[1]
    span = span.replace("[", "").replace("]", "").removesuffix(" ...")
    tokens = [[PLACEHOLDERS.get(alt, alt) for alt in tok.split("|")] for tok in shlex.split(span)]
    return [list(combo) for combo in itertools.product(*tokens)]


def _parses(parser, args: list[str]) -> bool:
    try:
        parser.parse_args(args)
    except SystemExit as e:
        return e.code == 0  # --help
    return True


def test_every_inline_command_parses(capsys):
    parser = build_parser()
    spans = inline_commands(README)
    assert len(spans) > 20
    for span in spans:
        for argv in expansions(span):
            if _parses(parser, argv[1:]):
                continue
            if all(not a.startswith("-") for a in argv) and _parses(parser, [*argv[1:], "--help"]):
                continue  # `bnas report`: a command named in the text
            pytest.fail(f"README quotes `{span}`, which bnas does not parse as {shlex.join(argv)}:\n"
                        f"{capsys.readouterr().err}")  # fmt: skip


def test_bundled_cell_table_matches_the_networks():
    from bnas import build_network, count_parameters, get_genotype, list_genotypes

    rows = {m[1]: m[2].split("|") for m in re.finditer(r"^\| `(\w+)` \|(.*)$", README, re.M)}
    assert set(list_genotypes()) <= set(rows)
    for name in list_genotypes():
        g = get_genotype(name)
        net = build_network(g) if g.space == "bcnn" else build_network(g, channels=36, layers=20)
        cells = [c.strip() for c in rows[name]]
        assert cells[2].split()[0] == f"{count_parameters(net):,}", name
        assert cells[3] == " / ".join(str(v) for v in g.parameter_free().values()), name


def test_the_shell_rules_shrink_and_expand_as_documented():
    assert shrink(["bnas", "train", "--dataset", "cifar10", "--data-dir", "d", "--budget", "1h"])[:6] == [
        "bnas", "train", "--dataset", "synthetic", "--budget", "2s"
    ]  # fmt: skip
    assert expansions("bnas search|train --order 1|2")[3] == ["bnas", "train", "--order", "2"]
    assert expansions("torchrun --nproc_per_node 8 -m bnas.cli eval RUN_DIR") == [["bnas", "eval", "runs/x"]]
    broken = "see `bnas bench\n--no-batch-edges` there"  # the old README's slip, wrapped across lines
    with pytest.raises(SystemExit):
        build_parser().parse_args(expansions(inline_commands(broken)[0])[0][1:])
