"""The Chinese edition of every notebook keeps in step with the English one.

Each notebook `notebooks/NN_name.ipynb` has an edition in Simplified Chinese beside it,
`NN_name.zh-CN.ipynb` (notebooks/README.md, "Chinese editions"). Checked here, without running
anything or importing TensorFlow:

1. Every English notebook has a Chinese edition, and every Chinese edition an English notebook.
2. Both have the same cells: as many, in the same order, of the same types, with the same ids.
3. Their code is the same. Each code cell of the Chinese edition parses to the syntax tree of
   the English cell, with the same comments, except for the text a figure shows, which is
   translated: the strings given to `set_title`, `suptitle`, `set_xlabel`, `text`, `annotate`,
   `legend` and the other calls of LABEL_CALLS, to a `label=` keyword, to a tick call's labels,
   to a parameter of a function of the notebook that only ever reaches such a call (the
   `title` of a `show_images`), as that parameter's default too. Of an f-string there, only
   the literal parts may change; the values it formats, in their order, may not. A string in
   a list, tuple or dict literal may also change if the Chinese string is Chinese and the
   English notebook's code has that string nowhere else (a string used elsewhere is a key or
   a value compared, not only a label). Anything else, one learning rate or one name, fails,
   naming the cell and the line to copy from the English notebook.
4. The prose is translated: a markdown cell whose English text has words has Chinese
   characters in the Chinese edition.
5. A link to a notebook goes to its Chinese edition, which exists; a link to an English page
   (a `.md` file) says so right after it: "（英文）".

The Chinese `**运行时间。**` line that notebooks/render.py writes from docs/results.json is
checked, like the English one, by tests/test_numbers.py; here, that it says what the English
sentence says.
"""

from __future__ import annotations

import ast
import collections
import functools
import io
import os
import re
import tokenize
from collections.abc import Iterator

import nbformat
import pytest
from notebook_render import render

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK_DIR = os.path.join(REPO, "notebooks")


ENGLISH = render.notebooks_of(render.ENGLISH)
CHINESE = render.notebooks_of(render.CHINESE)
CJK = re.compile(r"[\u3400-\u9fff]")
# Calls whose every positional argument is text a figure shows, and those whose arguments after
# the first are (the tick positions, then their labels).
LABEL_CALLS = {"set_title", "suptitle", "title", "set_xlabel", "set_ylabel", "xlabel", "ylabel",
               "supxlabel", "supylabel", "text", "figtext", "annotate", "legend",
               "set_xticklabels", "set_yticklabels"}
TICK_CALLS = {"set_xticks", "set_yticks", "xticks", "yticks"}
# Keywords that are a figure's text in any call (`label=`), and in some calls only.
LABEL_KEYWORDS = {"label"}
CALL_LABEL_KEYWORDS = {"legend": {"title"}, "set": {"title", "xlabel", "ylabel"}}
LINK = re.compile(r"\]\((?![a-z]+:|#)([^)#\s]+)[^)]*\)")  # A relative link's target.
ENGLISH_PAGE = "（英文）"
# What a markdown cell holds besides its prose: code, math, link targets, HTML.
NOT_PROSE = re.compile(r"```.*?```|`[^`]*`|\$\$.*?\$\$|\$[^$]*\$|\]\([^)]*\)|<[^>]*>", re.DOTALL)


def chinese_edition(path: str) -> str:
    return path.removesuffix(".ipynb") + f".{render.CHINESE}.ipynb"


def _read(path: str) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


# Rule 3: the code.

