"""Every package a rule's script imports (directly or through the deemd library) is in
that rule's conda env, pinned as in requirements.txt."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "workflow" / "scripts"
# import name -> conda package name(s) providing it
PROVIDERS = {
    "numpy": {"numpy"},
    "scipy": {"scipy"},
    "skimage": {"scikit-image"},
    "pandas": {"pandas"},
    "zarr": {"zarr"},
    "numcodecs": {"numcodecs"},
    "PIL": {"pillow"},
    "tifffile": {"tifffile"},
    "imagecodecs": {"imagecodecs"},
    # zarr's own dependency (its crc32c codec): deemd.store computes the same checksum.
    "google_crc32c": {"zarr"},
    "matplotlib": {"matplotlib", "matplotlib-base"},
    "jsonschema": {"jsonschema"},
    "yaml": {"pyyaml"},
    "torch": {"torch", "pytorch"},
    "torchvision": {"torchvision"},
    "sklearn": {"scikit-learn"},
    "rpy2": {"rpy2"},
    "ome_zarr": {"ome-zarr"},
    "dask": {"dask"},
    "itables": {"itables"},
}


def rules():
    """(rule name, conda env path, script path) of every rule with a script."""
    found = []
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        text = smk.read_text()
        for block in re.split(r"\n(?=(?:rule|checkpoint) \w+:)", text):
            name = re.match(r"(?:rule|checkpoint) (\w+):", block)
            conda = re.search(r'conda:\s*\n\s*"([^"]+)"', block)
            script = re.search(r'script:\s*\n\s*"([^"]+)"', block)
            if name and script:
                assert conda, f"rule {name.group(1)} in {smk.name} has no conda env"
                found.append((name.group(1), (smk.parent / conda.group(1)).resolve(), (smk.parent / script.group(1)).resolve()))
    return found


def imported_modules(path: Path, seen: set | None = None) -> set[str]:
    """Top-level third-party modules imported by a script and the deemd modules it uses."""
    seen = set() if seen is None else seen
    if path in seen:
        return set()
    seen.add(path)
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            top = name.split(".")[0]
            if top == "deemd":
                target = SCRIPTS / Path(*name.split("."))
                target = target.with_suffix(".py") if target.with_suffix(".py").exists() else target / "__init__.py"
                modules |= imported_modules(target, seen)
            elif top not in sys.stdlib_module_names and top != "__future__":
                modules.add(top)
    return modules


def env_packages(path: Path) -> dict[str, str | None]:
    """Package -> pinned version (None if unpinned) of a conda env file, pip section too."""
    packages = {}
    for entry in yaml.safe_load(path.read_text())["dependencies"]:
        for spec in entry["pip"] if isinstance(entry, dict) else [entry]:
            match = re.match(r"([A-Za-z0-9_.-]+)\s*(?:==?\s*([\w.*]+))?", spec)
            packages[match.group(1).lower()] = match.group(2)
    return packages


RULES = rules()


def test_every_rule_was_found():
    names = {name for name, _, _ in RULES}
    assert {"stitch", "nuclei", "train", "infer", "efficacy", "demo_plate", "sites_table"} <= names


@pytest.mark.parametrize("rule,env,script", RULES, ids=[r[0] for r in RULES])
def test_rule_env_provides_every_import(rule, env, script):
    packages = env_packages(env)
    for module in sorted(imported_modules(script)):
        assert module in PROVIDERS, f"{script.name} imports {module}: add it to PROVIDERS and to {env.name}"
        assert PROVIDERS[module] & set(packages), f"rule {rule}: {script.name} imports {module}, which {env.name} lacks"
    # pandas reads and writes Parquet through pyarrow
    if "pandas" in imported_modules(script):
        assert "pyarrow" in packages, f"rule {rule}: {env.name} lacks pyarrow for Parquet"


def test_env_pins_match_requirements():
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        match = re.match(r"([A-Za-z0-9_.-]+)==([\w.]+)", line.strip())
        if match:
            pins[match.group(1).lower()] = match.group(2)
    aliases = {"matplotlib-base": "matplotlib", "pytorch": "torch"}
    for env in sorted((REPO / "envs").glob("*.yaml")):
        for package, version in env_packages(env).items():
            name = aliases.get(package, package)
            if version and name in pins:
                assert version == pins[name], f"{env.name}: {package} {version}, requirements.txt {pins[name]}"
