"""What ships inside the package: nothing of the machine that built it; the demo model as its script publishes it."""

import json
import re
from pathlib import Path

import cascade_clip_hf
from cascade_clip_hf.segmenter import DEMO_MODEL

from .helpers import run_script


PACKAGE = Path(cascade_clip_hf.__file__).parent
# Absolute paths of a POSIX home, temporary or work folder, or a Windows drive.
MACHINE_PATH = re.compile(r"""(?<![\w.])(/(tmp|home|root|work|Users|var|private|mnt)/|[A-Za-z]:\\\\)""")


def shipped_text_files() -> list[Path]:
    files = []
    for path in sorted(PACKAGE.rglob("*")):
        if not path.is_file() or "__pycache__" in path.parts or path.suffix in (".safetensors", ".pyc"):
            continue
        files.append(path)
    return files


def test_package_data_holds_no_machine_paths():
    files = shipped_text_files()
    assert any(path.name == "build_report.json" for path in files)
    found = []
    for path in files:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if MACHINE_PATH.search(line):
                found.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()[:100]}")
    assert not found, "machine paths in shipped files:\n" + "\n".join(found)


def test_machine_path_pattern_finds_what_it_should():
    assert MACHINE_PATH.search('"model": "/tmp/s5/full3/cascade"')
    assert MACHINE_PATH.search(r'"dataset": "C:\\Users\\me\\scenes"')
    assert not MACHINE_PATH.search('"model": "cascade", "url": "https://example.org/tmp/x"')


def test_shipped_demo_model_is_the_build_scripts_publication(tmp_path):
    """Publishing the shipped folder again (`build_demo_model.py --ship_from`) gives it back byte for byte: it is
    marked as the toy model and names no code files, which it does not have (the package serves it)."""
    run_script("build_demo_model.py", ["--ship_from", str(DEMO_MODEL), "--ship_to", str(tmp_path / "shipped")])
    published = sorted(path.name for path in (tmp_path / "shipped").iterdir())
    assert published == sorted(path.name for path in DEMO_MODEL.iterdir())
    for name in published:
        assert (tmp_path / "shipped" / name).read_bytes() == (DEMO_MODEL / name).read_bytes(), name
    assert not list(DEMO_MODEL.glob("*.py"))
    for path in DEMO_MODEL.glob("*.json"):
        text = path.read_text(encoding="utf-8")
        assert '"auto_map"' not in text and '"custom_pipelines"' not in text, path.name
    assert json.loads((DEMO_MODEL / "config.json").read_text(encoding="utf-8"))["toy_world"] is True
