"""The package installs like an ament_python package: share/ files, ament index marker, no
torch onboard."""

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHARE_FOLDERS = ("launch", "config", "models", "demo")


@pytest.fixture(scope="module")
def installed_prefix(tmp_path_factory) -> Path:
    """The prefix a real install would create: the wheel pip builds, with its data unpacked.

    (`pip install --prefix` would uninstall the copy in the test venv, so the wheel is read
    instead.)
    """
    wheels = tmp_path_factory.mktemp("wheels")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(wheels),
            str(REPO),
        ],
        check=True,
        cwd=wheels,
        capture_output=True,
    )
    prefix = tmp_path_factory.mktemp("prefix")
    with zipfile.ZipFile(next(wheels.glob("vae_ood_monitor-*.whl"))) as wheel:
        for name in wheel.namelist():
            _, _, rest = name.partition(".data/data/")
            if rest:
                (prefix / rest).parent.mkdir(parents=True, exist_ok=True)
                (prefix / rest).write_bytes(wheel.read(name))
    return prefix


def test_share_folders_are_installed(installed_prefix):
    share = installed_prefix / "share" / "vae_ood_monitor"
    assert (share / "package.xml").read_bytes() == (REPO / "package.xml").read_bytes()
    for folder in SHARE_FOLDERS:
        sources = sorted(
            p.relative_to(REPO)
            for p in (REPO / folder).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        )
        assert sources, f"{folder}/ is empty"
        for source in sources:
            assert (share / source).read_bytes() == (REPO / source).read_bytes(), source


def test_ament_index_marker_is_installed(installed_prefix):
    assert (
        installed_prefix
        / "share"
        / "ament_index"
        / "resource_index"
        / "packages"
        / "vae_ood_monitor"
    ).is_file()


def test_share_directory_is_found_by_ament_index():
    from ament_index_python.packages import get_package_share_directory

    share = Path(get_package_share_directory("vae_ood_monitor"))
    assert (share / "package.xml").is_file() and (share / "models").is_dir()


OFFBOARD = {"torch", "sklearn", "torch_pruning", "albumentations", "training"}


def _imported_roots(source: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text(), filename=str(source))):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add((node.module or "").split(".")[0])
    return names


def test_runtime_tests_run_without_torch_sklearn_or_training():
    """test/runtime and the top-level conftest run on a robot (colcon test), where none exist."""
    sources = [*(REPO / "test" / "runtime").rglob("*.py"), REPO / "test" / "conftest.py"]
    sources.append(REPO / "test" / "support.py")
    for source in sources:
        assert not _imported_roots(source) & OFFBOARD, f"{source.relative_to(REPO)} imports them"


def test_onboard_runtime_never_imports_torch_or_sklearn():
    forbidden = OFFBOARD - {"training"}
    for source in (REPO / "vae_ood_monitor").rglob("*.py"):
        tree = ast.parse(source.read_text(), filename=str(source))
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in names:
                assert name.split(".")[0] not in forbidden, (
                    f"{source.relative_to(REPO)} imports {name}"
                )


@pytest.mark.parametrize("name", ["monitor.launch.py", "replay.launch.py"])
def test_launch_files_define_a_launch_description(name):
    tree = ast.parse((REPO / "launch" / name).read_text())
    assert any(
        isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description"
        for n in tree.body
    )
