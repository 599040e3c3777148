"""Run a recipe: a YAML file of training steps, each a `python -m <module>` command.

    python -m training.recipe training/configs/students.yaml [--dry-run] [--from STEP] [--only STEP]

A recipe replaces a long command line in the Makefile with a file that says what each step is
for. Each step names the module it runs and its arguments as a mapping: `key: value` becomes
`--key value`, `key: true` becomes `--key`, a list becomes `--key a b c`, and the key `_` holds
positional arguments. A step with `creates: PATH` is skipped when PATH exists, so an interrupted
recipe resumes where it stopped (delete the path to redo the step). Steps run in order, each in
its own interpreter; the first that fails stops the recipe with its exit code.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]


class RecipeError(ValueError):
    """A recipe file that cannot be run; the message names the file and the step."""


@dataclass(frozen=True)
class Step:
    name: str
    module: str
    argv: tuple[str, ...]
    creates: Path | None

    def command(self) -> list[str]:
        return [sys.executable, "-m", self.module, *self.argv]


def _argv(args: dict[str, Any], where: str) -> tuple[str, ...]:
    argv: list[str] = [str(a) for a in args.get("_", [])]
    for key, value in args.items():
        if key == "_":
            continue
        flag = f"--{key.replace('_', '-')}"
        if value is True:
            argv.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, list):
            argv += [flag, *(str(v) for v in value)]
        elif isinstance(value, (str, int, float)):
            argv += [flag, str(value)]
        else:
            raise RecipeError(f"{where}: argument {key!r} must be text, a number, true or a list")
    return tuple(argv)


def load_recipe(path: Path) -> tuple[str, list[Step]]:
    """The recipe's description and steps, checked before anything runs."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as err:
        raise RecipeError(f"{path}: cannot read it ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("steps"), list) or not raw["steps"]:
        raise RecipeError(f"{path}: expected a mapping with a non-empty list `steps`")
    steps, names = [], set()
    for index, entry in enumerate(raw["steps"], start=1):
        where = f"{path}: step {index}"
        if not isinstance(entry, dict) or not isinstance(entry.get("run"), str):
            raise RecipeError(f"{where}: needs `run: <module>` (e.g. training.pipeline)")
        name = str(entry.get("name", f"step{index}"))
        if name in names:
            raise RecipeError(f"{where}: the name {name!r} is used twice")
        names.add(name)
        unknown = set(entry) - {"name", "run", "args", "creates"}
        if unknown:
            raise RecipeError(f"{where} ({name}): unknown keys {sorted(unknown)}")
        args = entry.get("args") or {}
        if not isinstance(args, dict):
            raise RecipeError(f"{where} ({name}): `args` must be a mapping")
        creates = Path(entry["creates"]) if entry.get("creates") else None
        steps.append(Step(name, entry["run"], _argv(args, f"{where} ({name})"), creates))
    return str(raw.get("description", "")).strip(), steps


def select(steps: list[Step], start: str | None, only: str | None) -> list[Step]:
    names = [s.name for s in steps]
    for wanted in (start, only):
        if wanted is not None and wanted not in names:
            raise RecipeError(f"no step {wanted!r}; the steps are {', '.join(names)}")
    if only is not None:
        return [s for s in steps if s.name == only]
    return steps[names.index(start) :] if start is not None else steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("recipe", type=Path, help="a YAML file, e.g. training/configs/models.yaml")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--from", dest="start", metavar="STEP", help="start at this step")
    parser.add_argument("--only", metavar="STEP", help="run just this step")
    args = parser.parse_args(argv)
    try:
        description, steps = load_recipe(args.recipe)
        steps = select(steps, args.start, args.only)
    except RecipeError as err:
        print(f"recipe: {err}", file=sys.stderr)
        return 2
    if description:
        print(f"recipe {args.recipe}: {description.splitlines()[0]}")
    for number, step in enumerate(steps, start=1):
        shown = shlex.join(["python", "-m", step.module, *step.argv])
        head = f"[{number}/{len(steps)}] {step.name}"
        if step.creates is not None and (REPO_ROOT / step.creates).exists():
            print(f"{head}: skipped, {step.creates} exists (delete it to run again)")
            continue
        print(f"{head}: {shown}", flush=True)
        if args.dry_run:
            continue
        started = time.monotonic()
        code = subprocess.run(step.command(), cwd=REPO_ROOT, check=False).returncode
        if code != 0:
            print(f"recipe: step {step.name!r} failed with exit code {code}", file=sys.stderr)
            return code
        print(f"{head}: done in {time.monotonic() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
