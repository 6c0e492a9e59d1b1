"""Reading clinical images robustly: files SimpleITK understands and DICOM series folders.

Every problem a user can cause (wrong path, 2D or 4D image, RGB, empty or all-NaN volume, a folder with several DICOM
series) raises ``InputImageError`` with a message that names the path and says what to do, never a SimpleITK traceback.
"""

from __future__ import annotations

import gzip
import logging
import os
import struct
import zlib
from pathlib import Path
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import SimpleITK as sitk

from .atomic import atomic_path
from .errors import InputImageError, OutputError

log = logging.getLogger(__name__)

# Longest first, so "scan.seg.nrrd" loses ".seg.nrrd" and not only ".nrrd".
IMAGE_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nrrd", ".nii", ".mha", ".mhd", ".nhdr")
# Suffixes a folder of inputs expands to; segmentations (.seg.nrrd) are outputs, not inputs.
INPUT_SUFFIXES = (".nii.gz", ".nrrd", ".nii", ".mha", ".mhd", ".nhdr")
# Formats with a separate data file: renaming the header alone would leave it pointing at the temporary data file.
DETACHED_HEADER_SUFFIXES = (".mhd", ".nhdr")

_TAG_MODALITY = "0008|0060"
_TAG_SERIES_DESCRIPTION = "0008|103e"
# MR acquisition attributes (DICOM PS3.3 C.8.3.1) kept for telling MR sequences apart.
MR_TAGS = {"0018|1030": "ProtocolName", "0018|0020": "ScanningSequence", "0018|0021": "SequenceVariant", "0018|0024": "SequenceName",
           "0018|0080": "RepetitionTime", "0018|0081": "EchoTime", "0018|0082": "InversionTime",
           "0018|1314": "FlipAngle", "0018|0010": "ContrastBolusAgent"}


@dataclass(frozen=True)
class ImageInfo:
    """What the file said about the image besides its voxels (DICOM only; empty for NIfTI, NRRD, MHA)."""

    dicom_modality: str | None = None  # 0008|0060: "CT", "MR", "PT"...
    series_description: str | None = None
    mr_attributes: dict[str, str] = field(default_factory=dict)  # MR_TAGS names -> values, those present


@dataclass(frozen=True)
class InputImage:
    image: sitk.Image  # 3D float32, finite, geometry untouched
    info: ImageInfo


def read_input(path: str | os.PathLike) -> InputImage:
    """Read a 3D scalar volume as float32 with its geometry untouched, from an image file or a DICOM series folder,
    together with what its header says (``ImageInfo``), in one pass over the files.

    A 4D image whose 4th axis has size 1 is accepted as its 3D volume. Voxels that are NaN (or infinite) are set to
    the minimum of the finite voxels, with a warning, so interpolation and normalisation stay finite.
    """
    path = Path(path)
    if not path.exists():
        raise InputImageError(f"{path}: no such file or folder")
    image, info = _read_dicom_folder(path) if path.is_dir() else _read_file(path)
    return InputImage(_finite_float32(_as_volume(image, path), path), info)


def read_image(path: str | os.PathLike) -> sitk.Image:
    """``read_input`` without the header information."""
    return read_input(path).image


def expand_inputs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Turn command-line arguments into one path per volume: a file, a single-series DICOM folder, or the image files
    of a folder (sorted by name; subfolders are not searched)."""
    inputs: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise InputImageError(f"{p}: no such file or folder")
        inputs.extend(_expand_folder(p) if p.is_dir() else [p])
    return inputs


def input_stem(path: str | os.PathLike) -> str:
    """The name outputs are derived from: the file name without its image extension, or a DICOM folder's name."""
    path = Path(path)
    name = path.name
    if path.is_dir():
        return name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def write_image_atomic(image: sitk.Image, path: str | os.PathLike) -> None:
    """Write compressed, through a temporary file renamed on success, so readers (Slicer) never see a partial file."""
    path = Path(path)
    suffix = _image_suffix(path)
    if suffix in DETACHED_HEADER_SUFFIXES:
        raise OutputError(f"{path}: {suffix} keeps its voxels in a separate file and cannot be written atomically; "
                          "write .nii.gz, .nrrd or .mha instead")
    try:
        with atomic_path(path, suffix=suffix) as tmp:
            sitk.WriteImage(image, str(tmp), useCompression=True)
    except RuntimeError as err:
        raise OutputError(f"{path}: cannot write image ({_sitk_reason(err)})") from err


