"""Device profiles: loading, lookup order, validation errors, the wheel's copy, the setup scripts and the unit."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from edgemeta.profiles import DeviceProfile, list_profiles, load_profile
from tests.harness import ROOT, apt_install, run_python

DEVICES = ROOT / "devices"  # setup scripts, the systemd unit, the README
PROFILES = ROOT / "edgemeta" / "profiles"  # the profiles themselves, package data
BOARDS = ["coral-dev-board", "coral-usb-pi", "raspberry-pi-4", "raspberry-pi-5", "raspberry-pi-zero-2-w"]
SCRIPTS = [DEVICES / "setup-raspberry-pi.sh", DEVICES / "setup-coral.sh"]


def test_every_board_has_a_valid_profile():
    assert list_profiles() == BOARDS
    for name in BOARDS:
        p = load_profile(name)
        assert isinstance(p, DeviceProfile) and p.key == name and p.path == PROFILES / f"{name}.json"
        assert p.budget_bytes == p.memory_budget_mb * 1024 * 1024
        assert 1 <= p.threads <= p.cores and p.memory_budget_mb < min(p.ram_mb)
        assert (DEVICES / p.setup).is_file()
        assert p.to_dict()["key"] == name and p.to_dict()["ram_mb"] == list(p.ram_mb)
    zero = load_profile("raspberry-pi-zero-2-w")
    assert (zero.ram_mb, zero.cores, zero.interpreter, zero.delegate) == ((512,), 4, "ai_edge_litert", None)
    assert load_profile("coral-usb-pi").delegate == "edgetpu" and load_profile("raspberry-pi-5").delegate is None


def test_lookup_by_path_bare_file_name_and_env_dir(tmp_path, monkeypatch):
    data = json.loads((PROFILES / "raspberry-pi-4.json").read_text())
    (tmp_path / "my-board.json").write_text(json.dumps({**data, "memory_budget_mb": 100}))
    (tmp_path / "raspberry-pi-4.json").write_text(json.dumps({**data, "memory_budget_mb": 111}))
    assert load_profile(str(tmp_path / "my-board.json")).memory_budget_mb == 100
    assert load_profile("raspberry-pi-4.json").key == "raspberry-pi-4"  # no such file here: looked up by name
    assert load_profile("raspberry-pi-4").memory_budget_mb == 256
    monkeypatch.setenv("EDGEMETA_DEVICES_DIR", str(tmp_path))
    assert load_profile("raspberry-pi-4").memory_budget_mb == 111  # the env dir comes before the repository's
    assert load_profile("my-board").key == "my-board" and "my-board" in list_profiles()


def test_unknown_name_and_missing_file_say_what_was_received():
    with pytest.raises(ValueError) as e:
        load_profile("raspberry-pi-3")
    assert str(e.value) == (f"Unknown device 'raspberry-pi-3'. Expected one of {BOARDS} or a path to a profile .json. "
                            "Received: 'raspberry-pi-3'")
    with pytest.raises(FileNotFoundError, match="Received: '/nonexistent/board.json'"):
        load_profile("/nonexistent/board.json")


@pytest.mark.parametrize("change, message", [
    ({"cores": "4"}, r"field 'cores' must be a positive integer. Received: '4'"),
    ({"threads": True}, r"field 'threads' must be an integer from 1 to cores. Received: True"),
    ({"threads": 5}, r"field 'threads' must be an integer from 1 to cores \(4\). Received: 5"),
    ({"memory_budget_mb": 1024}, r"field 'memory_budget_mb' must be .* below the smallest ram_mb \(1024\). Received: 1024"),
    ({"ram_mb": []}, r"field 'ram_mb' must be a non-empty list .* Received: \[\]"),
    ({"interpreter": "tensorflow"},
     r"field 'interpreter' must be one of \['ai_edge_litert', 'tflite_runtime'\]. Received: 'tensorflow'"),
    ({"delegate": "edgetpu"}, r"field 'delegate' must be null or the board's accelerator \(None\). Received: 'edgetpu'"),
    ({"setup": "../evil.sh"}, r"field 'setup' must be a setup script file name .* Received: '../evil.sh'"),
    ({"thread": 2}, r"unknown field\(s\) \['thread'\] \(a typo\?\)"),
    ({"quantization": None}, r"field 'quantization' must be one of .* Received: None"),
])
def test_malformed_profiles_name_file_field_and_value(tmp_path, change, message):
    data = {**json.loads((PROFILES / "raspberry-pi-4.json").read_text()), **change}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + message):
        load_profile(str(path))


def test_missing_field_and_invalid_json(tmp_path):
    data = json.loads((PROFILES / "raspberry-pi-4.json").read_text())
    del data["memory_budget_mb"]
    (tmp_path / "a.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"a.json' is missing field\(s\) \['memory_budget_mb'\]"):
        load_profile(str(tmp_path / "a.json"))
    (tmp_path / "b.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"b.json' is not valid JSON"):
        load_profile(str(tmp_path / "b.json"))


def test_devices_module_needs_only_the_standard_library():
    code = ("import sys\nfor n in ('tensorflow', 'numpy', 'PIL'): sys.modules[n] = None\n"
            "from edgemeta.profiles import load_profile\nprint(load_profile('raspberry-pi-zero-2-w').budget_bytes)")
    result = run_python(code, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(96 * 1024 * 1024)]


def test_readme_field_table_matches_the_loader():
    from edgemeta.profiles import _FIELDS

    table = re.findall(r"^\| `(\w+)` \| [^|]+ \|", (DEVICES / "README.md").read_text(), re.M)
    assert set(table) == set(_FIELDS) | {"key"}
    for name in BOARDS:
        assert f"`{name}.json`" in (DEVICES / "README.md").read_text()


def test_wheel_ships_the_profiles_as_package_data_and_finds_them(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for item in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / item, src)
    for item in ("edgemeta", "converters"):
        shutil.copytree(ROOT / item, src / item, ignore=shutil.ignore_patterns("__pycache__"))
    build_wheel = f"from setuptools import build_meta; print(build_meta.build_wheel({str(tmp_path / 'dist')!r}))"
    build = subprocess.run([sys.executable, "-c", build_wheel],
                           cwd=src, capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = tmp_path / "dist" / build.stdout.split()[-1]
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(Path(n).name for n in names if n.startswith("edgemeta/profiles/") and n.endswith(".json"))
    assert shipped == sorted(f"{b}.json" for b in BOARDS)
    # Unpacked as pip would, away from the repository: found inside the installed package.
    with zipfile.ZipFile(wheel) as z:
        z.extractall(tmp_path / "unpacked")
    code = (f"import sys; sys.path.insert(0, {str(tmp_path / 'unpacked')!r})\n"
            "import edgemeta.profiles as d; print(d.__file__); print(d.load_profile('coral-usb-pi').path)")
    result = run_python(code, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(tmp_path / "unpacked" / "edgemeta" / "profiles" / "__init__.py"),
                                     str(tmp_path / "unpacked" / "edgemeta" / "profiles" / "coral-usb-pi.json")]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_setup_scripts_parse_and_pass_shellcheck(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    reason = apt_install(("shellcheck",), ("/usr/bin/shellcheck",))  # as CI on a fresh machine needs
    if reason:
        pytest.skip(f"{reason}; bash -n passed")
    result = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def _dry_run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(DEVICES / script), "--dry-run", "--python", sys.executable, *args],
                          capture_output=True, text=True, timeout=60)


def test_pi_setup_picks_the_interpreter_by_word_size():
    result = _dry_run("setup-raspberry-pi.sh", "--device", "raspberry-pi-zero-2-w", "--bits", "64")
    assert result.returncode == 0, result.stderr
    assert r"pip install edgemeta\[device\]" in result.stdout and "tflite-runtime" not in result.stdout
    assert "MemoryMax=96M" in result.stdout and "enable --now edgemeta-adapter" in result.stdout
    result = _dry_run("setup-raspberry-pi.sh", "--device", "raspberry-pi-4", "--bits", "32", "--no-service")
    assert result.returncode == 0, result.stderr
    assert r"pip install edgemeta tflite-runtime==2.14.0 numpy\<2" in result.stdout  # this venv is Python 3.11
    # numpy and Pillow from Debian (PyPI has no armv7l wheels of either), seen by the venv.
    assert "-m venv --system-site-packages /opt/edgemeta/venv" in result.stdout
    assert "MemoryMax" not in result.stdout


def test_setup_scripts_refuse_the_wrong_profile():
    result = _dry_run("setup-raspberry-pi.sh", "--device", "coral-usb-pi")
    assert result.returncode == 1
    assert "profile coral-usb-pi is installed by setup-coral.sh. Received: --device coral-usb-pi" in result.stderr
    result = _dry_run("setup-raspberry-pi.sh", "--device", "pi-3")
    assert result.returncode == 1 and "unknown device profile. Received: --device pi-3" in result.stderr
    result = _dry_run("setup-coral.sh", "--device", "raspberry-pi-4")
    assert result.returncode == 1 and "Received: raspberry-pi-4" in result.stderr


def test_coral_setup_adds_the_runtime_then_runs_the_pi_setup():
    result = _dry_run("setup-coral.sh", "--device", "coral-usb-pi", "--bits", "64")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "write /etc/apt/sources.list.d/coral-edgetpu.list" in out
    assert out.index("apt-get install -y libedgetpu1-std") < out.index(r"pip install edgemeta\[device\]")
    assert "profile: coral-usb-pi (memory budget 256 MB)" in out and "MemoryMax=256M" in out


def test_service_unit_verifies_with_systemd(tmp_path):
    unit = (DEVICES / "edgemeta-adapter.service").read_text()
    for line in ("User=edgemeta", "Restart=on-failure", "KillSignal=SIGTERM", "TimeoutStopSec=30", "MemoryMax=256M",
                 "ExecStart=/opt/edgemeta/venv/bin/edgemeta device serve"):
        assert line in unit
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    # verify also checks that ExecStart's program exists: point it at this venv's edgemeta.
    venv = Path(sys.executable).parent.parent
    check = tmp_path / "edgemeta-adapter.service"
    check.write_text(unit.replace("/opt/edgemeta/venv", str(venv)))
    result = subprocess.run(["systemd-analyze", "verify", str(check)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
