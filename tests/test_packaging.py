"""pyproject.toml, environment.yml and the setup script must agree, or readers get different environments."""
import glob
import os
import re
try:
    import tomllib
except ImportError:      # Python 3.10
    import tomli as tomllib

import yaml

from helpers import REPO_ROOT


def _load():
    with open(os.path.join(REPO_ROOT, "pyproject.toml"), "rb") as f:
        py = tomllib.load(f)
    with open(os.path.join(REPO_ROOT, "environment.yml")) as f:
        env = yaml.safe_load(f)
    return py, env


def test_environment_yml_installs_every_extra_of_pyproject():
    py, env = _load()
    extras = set(py["project"]["optional-dependencies"])
    assert extras == {"dev", "book", "serve"}
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    editable = next(line for line in pip_section if line.startswith("-e ."))
    assert set(re.search(r"\[(.*)\]", editable).group(1).split(",")) == extras
    assert "./rustbpe" in pip_section
    setup = open(os.path.join(REPO_ROOT, "dev", "setup.sh")).read()
    assert '-e ".[dev,book,serve]"' in setup and "./rustbpe" in setup


def test_environment_yml_python_satisfies_requires_python_and_uses_conda_forge_only():
    py, env = _load()
    minimum = tuple(int(x) for x in py["project"]["requires-python"].lstrip(">=").split("."))
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert tuple(int(x) for x in python.split("=")[1].split(".")) >= minimum
    assert env["channels"] == ["conda-forge"]     # no deprecated `pytorch` channel: torch comes from pip
    assert not any(isinstance(d, str) and d.startswith(("pytorch", "torch")) for d in env["dependencies"])


def test_no_exact_pins_of_numeric_stack():
    py, _ = _load()
    deps = py["project"]["dependencies"]
    assert any(d.startswith("torch>=") for d in deps)
    for d in deps:
        if re.match(r"(numpy|scipy|torch)\b", d):
            assert "==" not in d, d


def _version(s):
    return tuple(int(x) for x in s.split("."))


def test_environment_yml_rust_matches_rustbpe_rust_version_and_locked_deps():
    _, env = _load()
    rust = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("rust"))
    with open(os.path.join(REPO_ROOT, "rustbpe", "Cargo.toml"), "rb") as f:
        msrv = tomllib.load(f)["package"]["rust-version"]
    assert rust.replace(" ", "") == f"rust>={msrv}"
    # A lock bump can raise the minimum: where cargo has the locked sources, none may need a newer Rust.
    # (Only crates every target builds: the lock also holds wasm-only ones like wasip2.)
    with open(os.path.join(REPO_ROOT, "rustbpe", "Cargo.lock"), "rb") as f:
        locked = {p["name"]: p["version"] for p in tomllib.load(f)["package"]}
    for name in ("pyo3", "pyo3-ffi", "pyo3-macros", "rayon", "rayon-core"):
        for manifest in glob.glob(os.path.expanduser(f"~/.cargo/registry/src/*/{name}-{locked[name]}/Cargo.toml")):
            with open(manifest, "rb") as f:
                need = tomllib.load(f)["package"].get("rust-version", "0")
            assert _version(need) <= _version(msrv), f"{name} {locked[name]} needs Rust {need} > {msrv}"