def _read_file(path: Path) -> tuple[sitk.Image, ImageInfo]:
    """Read one file, checking its header first so a large 4D or RGB file is rejected before its voxels are loaded."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        _check_shape(path, reader.GetSize(), reader.GetNumberOfComponents(),
                     dicom_file=reader.GetImageIOFromFileName(str(path)) == "GDCMImageIO")
        if path.name.lower().endswith((".nii", ".nii.gz")):
            _check_nifti_complete(path)
        image = reader.Execute()
        return image, _image_info(reader.HasMetaDataKey, reader.GetMetaData)
    except RuntimeError as err:
        raise InputImageError(f"{path}: cannot read it as an image; the file is corrupt, truncated or not in a "
                              f"format SimpleITK reads ({_sitk_reason(err)})") from err


def _check_nifti_complete(path: Path) -> None:
    """ITK's NIfTI reader silently fills a truncated file with zeros (NRRD and MetaImage readers fail): compare the
    stored byte count with the header's voxel offset plus voxel data size."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            header = f.read(540)
    except (OSError, EOFError, zlib.error) as err:
        raise InputImageError(f"{path}: cannot read it as an image; the file is corrupt ({err})") from err
    expected = _nifti_file_bytes(header)
    stored = _stored_bytes(path, expected)
    if stored < expected:
        raise InputImageError(f"{path}: cannot read it as an image; the file is truncated: its header announces "
                              f"{expected} bytes, {stored} could be read; copy or export it again")


def _nifti_file_bytes(header: bytes) -> int:
    """Voxel offset plus voxel data size, from a NIfTI-1 (348-byte) or NIfTI-2 (540-byte) header of either
    byte order."""
    for order in "<>":
        sizeof_hdr = struct.unpack(order + "i", header[:4])[0]
        if sizeof_hdr == 348:
            dim = struct.unpack(order + "8h", header[40:56])
            bitpix = struct.unpack(order + "h", header[72:74])[0]
            vox_offset = struct.unpack(order + "f", header[108:112])[0]
            break
        if sizeof_hdr == 540:
            bitpix, dim = struct.unpack(order + "h", header[14:16])[0], struct.unpack(order + "8q", header[16:80])
            vox_offset = struct.unpack(order + "q", header[168:176])[0]
            break
    else:
        return 0  # not a NIfTI header: let SimpleITK judge the file
    return int(vox_offset) + int(np.prod(dim[1:dim[0] + 1], dtype=np.int64)) * bitpix // 8


def _stored_bytes(path: Path, expected: int) -> int:
    """Uncompressed size; for gzip, trust the trailer's size field (mod 2**32) when it matches, else decompress."""
    if not path.name.lower().endswith(".gz"):
        return path.stat().st_size
    with open(path, "rb") as f:
        f.seek(-4, os.SEEK_END)
        if struct.unpack("<I", f.read(4))[0] == expected % 2**32:
            return expected
    stored = 0
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                stored += len(chunk)
    except (OSError, EOFError, zlib.error):
        pass  # a cut gzip stream: count what could be decompressed
    return stored


def _read_dicom_folder(folder: Path) -> tuple[sitk.Image, ImageInfo]:
    """Read the folder's single DICOM series, sorted by slice position (GDCM), and its first slice's header."""
    series = _dicom_series(folder)
    if not series:
        images = _image_files(folder)
        hint = (f"it holds {len(images)} image files; pass one of them" if images
                else "it holds no DICOM series and no image files (subfolders are not searched)")
        raise InputImageError(f"{folder}: is a folder but not a DICOM series folder: {hint}")
    if len(series) > 1:
        raise InputImageError(_several_series_message(folder, series))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(list(next(iter(series.values()))))
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
        return image, _image_info(lambda tag: reader.HasMetaDataKey(0, tag), lambda tag: reader.GetMetaData(0, tag))
    except RuntimeError as err:
        raise InputImageError(f"{folder}: cannot read the DICOM series ({_sitk_reason(err)})") from err


def _image_info(has, get) -> ImageInfo:
    """ImageInfo from a reader's metadata accessors (``has(tag)``, ``get(tag)``)."""
    def value(tag: str) -> str | None:
        text = get(tag).strip() if has(tag) else ""
        return text or None

    mr = {name: v for tag, name in MR_TAGS.items() if (v := value(tag)) is not None}
    return ImageInfo(value(_TAG_MODALITY), value(_TAG_SERIES_DESCRIPTION), mr)


def _expand_folder(folder: Path) -> list[Path]:
    """A folder is either one DICOM series (one input) or a set of image files (one input each)."""
    series = _dicom_series(folder)
    images = _image_files(folder)
    if series and images:
        raise InputImageError(f"{folder}: holds both DICOM files and {len(images)} image files; "
                              "put them in separate folders")
    if len(series) > 1:
        raise InputImageError(_several_series_message(folder, series))
    if series:
        return [folder]
    if not images:
        raise InputImageError(f"{folder}: holds no DICOM series and no image files "
                              f"({', '.join(INPUT_SUFFIXES)}); subfolders are not searched")
    return images


