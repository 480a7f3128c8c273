"""The wheel: one import name (tritort, with tritort.codegen and tritort.fallback_cpu inside),
no checkout folders, and a command line that works from it with the checkout out of reach."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

import tritort
from tests import models
from tests.triton_env import triton_runs

ROOT = Path(__file__).resolve().parents[1]
# build outputs of earlier builds would go into the wheel as they are: build from a clean copy
NOT_SOURCES = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__",
                                     ".pytest_cache", "results")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """The wheel built from the checkout, and a folder it is pip-installed into."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCES)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp),
                    str(source)], check=True, capture_output=True, timeout=300)
    [wheel] = tmp.glob("tritort-*.whl")
    target = tmp / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(target), str(wheel)], check=True, capture_output=True, timeout=300)
    return {"wheel": wheel, "target": target}


def _in_wheel_env(installed, tmp_path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """``python *args`` from tmp_path with only the installed wheel importable as tritort
    (dependencies come from this environment)."""
    environ = dict(os.environ, PYTHONPATH=str(installed["target"]), **env)
    return subprocess.run([sys.executable, *args], cwd=tmp_path, env=environ, text=True,
                          capture_output=True, timeout=300)


def test_wheel_holds_one_package_and_no_checkout_folders(installed):
    names = zipfile.ZipFile(installed["wheel"]).namelist()
    top_level = {n.split("/")[0] for n in names}
    assert top_level == {"tritort", f"tritort-{tritort.__version__}.dist-info"}
    for engine in ("codegen", "fallback_cpu"):
        files = {n for n in names if n.startswith(f"tritort/{engine}/") and n.endswith(".py")}
        assert f"tritort/{engine}/__init__.py" in files
        assert files == {f"tritort/{engine}/{p.name}" for p in (ROOT / engine).glob("*.py")}
    assert not any(part in ("perf", "tests") for n in names for part in n.split("/"))


def test_only_tritort_is_importable_and_it_is_the_wheels(installed, tmp_path):
    r = _in_wheel_env(installed, tmp_path, "-c",
                      "import tritort, tritort.codegen, tritort.fallback_cpu; "
                      "print(tritort.__file__, tritort.codegen.__file__)")
    assert r.returncode == 0, r.stderr
    assert all(Path(f).is_relative_to(installed["target"]) for f in r.stdout.split())
    for name in ("codegen", "fallback_cpu", "perf"):
        r = _in_wheel_env(installed, tmp_path, "-c", f"import {name}")
        assert r.returncode == 1 and f"No module named '{name}'" in r.stderr


def test_help_offers_no_bench(installed, tmp_path):
    r = _in_wheel_env(installed, tmp_path, "-m", "tritort", "--help")
    assert r.returncode == 0, r.stderr
    assert "autotune" in r.stdout and "bench" not in r.stdout
    # the console script the wheel installs, too
    r = _in_wheel_env(installed, tmp_path, str(installed["target"] / "bin" / "tritort"), "--help")
    assert r.returncode == 0 and "bench" not in r.stdout, r.stderr


def test_demo_and_inspect_from_the_wheel(installed, tmp_path):
    r = _in_wheel_env(installed, tmp_path, "-m", "tritort", "demo", "--repeat", "2")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("-> OK") == 2 and "MISMATCH" not in r.stdout
    path = tmp_path / "m.onnx"
    onnx.save(models.add_relu(), path)
    r = _in_wheel_env(installed, tmp_path, "-m", "tritort", "inspect", str(path),
                      "--providers", "CPUExecutionProvider")
    assert r.returncode == 0, r.stderr
    assert "[CPUExecutionProvider] add(Add)" in r.stdout and "relu(Relu)" in r.stdout


@pytest.mark.skipif(not triton_runs(), reason="needs Triton")
def test_autotune_from_the_wheel_in_the_interpreter(installed, tmp_path):
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((16, 16), np.float32),
                                "W")
    model = models.make([helper.make_node("MatMul", ["X", "W"], ["Y"], name="mm")],
                        [models.vi("X", TP.FLOAT, ["M", 16])], [models.vi("Y", TP.FLOAT, None)],
                        [w])
    path, db = tmp_path / "mm.onnx", tmp_path / "tuned.json"
    onnx.save(model, path)
    r = _in_wheel_env(installed, tmp_path, "-m", "tritort", "autotune", str(path),
                      "--shapes", "X=16,16", "--db", str(db), TRITON_INTERPRET="1",
                      TRITORT_CACHE_DIR=str(tmp_path / "cache"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "timings mean nothing" in r.stdout and "1 kernel/shape pairs" in r.stdout
    [table] = json.loads(db.read_text())["tables"]
    assert table["device"] == "triton-interpreter" and len(table["results"]) == 1


def test_the_installed_package_here_has_one_import_name_too(tmp_path):
    # the environment the suite runs in (an editable install in CI): same single name
    probe = ("import importlib.util as u, tritort.codegen as c, tritort.fallback_cpu as f; "
             "print(u.find_spec('codegen'), u.find_spec('fallback_cpu'), c.__name__, f.__name__)")
    r = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, text=True,
                       capture_output=True, timeout=120,
                       env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert r.stdout.split() == ["None", "None", "tritort.codegen", "tritort.fallback_cpu"], \
        r.stderr
