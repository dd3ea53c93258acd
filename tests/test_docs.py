"""Everything the Markdown docs name exists in the code as it is now: a file, heading, command,
flag or Python name that was renamed or removed fails here until the doc says what is true.

Docs: README.md and its Chinese edition README.zh-CN.md, docs/*.md, benchmarks/README.md,
notebooks/README.md, saved_models/README.md and the renderings in docs/notebooks/, which are
what a reader opens (notebooks/render.py writes them from the notebooks: a stale reference
there is fixed in the notebook, then rendered again). The rules read the tree and parse its Python with `ast` at run time, so
nothing here lists the project's flags, modules or files; no TensorFlow is imported.

1. Links and images `[..](target)`: a relative target exists, relative to the doc; an
   `#anchor` (alone or after a Markdown file) is a heading of that file by GitHub's slugs:
   markup dropped, lowercase, punctuation other than `-` and `_` dropped, each space a `-`,
   `-1`, `-2`, ... after repeats. Targets with a scheme (`https:`, `mailto:`) are not followed.
2. Paths, in code spans and code blocks: a word whose first part is a top-level entry of the
   repository (`keras_tutorial/fastpath.py`, `docs/data.md`, `tests/test_serve.py`, `.ci/run`)
   exists; `<placeholder>` and `*` match any name. `saved_models/...` and `runs/...` are what
   a user's runs write and are not checked (saved_models/README.md itself is). A bare name
   with a source extension (`fastpath.py`, `gpu_check.sh`, `design.md`) is a file somewhere
   in the repository. Other bare names (`run.json`, `image.png`) are a run's outputs or the
   user's files, and absolute paths (`/usr/share/...`) the machine's.
3. Commands: `python -m <module>` is a module of this repository (`keras_tutorial.*`,
   `benchmarks.*`, `notebooks.*`) or one installed here (`pytest`, `venv`, `pip`, ...), and
   `python <path>.py` a script of it. A console script of setup.cfg (`keras-tutorial`) runs
   its module; `python -m <package> <command>`, for a package with a `__main__.py`, runs
   `<package>.<command>`, which must exist. The flags after a command, to the end of its code
   span, or of its line in a code block (a `\\` continues it; a comment, `|`, `&&`, `;`, `>` or
   a bare `--` ends it), are flags it defines: absl's `flags.DEFINE_*` or argparse's
   `add_argument` in the module, or in a function of this repository that it calls
   (`cli.define_version_flags`, `common.define_flags`); absl's own (`--helpfull`, `-v`, ...)
   for an absl command, `--help` for an argparse one; `--noname` and `--[no]name` for an absl
   boolean, `--no-name` for argparse's `BooleanOptionalAction`. A module that defines its
   flags through neither (a `__main__` reading `sys.argv`) has its flags unchecked.
   `pip install -e ".[a,b]"` names extras of setup.cfg.
4. A code span that is a flag alone (`--grpc_port`, `--[no]export`, `--augment=flip`, as in
   the flag tables) is a flag of some command of this repository, or one of the other tools'
   flags in OTHER_TOOLS_FLAGS.
5. Python names in code spans: `module.name` or `module.Class.attribute`, where the module is
   one of keras_tutorial/ or benchmarks/ (with or without the package; a call's parentheses
   dropped), is defined there: a function, class, assignment or import at its top level, and
   a method or class attribute of that class; `Class.attribute`, for a class defined at the
   top level of such a module, likewise; `keras_tutorial.<name>` names a module.
6. No "issue N": an issue number is nothing a reader of the repository can open. Say what it
   asked for, or link the section that says it.
7. A translated doc (README.zh-CN.md) gives only commands that the English docs give: each
   command of it, to the end of its code span or line (a comment left out), is part of one of
   theirs, so that the two cannot drift apart.
"""

from __future__ import annotations

import ast
import configparser
import fnmatch
import functools
import glob
import importlib.util
import os
import re
import subprocess
from dataclasses import dataclass

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = sorted(
    [os.path.join(REPO, name) for name in ("README.md", "README.zh-CN.md", "benchmarks/README.md",
                                           "notebooks/README.md", "saved_models/README.md")]
    + glob.glob(os.path.join(REPO, "docs", "*.md"))
    + glob.glob(os.path.join(REPO, "docs", "notebooks", "*.md")))
