"""What ships inside the package carries nothing of the machine that built it."""

import re
from pathlib import Path

import cascade_clip_hf


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
