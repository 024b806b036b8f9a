"""environment.yml (conda users) lists the same dependencies as pyproject.toml (pip users)."""

import re
from importlib.metadata import requires
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"pytorch": "torch"}


def _split(requirement: str) -> tuple[str, str]:
    match = re.match(r"^([A-Za-z0-9_.-]+)\s*(.*)$", requirement)
    assert match, requirement
    name, spec = match.groups()
    name = CONDA_NAMES.get(name.lower(), name.lower().replace("_", "-"))
    return name, spec.replace(" ", "")


def test_environment_yml_parses_and_matches_pyproject():
    # pyproject.toml as installed (pip install -e .): the core, test and mpich requirements.
    wanted = {}
    requirements = requires("fedbat_mpi")
    assert requirements is not None, "fedbat_mpi's metadata lists no requirements"
    for requirement in requirements:
        spec, _, marker = requirement.partition(";")
        if not marker or re.search(r'extra == "(test|mpich)"', marker):
            name, version = _split(spec.strip())
            wanted[name] = version

    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert {"name", "channels", "dependencies"} <= env.keys() and "conda-forge" in env["channels"]
    listed: dict[str, str] = {}
    for entry in env["dependencies"]:
        requirements = entry["pip"] if isinstance(entry, dict) else [entry]
        for requirement in requirements:
            if requirement.startswith("-e") or requirement in ("pip",) or requirement.startswith("python"):
                continue
            name, spec = _split(requirement)
            listed[name] = spec
    assert listed == wanted