PACKAGES = ("keras_tutorial", "benchmarks", "notebooks")
# Where a user's runs write (README: saved_models/<model>/<N>/, runs/<model>-<dataset>).
OUTPUT_DIRS = ("saved_models", "runs")
SOURCE_EXTENSIONS = (".py", ".sh", ".md", ".ipynb", ".cfg", ".toml")
FILE_EXTENSIONS = SOURCE_EXTENSIONS + (
    ".json", ".png", ".jpg", ".gif", ".bmp", ".npz", ".npy", ".tflite", ".pb", ".gz", ".html",
    ".css", ".js", ".txt", ".yaml", ".yml")
# Flags of other programs that the docs name on their own, and whose they are.
OTHER_TOOLS_FLAGS = {"--input_exprs": "saved_model_cli", "--inplace": "jupyter nbconvert",
                     "--rest_api_enable_cors_support": "TF Serving",
                     "--model_base_path": "TF Serving"}
FENCE = re.compile(r"\s*(```|~~~)")
# A code span; one broken over two lines of a paragraph included.
CODE_SPAN = re.compile(r"`((?:[^`\n]|\n(?![ \t]*\n))+)`")
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
# How a command starts: `python -m module`, `python script.py` or a console script (added at
# run time), then the rest of its code span or line (up to a backtick, in a code block).
COMMAND_START = (r"(?<![\w/.-])(?:python3?\s+"
                 r"(?:-m\s+(?P<module>[\w.<>|]+)|(?P<script>[\w./-]+\.py)){console})"
                 r"(?P<rest>[^`]*)")
FLAG = re.compile(r"--?(\[no\])?[A-Za-z?][\w-]*")
# Shell words that end the command a flag belongs to.
COMMAND_ENDS = ("|", "||", "&&", ";", ">", ">>", "2>", "<", "<<", "&", "--")
WORD_EDGES = "\"'`,;:()[]{}"
EXTRAS = re.compile(r"pip install [^`\n]*?\.\[([\w, -]+)\]")
ISSUE = re.compile(r"\bissues?\s+(?:#\s*)?\d+", re.IGNORECASE)


@dataclass(frozen=True)
class Doc:
    """A Markdown file: its prose (code blocks blanked out) and its fenced code blocks."""
    path: str
    prose: str
    blocks: tuple[str, ...]


@functools.cache
def read_doc(path: str) -> Doc:
    """The doc at `path`, every fenced code block taken out of its prose."""
    prose, blocks, block = [], [], None
    with open(path, encoding="utf-8") as f:
        for line in f:
            if FENCE.match(line):
                if block is None:
                    block = []
                else:
                    blocks.append("".join(block))
                    block = None
                prose.append("\n")
            elif block is not None:
                block.append(line)
                prose.append("\n")
            else:
                prose.append(line)
    return Doc(path, "".join(prose), tuple(blocks))


def code_spans(doc: Doc) -> list[str]:
    """The text of every inline code span of the prose, a span broken over lines joined."""
    return [" ".join(span.split()) for span in CODE_SPAN.findall(doc.prose)]


def block_lines(doc: Doc) -> list[str]:
    """The lines of every code block, a line continued with `\\` joined to the next."""
    return [line for block in doc.blocks for line in block.replace("\\\n", " ").splitlines()]