def _image_files(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_file() and _is_input_file(p)), key=lambda p: p.name)


def _is_input_file(path: Path) -> bool:
    name = path.name.lower()
    return not name.startswith(".") and not name.endswith(".seg.nrrd") and name.endswith(INPUT_SUFFIXES)


def _image_suffix(path: Path) -> str:
    stem = input_stem(path)
    return path.name[len(stem):].lower() if stem != path.name else path.suffix.lower()


def _dicom_series(folder: Path) -> dict[str, tuple[str, ...]]:
    """Series UID -> its files (sorted by GDCM), for the DICOM files directly in ``folder``."""
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    return {uid: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid) for uid in ids}


def _dicom_tag(file: str, tag: str) -> str:
    reader = sitk.ImageFileReader()
    reader.SetFileName(file)
    reader.ReadImageInformation()
    return reader.GetMetaData(tag).strip() if reader.HasMetaDataKey(tag) else ""


def _several_series_message(folder: Path, series: dict[str, Sequence[str]]) -> str:
    lines = [f"{folder}: holds {len(series)} DICOM series; pass the folder of one series only:"]
    for uid, files in series.items():
        description = _dicom_tag(files[0], _TAG_SERIES_DESCRIPTION) or "no description"
        lines.append(f"  series {uid} ({description!r}, {len(files)} files)")
    return "\n".join(lines)


def _check_shape(path: Path, size: Sequence[int], components: int, dicom_file: bool = False) -> None:
    """Reject what a 3D single-channel model cannot segment, saying what the image is instead."""
    dims = "x".join(str(s) for s in size)
    hint = "; for DICOM, pass the folder that holds the whole series" if dicom_file else ""
    if len(size) == 2:
        raise InputImageError(f"{path}: is 2D ({dims}); Hermes needs a 3D volume{hint}")
    if len(size) == 4 and size[3] != 1:
        raise InputImageError(f"{path}: is 4D ({dims}); Hermes needs one 3D volume: extract one time point or channel")
    if len(size) not in (3, 4):
        raise InputImageError(f"{path}: has {len(size)} dimensions ({dims}); Hermes needs a 3D volume")
    if components != 1:
        guess = {3: " (RGB?)", 4: " (RGBA?)"}.get(components, "")
        raise InputImageError(f"{path}: has {components} components per voxel{guess}; Hermes needs a single-channel "
                              "(grey-value) volume")
    if min(size) == 0:
        raise InputImageError(f"{path}: is empty (size {dims})")
    if min(size[:3]) == 1:
        raise InputImageError(f"{path}: is a single slice ({dims}); Hermes needs a 3D volume{hint}")


def _as_volume(image: sitk.Image, path: Path) -> sitk.Image:
    """Check the shape of what was read and drop a size-1 4th axis."""
    _check_shape(path, image.GetSize(), image.GetNumberOfComponentsPerPixel())
    if image.GetDimension() == 4:
        image = sitk.Extract(image, list(image.GetSize()[:3]) + [0], [0, 0, 0, 0])
    if image.GetPixelID() in (sitk.sitkComplexFloat32, sitk.sitkComplexFloat64):
        raise InputImageError(f"{path}: has complex voxels; Hermes needs a real-valued (magnitude) volume")
    return image


def _finite_float32(image: sitk.Image, path: Path) -> sitk.Image:
    """Cast to float32 and replace non-finite voxels by the finite minimum (an all-NaN volume holds no data)."""
    image = sitk.Cast(image, sitk.sitkFloat32)
    view = sitk.GetArrayViewFromImage(image)
    finite = np.isfinite(view)
    if finite.all():
        return image
    if not finite.any():
        raise InputImageError(f"{path}: every voxel is NaN (or infinite); the image holds no data")
    log.warning("%s: %d voxels are NaN or infinite; they are set to the image minimum", path,
                finite.size - np.count_nonzero(finite))
    array = np.where(finite, view, view[finite].min()).astype(np.float32)
    fixed = sitk.GetImageFromArray(array)
    fixed.CopyInformation(image)
    return fixed


def _sitk_reason(err: RuntimeError) -> str:
    """The last line of a SimpleITK error, which says what went wrong without ITK's source locations."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1].replace("sitk::ERROR: ", "").replace("itk::ERROR: ", "") if lines else "unknown error"