def _shown(node: ast.AST) -> Iterator[ast.AST]:
    """The parts of an expression that a figure shows as text: its string constants, the
    f-strings they are part of, and the names whose values it shows."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str) or isinstance(node, ast.Name):
        yield node
    elif isinstance(node, ast.JoinedStr):
        yield node
        for value in node.values:
            yield from _shown(value.value if isinstance(value, ast.FormattedValue) else value)
    elif isinstance(node, ast.IfExp):  # Not its condition.
        yield from _shown(node.body)
        yield from _shown(node.orelse)
    elif isinstance(node, ast.BoolOp):  # title or model.name
        for value in node.values:
            yield from _shown(value)
    elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        yield from _shown(node.left)
        yield from _shown(node.right)
    elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):  # "%d images" % n
        yield from _shown(node.left)
    elif isinstance(node, (ast.List, ast.Tuple)):
        for element in node.elts:
            yield from _shown(element)
    elif isinstance(node, (ast.ListComp, ast.GeneratorExp)):
        yield from _shown(node.elt)
    elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
          and node.func.attr in ("format", "join")):
        yield from _shown(node.func.value)
        for argument in node.args if node.func.attr == "join" else ():
            yield from _shown(argument)


def _call_name(call: ast.Call) -> str | None:
    return getattr(call.func, "attr", getattr(call.func, "id", None))


def _label_arguments(call: ast.Call, functions: dict[str, tuple[list[str], set[str]]]
                     ) -> Iterator[ast.AST]:
    """The arguments of a call that a figure shows as text. `functions`: the notebook's own
    functions, with their positional parameters and those that only reach a figure's text."""
    name = _call_name(call)
    if name in LABEL_CALLS:
        yield from call.args
    elif name in TICK_CALLS:
        yield from call.args[1:]
    function = ast.unparse(call.func)  # show_images, or diagrams.layer_diagram
    positional, labels = functions.get(function, ([], set()))
    yield from (argument for argument, parameter in zip(call.args, positional)
                if parameter in labels)
    for keyword in call.keywords:
        if (keyword.arg in LABEL_KEYWORDS | CALL_LABEL_KEYWORDS.get(name, set())
                or keyword.arg in labels):
            yield keyword.value


def _label_functions(definitions: list[ast.AST], prefix: str = ""
                     ) -> dict[str, tuple[list[str], set[str]]]:
    """Functions: `prefix` and name -> (positional parameters, the parameters whose every use in
    the function is as a figure's text)."""
    functions = {}
    for function in definitions:
        if not isinstance(function, ast.FunctionDef):
            continue
        arguments = function.args
        positional = [argument.arg for argument in arguments.posonlyargs + arguments.args]
        shown = {id(node) for call in ast.walk(function) if isinstance(call, ast.Call)
                 for argument in _label_arguments(call, {}) for node in _shown(argument)}
        uses = collections.defaultdict(list)
        for node in ast.walk(function):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                uses[node.id].append(id(node))
        parameters = positional + [argument.arg for argument in arguments.kwonlyargs]
        functions[prefix + function.name] = (positional, {
            parameter for parameter in parameters
            if uses[parameter] and all(use in shown for use in uses[parameter])})
    return functions


@functools.cache
def package_functions(module: str) -> dict[str, tuple[list[str], set[str]]]:
    """The top-level functions of a module of the package, as _label_functions gives them."""
    path = os.path.join(REPO, render.PACKAGE, f"{module}.py")
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return _label_functions(ast.parse(f.read()).body)


def label_nodes(tree: ast.AST) -> set[int]:
    """The ids of the string constants and f-strings of `tree` (a notebook's code) that its
    figures show as text."""
    functions = _label_functions(list(ast.walk(tree)))
    for node in ast.walk(tree):  # The package's functions, by the names the code imports.
        if isinstance(node, ast.ImportFrom) and node.module == render.PACKAGE:
            for alias in node.names:
                name = alias.asname or alias.name
                functions |= {f"{name}.{function}": parameters for function, parameters
                              in package_functions(alias.name).items()}
    expressions = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            expressions += _label_arguments(node, functions)
        elif isinstance(node, ast.FunctionDef):
            positional, labels = functions[node.name]
            arguments = node.args
            defaults = dict(zip(positional[len(positional) - len(arguments.defaults):],
                                arguments.defaults))
            defaults |= {argument.arg: default for argument, default
                         in zip(arguments.kwonlyargs, arguments.kw_defaults) if default}
            expressions += [default for parameter, default in defaults.items()
                            if parameter in labels]
    return {id(node) for expression in expressions for node in _shown(expression)
            if not isinstance(node, ast.Name)}


def collection_strings(tree: ast.AST) -> set[int]:
    """The ids of the string constants of `tree` that are an element of a list, tuple or set
    literal, or a key or value of a dict literal."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            found |= {id(element) for element in node.elts}
        elif isinstance(node, ast.Dict):
            found |= {id(part) for part in node.keys + node.values if part is not None}
    return found


class Code:
    """A notebook's code cells, parsed, with what its figures show as text."""

    def __init__(self, nb: nbformat.NotebookNode):
        self.cells = {index: ast.parse(render.python(cell.source)) for index, cell
                      in enumerate(nb.cells) if cell.cell_type == "code"}
        self.sources = {index: nb.cells[index].source for index in self.cells}
        whole = ast.Module(body=list(self.cells.values()), type_ignores=[])
        self.labels = label_nodes(whole)
        self.collections = collection_strings(whole)
        self.strings = collections.Counter(
            node.value for node in ast.walk(whole)
            if isinstance(node, ast.Constant) and isinstance(node.value, str))