@functools.cache
def repository_files() -> frozenset[str]:
    """The repository's files, relative: those git tracks and new ones it does not ignore."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, text=True, check=True).stdout
    return frozenset(path for path in listed.splitlines()
                     if os.path.exists(os.path.join(REPO, path)))


@functools.cache
def top_level_entries() -> frozenset[str]:
    """The first part of every path of the repository: keras_tutorial, docs, README.md, .ci..."""
    return frozenset(path.split("/")[0] for path in repository_files())


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading (rule 1)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"[`*]|<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@functools.cache
def anchors(path: str) -> frozenset[str]:
    """The anchors of the headings of the Markdown file at `path`, repeats numbered."""
    seen: dict[str, int] = {}
    found = set()
    for line in read_doc(path).prose.splitlines():
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            slug = github_slug(heading.group(1))
            found.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
            seen[slug] = seen.get(slug, 0) + 1
    return frozenset(found)


def link_problem(doc: Doc, target: str) -> str | None:
    """Why a link or image target of `doc` leads nowhere (rule 1), or None."""
    if re.match(r"[a-zA-Z][a-zA-Z+.-]*:", target):
        return None
    path, _, anchor = target.partition("#")
    full = os.path.normpath(os.path.join(os.path.dirname(doc.path), path)) if path else doc.path
    if not os.path.exists(full):
        return f"{target}: no such file"
    if anchor and full.endswith(".md") and anchor not in anchors(full):
        return f"{target}: no heading #{anchor} in {os.path.relpath(full, REPO)}"
    return None


def path_problem(word: str) -> str | None:
    """Why `word`, if it is a path of this repository by rule 2, names nothing, or None."""
    word = word.strip(WORD_EDGES).rstrip(".")
    if not word or word.startswith(("/", "~", "$", "-")) or "://" in word:
        return None
    parts = word.split("/")
    if len(parts) > 1:
        if parts[0] not in top_level_entries() or parts[0] in OUTPUT_DIRS:
            return None
        pattern = re.sub(r"<[^>]*>", "*", word.rstrip("/"))
        if any(fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path, pattern + "/*")
               for path in repository_files()):
            return None
        return f"{word}: no such file in the repository"
    if (word.endswith(SOURCE_EXTENSIONS) and re.fullmatch(r"[\w.-]+", word)
            and not any(os.path.basename(path) == word for path in repository_files())):
        return f"{word}: no file of that name in the repository"
    return None


@dataclass(frozen=True)
class Command:
    """A command written in a doc (`python -m module`, `python script.py`, a console script):
    the module it runs, and the flags after it."""
    module: str
    is_script: bool
    flags: tuple[str, ...]


def setup_cfg() -> configparser.ConfigParser:
    """The repository's setup.cfg, read."""
    config = configparser.ConfigParser(interpolation=None)
    config.read(os.path.join(REPO, "setup.cfg"))
    return config


@functools.cache
def console_scripts() -> dict[str, str]:
    """Console script -> the module it runs, as setup.cfg's entry points define them."""
    lines = setup_cfg().get("options.entry_points", "console_scripts", fallback="").splitlines()
    return {name.strip(): target.split(":")[0].strip()
            for name, _, target in (line.partition("=") for line in lines) if target}


@functools.cache
def command_pattern() -> re.Pattern:
    scripts = "|".join(map(re.escape, console_scripts()))
    """COMMAND_START with this repository's console scripts."""
    return re.compile(COMMAND_START.format(console=f"|(?P<console>{scripts})(?![\\w-])" if scripts
                                    else ""))


def commands_in(text: str) -> list[Command]:
    """Every command of one code span or code block line, with its flags (rule 3)."""
    found = []
    for match in command_pattern().finditer(text):
        script = match["script"]
        module = (match["module"] or console_scripts().get(match["console"])
                  or script[:-len(".py")].replace("/", "."))
        words = match["rest"].split()
        package = module.removesuffix(".__main__")
        if module_path(f"{package}.__main__"):  # `python -m package command`, or its script.
            module = f"{package}.__main__"
            if words and re.fullmatch(r"[\w<>]+", words[0]):
                module, words = f"{package}.{words[0]}", words[1:]
        if "<" in module:
            continue  # `python -m keras_tutorial.<command>` stands for every command.
        flags = []
        for word in words:
            if word in COMMAND_ENDS or word.startswith("#") or word.endswith(";"):
                break
            if FLAG.fullmatch(word.split("=")[0]):
                flags.append(word.split("=")[0])
        found.append(Command(module, script is not None, tuple(flags)))
    return found


def module_path(module: str) -> str | None:
    """The source file of a module of this repository, or None."""
    stem = module.replace(".", "/")
    for candidate in (f"{stem}.py", f"{stem}/__init__.py"):
        if candidate in repository_files():
            return os.path.join(REPO, candidate)
    return None


@functools.cache
def parsed(path: str) -> ast.Module:
    """The syntax tree of the Python file at `path`."""
    with open(path, encoding="utf-8") as f:
        return ast.parse(f.read(), path)


