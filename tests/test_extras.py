"""Dependencies: pyproject's floors and extras, the tested versions in constraints.txt, and the install commands of
the README and CI agree; each optional extra imports where it is installed (else the test skips, naming the extra
and its install command)."""
from __future__ import annotations

import importlib
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # the 'test' extra installs tomli on 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
DETECTOR_NO_DEPS = "pip install -c constraints.txt --no-deps facenet-pytorch==2.6.0"

# Per extra: the import name of every distribution it lists, what else the feature imports, and how to install it.
EXTRAS = {
    "test": dict(modules={"pytest": "pytest", "scipy": "scipy", "packaging": "packaging", "jsonschema": "jsonschema",
                          "tomli": "tomli"},
                 also=[], install='pip install -c constraints.txt -e ".[test]"'),
    "faster-eval": dict(modules={"faster-coco-eval": "faster_coco_eval"}, also=[],
                        install='pip install -c constraints.txt -e ".[faster-eval]"'),
    "detector": dict(modules={"requests": "requests"}, also=["facenet_pytorch"],
                     install=f'pip install -c constraints.txt -e ".[detector]" && {DETECTOR_NO_DEPS}'),
    "slurm": dict(modules={"submitit": "submitit"}, also=[], install='pip install -c constraints.txt -e ".[slurm]"'),
    "mmdet": dict(modules={"mmengine": "mmengine", "mmdet": "mmdet"}, also=[],
                  install='pip install -e ".[mmdet]" plus a compiled mmcv 2.x (MMDET_INSTALL in '
                          'avanon/study/training/trainers.py)'),
}
# The extras CI and the README's test command install (mmdet needs a compiled mmcv: never in CI).
CI_EXTRAS = {"test", "faster-eval", "detector", "slurm"}
# Floors the code needs (pyproject must admit this version and reject anything older).
FLOORS = {
    "torch": "2.3",  # torch.amp.GradScaler("cuda")
    "torchvision": "0.18",  # torch 2.3's torchvision
    "joblib": "1.4",  # Parallel(return_as="generator_unordered")
    "pycocotools": "2.0.8",  # numpy 2 wheels
}


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def requirements(extra: str | None = None) -> dict[str, Requirement]:
    project = pyproject()
    lines = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    reqs = [Requirement(line) for line in lines]
    out = {canonicalize_name(r.name): r for r in reqs}
    assert len(out) == len(reqs), f"a package listed twice in {extra or 'dependencies'}"
    return out