def _may_differ(english: ast.AST, chinese: ast.AST, en: Code, zh: Code) -> bool:
    """Whether two constants at the same place of the two editions may differ (rule 3)."""
    if id(english) in en.labels and id(chinese) in zh.labels:
        return True
    return (id(english) in en.collections and isinstance(chinese.value, str)
            and bool(CJK.search(chinese.value)) and en.strings[english.value] == 1)


def _formatted(node: ast.JoinedStr) -> list[ast.FormattedValue]:
    return [value for value in node.values if isinstance(value, ast.FormattedValue)]


def first_difference(english: ast.AST, chinese: ast.AST, en: Code, zh: Code
                     ) -> tuple[ast.AST | None, ast.AST | None] | None:
    """The first place where the Chinese tree is not the English one but for what rule 3 lets
    change, as the innermost node of each that has a line; or None."""
    def lined(*nodes):
        return tuple(node if hasattr(node, "lineno") else None for node in nodes)

    if type(english) is not type(chinese):
        return lined(english, chinese)
    if isinstance(english, ast.Constant):
        same = english.value == chinese.value and type(english.value) is type(chinese.value)
        return None if same or _may_differ(english, chinese, en, zh) else lined(english, chinese)
    if isinstance(english, ast.JoinedStr) and id(english) in en.labels and id(chinese) in zh.labels:
        # A label's literal parts are translated: what it formats must match, in order.
        pairs = [(_formatted(english), _formatted(chinese))]
    else:
        pairs = [(getattr(english, field, None), getattr(chinese, field, None))
                 for field in english._fields]
    for a, b in pairs:
        if isinstance(a, list) != isinstance(b, list) or isinstance(a, list) and len(a) != len(b):
            return lined(english, chinese)
        for x, y in zip(*((a, b) if isinstance(a, list) else ([a], [b]))):
            found = (first_difference(x, y, en, zh) if isinstance(x, ast.AST)
                     else None if x == y else (None, None))
            if found:
                outer = lined(english, chinese)
                return found[0] or outer[0], found[1] or outer[1]
    return None


def _comments(source: str) -> list[str]:
    tokens = tokenize.generate_tokens(io.StringIO(render.python(source)).readline)
    return [token.string for token in tokens if token.type == tokenize.COMMENT]


def code_problems(english_nb: nbformat.NotebookNode, chinese_nb: nbformat.NotebookNode,
                  chinese_name: str) -> list[str]:
    """Where the Chinese edition's code is not the English notebook's (rule 3), each with the
    cell, the lines and what to do."""
    try:
        zh = Code(chinese_nb)
    except SyntaxError as e:
        return [f"{chinese_name}: a code cell does not parse ({e})"]
    en = Code(english_nb)
    fix = (f"copy the English cell's code into {chinese_name}, translating only the text its "
           f"figures show, then run python notebooks/render.py {chinese_name}")
    problems = []
    for index, english in en.cells.items():
        chinese = zh.cells.get(index)
        if chinese is None:
            problems.append(f"cell {index} is code in English only: {fix}")
            continue
        found = first_difference(english, chinese, en, zh)
        if found:
            lines = [source.splitlines()[node.lineno - 1].strip() if node else "?"
                     for node, source in zip(found, (en.sources[index], zh.sources[index]))]
            problems.append(f"cell {index} (id {english_nb.cells[index].get('id')}), line "
                            f"{found[0].lineno if found[0] else '?'}: English {lines[0]!r}, "
                            f"Chinese {lines[1]!r}: {fix}")
        elif _comments(en.sources[index]) != _comments(zh.sources[index]):
            problems.append(f"cell {index} (id {english_nb.cells[index].get('id')}): its "
                            f"comments differ from the English cell's (they stay in English): "
                            f"{fix}")
    return problems


# Rules 4 and 5: the prose.

