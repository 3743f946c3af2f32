"""Mutation testing: how many small bugs planted in a module do its tests catch?

    PYTHONPATH=$PWD python benchmarks/mutation.py kaggle_kit/recipe.py tests/test_recipe.py
    PYTHONPATH=$PWD python benchmarks/mutation.py kaggle_kit/augment.py tests/test_augment.py \
        --max 80 --budget-min 20
    PYTHONPATH=$PWD python benchmarks/mutation.py kaggle_kit/submit.py tests/test_submit.py \
        --functions build_submission,validate_submission --pytest-args "-k 'build or validation'"
    PYTHONPATH=$PWD python benchmarks/mutation.py --patches breaks.json   # hand-written breaks

Each mutant changes one spot of the module's syntax tree (mutmut's classic operators): a comparison
(== <-> !=, < <-> <=, > <-> >=, in <-> not in, is <-> is not), an arithmetic operator (+ <-> -,
* <-> /, // -> /, % -> *), and <-> or, a dropped `not`, a number n -> n + 1, True <-> False,
None -> 0 in a default argument, a plain string constant -> "XX<s>XX" (docstrings, f-strings and
error messages are left alone: changing a message is not a bug the tests should catch). The tests
run against the mutated copy; a mutant is killed when they fail (or time out), survived when they
pass. Prints the score and every survivor (file:line, what changed) to look at.

Why not mutmut: mutmut 3 runs from a `mutants/` copy with its own trampolines and needs the
package's tests to import from there; this 200-line runner forks a process that has torch, pandas
and albumentations already imported, so each mutant costs only its tests (2 CPU cores shared).

--patches FILE: a JSON list of {"label", "file", "old", "new", "tests"} edits, each applied alone
(the check that each feature test fails when its feature is switched off).
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import random
import shlex
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SWAP_CMP = {ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE,
            ast.GtE: ast.Gt, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot,
            ast.IsNot: ast.Is}
SWAP_BIN = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
            ast.FloorDiv: ast.Div, ast.Mod: ast.Mult}


def _skipped_nodes(tree: ast.AST) -> set[int]:
    """ids of nodes not to mutate: docstrings, f-string parts, raise / warn messages."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            skip.add(id(body[0].value))
        if isinstance(node, (ast.JoinedStr, ast.Raise)) or (
                isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "warn"):
            skip.update(id(n) for n in ast.walk(node) if isinstance(n, ast.Constant))
    return skip


def mutants(source: str) -> list[tuple[int, str, str]]:
    """(line, description, mutated source) for every single-spot mutation of `source`."""
    tree = ast.parse(source)
    skip, spots = _skipped_nodes(tree), []  # spots: (position in ast.walk order, kind)
    for i, node in enumerate(ast.walk(tree)):
        if isinstance(node, ast.Compare):
            spots += [(i, ("cmp", k)) for k, op in enumerate(node.ops) if type(op) in SWAP_CMP]
        elif isinstance(node, ast.BinOp) and type(node.op) in SWAP_BIN:
            spots.append((i, ("bin",)))
        elif isinstance(node, ast.BoolOp):
            spots.append((i, ("bool",)))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            spots.append((i, ("not",)))
        elif isinstance(node, ast.Constant) and id(node) not in skip \
                and isinstance(node.value, (bool, int, float, str)) and node.value != "":
            spots.append((i, ("const",)))
    out = []
    for i, kind in spots:
        new_tree = copy.deepcopy(tree)  # ast.walk visits the copy in the same order
        target = next(n for k, n in enumerate(ast.walk(new_tree)) if k == i)
        desc = _apply(target, kind)
        if kind == ("not",):
            _unwrap_not(new_tree, target)
        out.append((target.lineno, desc, ast.unparse(new_tree)))
    return out


def _apply(node: ast.AST, kind: tuple) -> str | None:
    if kind[0] == "cmp":
        old = node.ops[kind[1]]
        node.ops[kind[1]] = SWAP_CMP[type(old)]()
        return f"{type(old).__name__} -> {type(node.ops[kind[1]]).__name__}"
    if kind[0] == "bin":
        old = node.op
        node.op = SWAP_BIN[type(old)]()
        return f"{type(old).__name__} -> {type(node.op).__name__}"
    if kind[0] == "bool":
        old = node.op
        node.op = ast.Or() if isinstance(old, ast.And) else ast.And()
        return f"{type(old).__name__} -> {type(node.op).__name__}"
    if kind[0] == "not":
        return "drop not"
    v = node.value
    if isinstance(v, bool):
        node.value = not v
    elif isinstance(v, (int, float)):
        node.value = v + 1
    else:
        node.value = f"XX{v}XX"
    return f"{v!r} -> {node.value!r}"


def _unwrap_not(tree: ast.AST, target: ast.UnaryOp) -> bool:
    """Replace the `not x` node by `x` in its parent."""
    for parent in ast.walk(tree):
        for field, value in ast.iter_fields(parent):
            if value is target:
                setattr(parent, field, target.operand)
                return True
            if isinstance(value, list) and any(v is target for v in value):
                setattr(parent, field, [target.operand if v is target else v for v in value])
                return True
    return False