def constraints() -> dict[str, Requirement]:
    pins = {}
    for number, raw in enumerate((ROOT / "constraints.txt").read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"constraints.txt:{number}: {raw!r} is not a pin"
        name = canonicalize_name(req.name)
        assert name not in pins, f"constraints.txt:{number}: {req.name} pinned twice"
        pins[name] = req
    return pins


def pinned_version(req: Requirement) -> Version:
    return Version(next(iter(req.specifier)).version)


def readme_commands() -> tuple[str, str]:
    """The README's two set-up commands (the lines after '# 1.' and '# 2.' in its bash block)."""
    text = (ROOT / "README.md").read_text()
    found = [re.search(rf"^# {n}\. .*\n(.+)$", text, re.MULTILINE) for n in (1, 2)]
    assert all(found), "README: set-up commands '# 1. ...' and '# 2. ...' not found"
    return found[0].group(1).strip(), found[1].group(1).strip()


# ------------------------------------------------------------------------------------- pyproject and constraints


def test_extras_in_pyproject_are_the_tested_ones():
    """Every extra has an entry here (so an install test), and each entry names exactly the extra's packages."""
    extras = pyproject()["optional-dependencies"]
    assert set(extras) == set(EXTRAS)
    for name, spec in EXTRAS.items():
        assert set(requirements(name)) == {canonicalize_name(d) for d in spec["modules"]}, name


def test_constraints_parse_and_pin_every_dependency_ci_installs():
    pins = constraints()
    needed = dict(requirements())
    for extra in CI_EXTRAS:
        needed.update(requirements(extra))
    applies = {name: r for name, r in needed.items() if r.marker is None or r.marker.evaluate()}
    # tomli only on Python 3.10; everything else is pinned (markers on a pin only limit it to the Pythons its
    # release supports)
    missing = sorted(set(applies) - set(pins) - {"tomli"})
    assert not missing, f"constraints.txt does not pin {missing}"
    assert "facenet-pytorch" in pins and "mmdet" not in pins  # the detector's --no-deps install; mmdet is untested


def test_every_pin_satisfies_pyproject():
    """The tested version of each package is admitted by the floors (and any bounds) in pyproject."""
    pins = constraints()
    declared = [requirements()] + [requirements(extra) for extra in EXTRAS]
    checked = 0
    for reqs in declared:
        for name, req in reqs.items():
            if name in pins:
                version = pinned_version(pins[name])
                assert req.specifier.contains(version, prereleases=True), \
                    f"constraints.txt pins {name}=={version}, pyproject wants {req}"
                checked += 1
    assert checked >= 15


def test_floors_match_the_code():
    """The floors that the code's own API use needs; no ceilings on torch/torchvision (or numpy: the Cityscapes
    evaluation shims cityscapesscripts for numpy >= 2.3)."""
    deps = requirements()
    for name, floor in FLOORS.items():
        spec = deps[name].specifier
        assert spec.contains(floor), f"{name}: {spec} rejects {floor}"
        older = Version(floor).release
        below = Version(".".join(map(str, older[:-1] + (older[-1] - 1,))) + ".999") if older[-1] else None
        if below is not None:
            assert not spec.contains(below), f"{name}: {spec} admits {below}, older than the code needs ({floor})"
    for name in ("torch", "torchvision", "numpy"):
        assert all(s.operator in (">=", ">", "!=") for s in deps[name].specifier), f"{name} is capped: {deps[name]}"
    assert pinned_version(constraints()["torch"]) == Version("2.14.1")
    assert pinned_version(constraints()["torchvision"]) == Version("0.29.1")


def test_readme_and_ci_install_the_tested_versions_and_the_same_extras():
    install, tests = readme_commands()
    assert "-c constraints.txt torch==2.14.1 torchvision==0.29.1" in install
    assert '-c constraints.txt -e ".[test]"' in install
    extras = re.search(r'-e "\.\[([^\]]*)\]"', tests)
    assert extras and set(extras.group(1).split(",")) == CI_EXTRAS, tests
    assert DETECTOR_NO_DEPS in tests and tests.endswith("python -m pytest -q")
    assert "==2.6.0" in DETECTOR_NO_DEPS and pinned_version(constraints()["facenet-pytorch"]) == Version("2.6.0")
    ci = (ROOT / ".ci" / "run").read_text()
    assert tests in ci, ".ci/run must run the README's test command verbatim"
    assert "-c constraints.txt torch==2.14.1 torchvision==0.29.1" in ci
    assert "mmdet" not in re.sub(r"#.*", "", ci), "CI must not install the mmdet extra"


# ---------------------------------------------------------------------------------------------- extras import


def _absent(module: str) -> bool:
    """True if the module (or a package above it) is not installed; a module that is installed but fails to
    import is an error, not a skip."""
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and (module == e.name or module.startswith(e.name + ".")):
            return True
        raise
    return False


@pytest.mark.parametrize("extra", sorted(EXTRAS))
def test_extra_imports(extra):
    spec = EXTRAS[extra]
    reqs = requirements(extra)
    applies = {name: r for name, r in reqs.items() if r.marker is None or r.marker.evaluate()}
    modules = [spec["modules"][d] for d in spec["modules"] if canonicalize_name(d) in applies] + spec["also"]
    missing = [m for m in modules if _absent(m)]
    if missing:
        pytest.skip(f"extra '{extra}' is not installed (no {', '.join(missing)}): {spec['install']}")
    for dist in spec["modules"]:
        name = canonicalize_name(dist)
        if name in applies:  # the installed release satisfies what the extra asks for
            version = Version(importlib.metadata.version(dist))
            assert applies[name].specifier.contains(version, prereleases=True), f"{dist} {version}: {applies[name]}"
    if extra == "detector":
        from facenet_pytorch import MTCNN  # noqa: F401
    if extra == "mmdet":
        from avanon.study.training.trainers import TrainerUnavailable, check_mmdet

        try:
            check_mmdet()
        except TrainerUnavailable as e:
            pytest.skip(f"extra 'mmdet' is installed but mmcv is not compiled (mmcv.ops): {e}")