def has_prose(markdown: str) -> bool:
    """Whether a markdown cell holds words, besides code, math, link targets and HTML."""
    return bool(re.search(r"[A-Za-z]{2,}", NOT_PROSE.sub(" ", markdown)))


def link_problems(markdown: str) -> list[str]:
    """The links of a Chinese markdown cell that break rule 5."""
    problems = []
    for match in LINK.finditer(markdown):
        target = match.group(1)
        if target.endswith(".ipynb"):
            if not target.endswith(f".{render.CHINESE}.ipynb"):
                problems.append(f"{target}: link the Chinese edition, "
                                f"{target.removesuffix('.ipynb')}.{render.CHINESE}.ipynb")
            elif not os.path.isfile(os.path.join(NOTEBOOK_DIR, target)):
                problems.append(f"{target}: no such notebook")
        elif (target.endswith(".md") and not target.endswith(f".{render.CHINESE}.md")
              and not markdown[match.end():].startswith(ENGLISH_PAGE)):
            problems.append(f"{target}: an English page; write {ENGLISH_PAGE} right after "
                            "the link")
    return problems


# The tests.

def test_every_notebook_has_both_editions():
    english = {render.notebook_name(path) for path in ENGLISH}
    chinese = {render.notebook_name(path).removesuffix(f".{render.CHINESE}") for path in CHINESE}
    assert english - chinese == set(), "English notebooks without a Chinese edition (.zh-CN.ipynb)"
    assert chinese - english == set(), "Chinese editions without an English notebook"


def _pair(path: str) -> tuple[nbformat.NotebookNode, nbformat.NotebookNode]:
    if not os.path.isfile(chinese_edition(path)):
        pytest.fail(f"no Chinese edition {os.path.basename(chinese_edition(path))}")
    return _read(path), _read(chinese_edition(path))


@pytest.mark.parametrize("path", ENGLISH, ids=os.path.basename)
def test_editions_have_the_same_cells(path):
    english, chinese = _pair(path)
    shape = [[(cell.cell_type, cell.get("id")) for cell in nb.cells] for nb in (english, chinese)]
    assert shape[1] == shape[0], (
        f"{os.path.basename(chinese_edition(path))} must have the English notebook's cells, in "
        "its order, of its types, with its ids")


@pytest.mark.parametrize("path", ENGLISH, ids=os.path.basename)
def test_editions_have_the_same_code(path):
    english, chinese = _pair(path)
    problems = code_problems(english, chinese, os.path.basename(chinese_edition(path)))
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("path", ENGLISH, ids=os.path.basename)
def test_chinese_prose_is_translated(path):
    english, chinese = _pair(path)
    untranslated = [index for index, (a, b) in enumerate(zip(english.cells, chinese.cells))
                    if a.cell_type == b.cell_type == "markdown" and has_prose(a.source)
                    and not CJK.search(b.source)]
    assert untranslated == [], f"markdown cells not translated: {untranslated}"


@pytest.mark.parametrize("path", CHINESE, ids=os.path.basename)
def test_chinese_links_go_to_chinese_editions(path):
    problems = {index: link_problems(cell.source) for index, cell in enumerate(_read(path).cells)
                if cell.cell_type == "markdown"}
    assert {index: found for index, found in problems.items() if found} == {}


# The rules themselves, on notebooks made up here.

LABELLED_CELL = '''\
def show(images, title, xlabel="pixels"):
    fig.suptitle(title)
    fig.supxlabel(xlabel)


curves = {"training loss": train, "validation loss": validation}  # Drawn below.
model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.001), loss="mse")
for name, curve in curves.items():
    plt.plot(curve, label=f"{name}, {len(curve)} epochs")
plt.title(f"Loss of {DATASET} over {EPOCHS} epochs" if EPOCHS > 1 else "One epoch")
plt.xlabel("epoch")
show(images, "Training images", xlabel="28 pixels")
'''


def _cell_pair(english: str, chinese: str) -> list[str]:
    notebooks = [nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
                 for source in (english, chinese)]
    return code_problems(*notebooks, "made_up.zh-CN.ipynb")