def run_tests(tree_dir: Path, tests: list[str], timeout: float) -> str:
    """'killed' / 'survived' / 'timeout' of the tests in a forked child importing from tree_dir."""
    pid = os.fork()
    if pid == 0:  # child: the parent never imported kaggle_kit, so this imports the mutant
        try:
            os.chdir(tree_dir)
            sys.path.insert(0, str(tree_dir))
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            import pytest

            code = pytest.main(["-x", "-q", "-p", "no:cacheprovider", "-m", "not slow", *tests])
        except BaseException:  # noqa: BLE001 - an import error is a killed mutant
            code = 1
        os._exit(int(code))
    deadline = time.time() + timeout
    while time.time() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            code = os.waitstatus_to_exitcode(status)
            # pytest: 0 passed, 1 a test failed, 2 collection error (e.g. the mutant does not
            # import: killed too), 4 usage error / 5 no tests (a wrong test id: not a verdict)
            return {0: "survived", 1: "killed", 2: "killed"}.get(code, f"pytest exit {code}")
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return "timeout"


def _scratch() -> Path:
    tmp = Path(tempfile.mkdtemp(prefix="kit_mut_"))
    for part in ("kaggle_kit", "tests", "recipes", "pyproject.toml"):
        src = REPO / part
        (shutil.copytree if src.is_dir() else shutil.copy)(
            src, tmp / part, **({"ignore": shutil.ignore_patterns("__pycache__")} if src.is_dir() else {}))
    return tmp


def preload() -> None:
    """Import the heavy third-party libraries once, in the parent (children inherit them)."""
    for mod in ("torch", "numpy", "pandas", "sklearn.metrics", "sklearn.linear_model",
                "albumentations", "timm", "accelerate", "pydantic", "yaml", "PIL.Image", "pytest",
                "typer", "rich", "matplotlib", "scipy.optimize"):
        try:
            __import__(mod)
        except ImportError:
            pass
    assert not any(m == "kaggle_kit" or m.startswith("kaggle_kit.") for m in sys.modules)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("module", nargs="?")
    ap.add_argument("tests", nargs="*")
    ap.add_argument("--max", type=int, default=0, help="at most N mutants (seeded random sample)")
    ap.add_argument("--budget-min", type=float, default=0, help="stop after N minutes")
    ap.add_argument("--functions", help="only mutate inside these top-level functions (a,b,c)")
    ap.add_argument("--pytest-args", default="", help="more pytest arguments, e.g. \"-k 'not slow'\"")
    ap.add_argument("--patches", help="JSON list of hand-written breaks to check instead")
    args = ap.parse_args()
    args.tests = [*args.tests, *shlex.split(args.pytest_args)]
    sys.dont_write_bytecode = True  # the mutated file changes within the same second
    preload()
    tree = _scratch()
    if args.patches:
        return run_patches(tree, json.loads(Path(args.patches).read_text()))
    rel = Path(args.module)
    original = (REPO / rel).read_text()
    base_t = time.time()
    if run_tests(tree, args.tests, 1800) != "survived":
        sys.exit(f"the tests fail (or time out) on the unmutated code: {' '.join(args.tests)}")
    base_t = time.time() - base_t
    found = mutants(original)
    if args.functions:
        spans = [(n.lineno, n.end_lineno) for n in ast.parse(original).body
                 if isinstance(n, ast.FunctionDef) and n.name in args.functions.split(",")]
        found = [m for m in found if any(a <= m[0] <= b for a, b in spans)]
    todo = found if not args.max or len(found) <= args.max else sorted(
        random.Random(0).sample(found, args.max))
    t0, results = time.time(), []
    for line, desc, src in todo:
        if args.budget_min and time.time() - t0 > args.budget_min * 60:
            break
        (tree / rel).write_text(src)
        verdict = run_tests(tree, args.tests, max(60.0, 5 * base_t))
        results.append((line, desc, verdict))
        if verdict == "survived":
            print(f"  survived  {rel}:{line}  {desc}", flush=True)
    (tree / rel).write_text(original)
    shutil.rmtree(tree, ignore_errors=True)
    n = len(results)
    killed = sum(v in ("killed", "timeout") for _, _, v in results)
    print(f"{rel}: {killed}/{n} mutants killed = {killed / max(n, 1):.0%} "
          f"({len(found)} possible, {n} run, tests {' '.join(args.tests)}, "
          f"{time.time() - t0:.0f} s, unmutated tests {base_t:.1f} s)")


def run_patches(tree: Path, patches: list[dict]) -> None:
    for tests in dict.fromkeys(p["tests"] for p in patches):  # each test passes unpatched
        verdict = run_tests(tree, shlex.split(tests), 1800)
        if verdict != "survived":
            sys.exit(f"unpatched code: {tests}: {verdict}")
    for p in patches:
        path = tree / p["file"]
        original = path.read_text()
        if p["old"] not in original:
            print(f"{p['label']}: PATTERN MISSING in {p['file']}", flush=True)
            continue
        path.write_text(original.replace(p["old"], p["new"]))
        verdict = run_tests(tree, shlex.split(p["tests"]), 1800)
        path.write_text(original)
        caught = "CAUGHT" if verdict in ("killed", "timeout") else "NOT CAUGHT"
        print(f"{caught:10s} {p['label']}  ({p['tests']}: {verdict})", flush=True)
    shutil.rmtree(tree, ignore_errors=True)


if __name__ == "__main__":
    main()