@functools.cache
def repository_imports(module: str) -> dict[str, str]:
    """Local name -> module, for every import of a module of this repository in `module`."""
    names = {}
    for node in ast.walk(parsed(module_path(module))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                if module_path(f"{node.module}.{alias.name}"):
                    names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            names |= {alias.asname: alias.name for alias in node.names
                      if alias.asname and module_path(alias.name)}
    return names


def flags_defined_by(call: ast.Call) -> tuple[set[str], str | None]:
    """The flags one call defines (absl's DEFINE_* or argparse's add_argument), and whose."""
    name = getattr(call.func, "attr", getattr(call.func, "id", ""))
    strings = [arg.value for arg in call.args
               if isinstance(arg, ast.Constant) and isinstance(arg.value, str)]
    keywords = {keyword.arg: keyword.value for keyword in call.keywords}
    if name.startswith("DEFINE_"):
        if not strings and isinstance(keywords.get("name"), ast.Constant):
            strings = [keywords["name"].value]
        flags = {f"--{strings[0]}"} if strings else set()
        if strings and name in ("DEFINE_bool", "DEFINE_boolean"):
            flags.add(f"--no{strings[0]}")
        return flags, "absl"
    if name == "add_argument":
        flags = {string for string in strings if string.startswith("-")}
        action = keywords.get("action")
        if isinstance(action, ast.Attribute) and action.attr == "BooleanOptionalAction":
            flags |= {f"--no-{flag[2:]}" for flag in flags if flag.startswith("--")}
        return flags, "argparse"
    return set(), None


def top_level_function(module: str, name: str) -> ast.AST | None:
    """The function `name` defined at the top level of a module of this repository, or None."""
    for node in parsed(module_path(module)).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            return node
    return None


@functools.cache
def flags_of(module: str) -> tuple[frozenset[str], frozenset[str]]:
    """The flags that a command module of this repository defines, in it or in the functions
    of the repository it calls, and the parsers that define them ('absl', 'argparse')."""
    flags, parsers = set(), set()
    pending, visited = [(module, parsed(module_path(module)))], set()
    while pending:
        owner, tree = pending.pop()
        imports = repository_imports(owner)
        for call in (node for node in ast.walk(tree) if isinstance(node, ast.Call)):
            defined, parser = flags_defined_by(call)
            flags |= defined
            parsers |= {parser} - {None}
            if isinstance(call.func, ast.Attribute) and isinstance(call.func.value, ast.Name):
                callee = (imports.get(call.func.value.id), call.func.attr)
            elif isinstance(call.func, ast.Name):
                callee = (owner, call.func.id)
            else:
                continue
            function = top_level_function(*callee) if callee[0] else None
            if function is not None and callee not in visited:
                visited.add(callee)
                pending.append((callee[0], function))
    return frozenset(flags), frozenset(parsers)


@functools.cache
def absl_own_flags() -> frozenset[str]:
    """The flags absl defines for every absl command: --help..., --verbosity, -v, ..."""
    from absl import app, flags, logging  # noqa: F401 (importing logging defines its flags)

    app.define_help_flags()
    names = {"--flagfile", "--undefok"}
    for module, defined in flags.FLAGS.flags_by_module_dict().items():
        for flag in defined if module.startswith("absl.") else ():
            names.add(f"--{flag.name}")
            names |= {f"-{flag.short_name}"} if flag.short_name else set()
            names |= {f"--no{flag.name}"} if flag.boolean else set()
    return frozenset(names)


def command_flags(module: str) -> frozenset[str]:
    """Every flag a command module accepts: its own and those of its parser (rule 3)."""
    defined, parsers = flags_of(module)
    if "absl" in parsers:
        defined |= absl_own_flags()
    if "argparse" in parsers:
        defined |= {"--help", "-h"}
    return defined


def command_problems(command: Command) -> list[str]:
    """Why a command written in a doc does not exist, or names flags it does not define."""
    if command.module.split(".")[0] not in PACKAGES and not command.is_script:
        if importlib.util.find_spec(command.module) is None:
            return [f"python -m {command.module}: no such module here"]
        return []
    if module_path(command.module) is None:
        return [f"python -m {command.module}: no such module in the repository"]
    if not flags_of(command.module)[1]:
        return []  # No parser that this can read (a `__main__` reading sys.argv itself).
    defined = command_flags(command.module)
    return [f"{command.module}: no flag {flag}" for flag in command.flags
            if re.sub(r"^--\[no\]", "--", flag) not in defined]


@functools.cache
def extras() -> frozenset[str]:
    """The extras that setup.cfg defines for `pip install -e ".[extra]"`."""
    return frozenset(setup_cfg()["options.extras_require"])


def extras_problems(text: str) -> list[str]:
    """Why a `pip install` in one code span or code block line names an extra that setup.cfg
    does not define (rule 3)."""
    return [f"pip install .[{name.strip()}]: setup.cfg defines no such extra"
            for match in EXTRAS.finditer(text) for name in match[1].split(",")
            if name.strip() not in extras()]


@functools.cache
def every_command_flag() -> frozenset[str]:
    """The flags of every command module of this repository (rule 4)."""
    flags = set(OTHER_TOOLS_FLAGS)
    for path in repository_files():
        if path.endswith(".py") and path.split("/")[0] in PACKAGES:
            module = path[:-len(".py")].replace("/", ".")
            if flags_of(module)[1]:
                flags |= command_flags(module)
    return frozenset(flags)


def flag_problem(span: str) -> str | None:
    """Why a code span that is a flag alone names no flag of any command (rule 4), or None."""
    flag = span.split("=")[0]
    if FLAG.fullmatch(flag) and re.sub(r"^--\[no\]", "--", flag) not in every_command_flag():
        return f"{span}: no command defines {flag}"
    return None


def defined_names(body: list[ast.stmt]) -> set[str]:
    """The names a module's or a class's body defines: functions, classes, assignments,
    imports, also under an `if` or `try`."""
    names = set()
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {name.id for target in targets for name in ast.walk(target)
                      if isinstance(name, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        elif isinstance(node, (ast.If, ast.Try)):
            names |= defined_names(node.body)
    return names


@functools.cache
def python_names() -> tuple[dict[str, frozenset[str]], dict[str, frozenset[str]]]:
    """For keras_tutorial/ and benchmarks/: module -> its top-level names, and class -> the
    names its body defines."""
    modules, classes = {}, {}
    for path in sorted(repository_files()):
        if path.endswith(".py") and path.split("/")[0] in ("keras_tutorial", "benchmarks"):
            tree = parsed(os.path.join(REPO, path))
            module = os.path.basename(path)[:-len(".py")]
            modules[module] = modules.get(module, frozenset()) | defined_names(tree.body)
            for node in tree.body:
                if isinstance(node, ast.ClassDef):
                    classes[node.name] = (classes.get(node.name, frozenset())
                                          | defined_names(node.body))
    return modules, classes


def name_problem(span: str) -> str | None:
    """Why a code span that names a Python name of this repository (rule 5) names nothing."""
    name = re.sub(r"\(.*\)$", "", span.strip())
    if not re.fullmatch(r"[A-Za-z_]\w*(\.\w+)+", name) or name.endswith(FILE_EXTENSIONS):
        return None
    parts = name.split(".")
    modules, classes = python_names()
    if parts[0] in ("keras_tutorial", "benchmarks"):
        parts = parts[1:]
        if parts[0] not in modules:
            return f"{span}: no module {parts[0]} in {name.split('.')[0]}/"
    if parts[0] in modules:
        module, parts = parts[0], parts[1:]
        if parts and parts[0] not in modules[module]:
            return f"{span}: {module}.py defines no {parts[0]}"
    if len(parts) > 1 and parts[0] in classes and parts[1] not in classes[parts[0]]:
        return f"{span}: {parts[0]} has no {parts[1]}"
    return None


def problems(doc: Doc) -> dict[str, list[str]]:
    """Every reference of `doc` that names nothing, by rule."""
    spans, lines = code_spans(doc), block_lines(doc)
    found = {
        "links": [link_problem(doc, target) for target in LINK.findall(doc.prose)],
        "paths": [path_problem(word) for text in spans + lines for word in text.split()],
        "commands": [problem for text in spans + lines for command in commands_in(text)
                     for problem in command_problems(command)]
                    + [problem for text in spans + lines for problem in extras_problems(text)],
        "flags": [flag_problem(span) for span in spans],
        "names": [name_problem(span) for span in spans],
        "issues": [f"'{issue}': an issue number is not a reference"
                   for issue in ISSUE.findall(doc.prose)],
    }
    return {rule: sorted({problem for problem in found[rule] if problem}) for rule in found}


@pytest.mark.parametrize("path", DOCS, ids=lambda path: os.path.relpath(path, REPO))
def test_doc_names_only_what_exists(path):
    assert {rule: found for rule, found in problems(read_doc(path)).items() if found} == {}


# For each rule, references that exist, then one gone stale that the rule alone must catch.
PLANTED = {
    "anchor": ("links", "[up](#a-heading), [itself](planted.md#a-heading)",
               "[up](#no-such-heading)"),
    "linked file": ("links", "![it](planted.md)", "[design](design.md#fast-paths)"),
    "path": ("paths", "`keras_tutorial/fastpath.py`, `docs/<page>.md`, `saved_models/cnn/1`",
             "`keras_tutorial/fused.py`"),
    "bare file name": ("paths", "`fastpath.py`, `gpu_check.sh`, `image.png`", "`fused.py`"),
    "command": ("commands", "`python -m keras_tutorial.train --epochs=1 --noverbose --helpfull`",
                "`python -m keras_tutorial.fused`"),
    "flag": ("commands", "```sh\npython -m benchmarks.run --nopeers \\\n  --tiny  # quick\n```",
             "```sh\npython -m benchmarks.run --nopeers \\\n  --quick\n```"),
    "extra": ("commands", "`pip install -e \".[test,serve]\"`", "`pip install -e '.[tests]'`"),
    "flag in prose": ("flags", "`--[no]batch_norm`, `--augment=flip`, `--grpc_port`",
                      "`--[no]batch_normal`"),
    "function": ("names", "`fastpath.BatchParallelLSTM`, `loop.chunks`, `cli.run(main)`",
                 "`models.BatchParallelLSTM`"),
    "module name": ("names", "`keras_tutorial.fastpath`, `benchmarks.peers.compare`",
                    "`keras_tutorial.fused`"),
    "method": ("names", "`keras_tutorial.loop.Trainer.train`, `Pipelines.epoch`",
               "`Trainer._chunks`"),
    "issue": ("issues", "keras-team/keras#20585", "the targets of issue 6"),
}


@pytest.mark.parametrize("kind", PLANTED)
def test_planted_stale_reference_is_caught(tmp_path, kind):
    rule, good, stale = PLANTED[kind]
    found = {}
    for name, text in (("good", good), ("stale", stale)):
        path = tmp_path / name / "planted.md"
        path.parent.mkdir()
        path.write_text(f"# A heading\n\n{text}\n")
        found[name] = {caught_by: caught for caught_by, caught
                       in problems(read_doc(str(path))).items() if caught}
    assert found["good"] == {}
    assert list(found["stale"]) == [rule] and len(found["stale"][rule]) == 1, found["stale"]


# Rule 7: a translated doc -> the English docs whose commands it copies.
TRANSLATED_DOCS = {"README.zh-CN.md": ("README.md", "notebooks/README.md", "docs/*.md")}


def command_texts(doc: Doc) -> list[str]:
    """Every command of a doc's code spans and code block lines (rule 3), from its first word to
    the end of its span or line, a comment left out, its spaces collapsed."""
    return [" ".join(match.group(0).split(" #")[0].split())
            for text in code_spans(doc) + block_lines(doc)
            for match in command_pattern().finditer(text)]


def untranslated_commands(translation: Doc, english: list[Doc]) -> list[str]:
    """The commands of `translation` that are no part of any command of the `english` docs."""
    theirs = [command for doc in english for command in command_texts(doc)]
    return [command for command in command_texts(translation)
            if not any(command in their for their in theirs)]


@pytest.mark.parametrize("translation", TRANSLATED_DOCS)
def test_translated_doc_gives_the_english_docs_commands(translation):
    english = [read_doc(path) for pattern in TRANSLATED_DOCS[translation]
               for path in sorted(glob.glob(os.path.join(REPO, pattern)))]
    assert untranslated_commands(read_doc(os.path.join(REPO, translation)), english) == [], (
        f"commands of {translation} that neither {' nor '.join(TRANSLATED_DOCS[translation])} "
        "gives: copy them from there, or change them there first")


def test_a_command_the_english_docs_lack_is_caught(tmp_path):
    english, chinese = tmp_path / "en.md", tmp_path / "zh.md"
    english.write_text("```sh\npython -m keras_tutorial.train --model=cnn --epochs=2  # two\n```\n")
    chinese.write_text("先运行 `python -m keras_tutorial.train --model=cnn`：\n\n```sh\n"
                       "python -m keras_tutorial.train --model=cnn --epochs=2  # 两轮\n"
                       "python -m keras_tutorial.train --model=cnn --epochs=3\n```\n",
                       encoding="utf-8")
    assert untranslated_commands(read_doc(str(chinese)), [read_doc(str(english))]) == [
        "python -m keras_tutorial.train --model=cnn --epochs=3"]