TRANSLATED = (LABELLED_CELL.replace('"training loss"', '"训练损失"')
              .replace('"validation loss"', '"验证损失"')
              .replace('f"{name}, {len(curve)} epochs"', 'f"{name}，{len(curve)} 轮"')
              .replace('f"Loss of {DATASET} over {EPOCHS} epochs"', 'f"{DATASET} 上 {EPOCHS} 轮的损失"')
              .replace('"One epoch"', '"一轮"').replace('"epoch"', '"轮"')
              .replace('"pixels"', '"像素"').replace('"Training images"', '"训练图像"')
              .replace('"28 pixels"', '"28 像素"'))


def test_translated_labels_are_the_same_code():
    assert TRANSLATED.count("\n") == LABELLED_CELL.count("\n") and CJK.search(TRANSLATED)
    assert _cell_pair(LABELLED_CELL, LABELLED_CELL) == []
    assert _cell_pair(LABELLED_CELL, TRANSLATED) == []


@pytest.mark.parametrize("change, line", [
    (('learning_rate=0.001', 'learning_rate=0.002'), 7),  # One code token.
    (('loss="mse"', 'loss="均方误差"'), 7),  # A string that is not shown.
    (('{len(curve)} 轮', '{len(curve) - 1} 轮'), 9),  # What a label formats.
    (('if EPOCHS > 1', 'if EPOCHS > 2'), 10),  # The condition of a label.
    (('"验证损失": validation', '"验证损失": train'), 6),
    (('show(images, "训练图像"', 'show(images[:8], "训练图像"'), 12),
    (('# Drawn below.', '# 画在下面。'), None),  # A comment.
])
def test_a_changed_code_token_is_reported_and_a_translated_label_is_not(change, line):
    """Made-up editions that differ in one code token, besides their translated labels: the
    token, and only it, is reported, with its line."""
    problems = _cell_pair(LABELLED_CELL, TRANSLATED.replace(*change))
    assert TRANSLATED.replace(*change) != TRANSLATED
    assert len(problems) == 1, problems
    assert problems[0].startswith("cell 0 (id ")
    assert (f"line {line}:" in problems[0]) if line else "comments differ" in problems[0]
    assert "copy the English cell's code into made_up.zh-CN.ipynb" in problems[0]


def test_a_string_used_elsewhere_is_not_a_label():
    """A translated string of a dict literal is accepted as a label only where the English
    code has it nowhere else: here it is also a key read, so translating it changes the code."""
    english = LABELLED_CELL + 'print(curves["training loss"])\n'
    assert _cell_pair(english, TRANSLATED + 'print(curves["training loss"])\n') != []
    assert _cell_pair(english, TRANSLATED + 'print(curves["训练损失"])\n') != []


def test_prose_and_link_rules():
    assert has_prose("## Convolution (3.2.1)") and not has_prose("$$y = Wx + b$$\n\n`fit`")
    assert link_problems("见[笔记本 2](02_how_a_network_learns.zh-CN.ipynb)和"
                         "[docs/data.md](../docs/data.md)（英文）。") == []
    assert len(link_problems("[笔记本 2](02_how_a_network_learns.ipynb)")) == 1
    assert len(link_problems("[数据](../docs/data.md#splits)。")) == 1


def test_chinese_run_time_sentence_says_what_the_english_one_says():
    """render.py's `**运行时间。**` line: the English sentence's facts and rounding."""
    results = {"notebooks": {name: {
        "quick": {"seconds": 26, "cpu_cores": 2}, "full": {"seconds": 1012, "cpu_cores": cores}}
        for name, cores in (("01_x", 2), ("01_x.zh-CN", 2), ("02_x", 4), ("02_x.zh-CN", 4))}}
    source = "[docs/results.json](../docs/results.json)"
    assert render.timing_sentence("01_x", results) == (
        f"**Run time.** On 2 CPU cores this notebook takes about 25 s in quick mode and about "
        f"17 min in full mode ({source}).")
    assert render.timing_sentence("01_x.zh-CN", results) == (
        f"**运行时间。** 在 2 个 CPU 核上，本笔记本快速模式约需 25 秒，完整模式约需 17 分钟（{source}）。")
    assert render.timing_sentence("02_x.zh-CN", results) == (
        f"**运行时间。** 本笔记本快速模式在 2 个 CPU 核上约需 25 秒，完整模式在 4 个 CPU 核上约需 "
        f"17 分钟（{source}）。")
    for sentence in map(render.timing_sentence, ("01_x", "02_x.zh-CN"), (results,) * 2):
        assert render.RUN_TIME.fullmatch(sentence)
