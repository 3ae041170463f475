"""Every script answers --help at once: no torch, mlflow or matplotlib before main() runs,
defaults shown, the same common flags everywhere."""

from __future__ import annotations

import os
import resource
import subprocess
import sys

import pytest

from conftest import ROOT

SCRIPTS = ["phase1", "phase2", "study", "explore", "compare", "compare_slots"]
RUNNING_SCRIPTS = ["phase1", "phase2", "study", "explore"]  # those that train
HEAVY = ("torch", "mlflow", "matplotlib", "sklearn", "scipy", "triton")

# Run the script's --help in a fresh interpreter, then list what got imported.
PROBE = """
import runpy, sys
sys.argv = [sys.argv[1], "--help"]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit:
    pass
sys.stderr.write("MODULES " + " ".join(sorted(sys.modules)) + "\\n")
"""


def _help(script: str) -> tuple[subprocess.CompletedProcess, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run([sys.executable, "-c", PROBE, str(ROOT / "experiments" / f"{script}.py")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return out, cpu


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_imports_nothing_heavy_and_answers_under_two_seconds(script):
    out, cpu_seconds = _help(script)
    assert out.returncode == 0, out.stderr[-2000:]
    modules = set(out.stderr.split("MODULES ", 1)[1].split())
    heavy = sorted(m for m in modules if m.split(".")[0] in HEAVY)
    assert not heavy, f"{script}.py --help imports {heavy[:5]}"
    # CPU time, not wall time: a shared machine slows the wall clock, not the work done
    assert cpu_seconds < 2.0, f"{script}.py --help took {cpu_seconds:.1f} s of CPU"
    assert "default:" in out.stdout, f"{script}.py --help shows no defaults"


@pytest.mark.parametrize("script", RUNNING_SCRIPTS)
def test_every_running_script_has_the_common_flags(script):
    out, _ = _help(script)
    for flag in ("--data-root", "--runs-root", "--no-progress"):
        assert flag in out.stdout, f"{script}.py lacks {flag}"


def test_config_default_is_shown():
    out, _ = _help("phase2")
    options = out.stdout.split("options:", 1)[1]
    assert "slot3.yaml" in options.split("--config CONFIG", 1)[1].split("--override")[0]


ALL_SCRIPTS = sorted(p.stem for p in (ROOT / "experiments").glob("*.py"))


@pytest.mark.parametrize("script", ALL_SCRIPTS)
def test_help_works_without_docstrings(script):
    """`python -OO` strips docstrings: no script may need its own (or a module's) __doc__."""
    out = subprocess.run([sys.executable, "-OO", str(ROOT / "experiments" / f"{script}.py"),
                          "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "usage:" in out.stdout


@pytest.mark.parametrize("script", ALL_SCRIPTS)
def test_one_entry_style(script):
    """Every script runs through cli.run_main and imports the installed package as it is."""
    source = (ROOT / "experiments" / f"{script}.py").read_text()
    assert "run_main(main)" in source, f"{script}.py does not run through cli.run_main"
    assert "sys.path" not in source, f"{script}.py edits sys.path"
