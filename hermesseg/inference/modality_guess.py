"""Which of the model's modalities an image is, when the user names none.

Evidence in order of trust, each step narrowing the candidates (the model's modality names):

1. the sample catalogue: a file of ``hermesseg sample`` (same size and SHA-256) has a catalogued modality;
2. DICOM attributes of a series folder: Modality (CT, PT, MR) and, for MR, the sequence (series description,
   scanning sequence, TR/TE/TI, contrast agent);
3. the model's own modality head (spec 1.5), run on the image's central window once per candidate modality id. It
   counts only if it is *informative*, i.e. for some input id it names another modality: the head reads the tokens
   of the modality it was given, and a head that has learned to echo its input says nothing about the image (the
   embedded hermes-mini does exactly that: probability 1.00 for the given id on every shared image);
4. intensity statistics: Hounsfield-unit air (a share of voxels below -500) means CT, its absence means not CT.

The result says which modality, how confident, on what evidence, and, when still ambiguous, which modalities remain.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from ..errors import QueryError
from ..imageio import ImageInfo
from ..network import NULL_TASK
from ..preprocessing import Preprocessing, normalize_intensity, to_model_grid

log = logging.getLogger(__name__)

# CT is in Hounsfield units: air near -1000. A sizeable share of voxels below -500 means CT.
_AIR_HU = -500.0
_MIN_AIR_FRACTION = 0.05
# ImageInfo.mr_attributes names -> the keys mr_sequence reads
_MR_KEYS = {"ProtocolName": "protocol", "ScanningSequence": "scanning_sequence", "SequenceName": "sequence_name",
            "RepetitionTime": "tr", "EchoTime": "te", "InversionTime": "ti", "ContrastBolusAgent": "contrast"}


@dataclass
class ModalityGuess:
    modality: str | None  # a model modality name, None when ambiguous
    confidence: float  # 0..1
    evidence: str  # what decided it (or why nothing did)
    remaining: list[str] = field(default_factory=list)  # candidates left when ambiguous

    def describe(self) -> str:
        if self.modality:
            return f"modality {self.modality} ({self.evidence}; confidence {self.confidence:.2f})"
        return f"modality not determined ({self.evidence}); still possible: {', '.join(self.remaining)}"


def looks_like_ct(image: sitk.Image) -> bool:
    a = sitk.GetArrayViewFromImage(image)
    sample = a[:: max(1, a.shape[0] // 16)]
    return float(np.mean(sample < _AIR_HU)) > _MIN_AIR_FRACTION


def guess_modality(model, image: sitk.Image, path: str | Path | None = None, info: ImageInfo | None = None) -> str:
    """The model modality to use for ``image``; a QueryError naming the remaining choices when it is ambiguous."""
    guess = detect_modality(model, image, path, info)
    if guess.modality is None:
        raise QueryError(f"cannot tell the modality of this image: {guess.evidence}; still possible: "
                         f"{', '.join(guess.remaining)}; choose one with --modality")
    if guess.confidence < 0.9:
        log.warning(guess.describe())
    else:
        log.info(guess.describe())
    return guess.modality


def detect_modality(model, image: sitk.Image, path: str | Path | None = None,
                    info: ImageInfo | None = None) -> ModalityGuess:
    """Steps 1-4 of the module docstring on ``model`` (a HermesModel; its network runs for step 3). ``path`` is
    the file (for the sample catalogue); ``info`` what ``read_input`` found in its header (for the DICOM step)."""
    manifest = model.manifest
    names = [m.name for m in manifest.modalities]
    if len(names) == 1:
        return ModalityGuess(names[0], 1.0, "the model has one modality")
    sample = sample_modality(path) if path is not None else None
    if sample is not None:
        entry, modality = sample
        if modality in names:
            return ModalityGuess(modality, 1.0, f"sample catalogue: {entry}")
    attributes = dicom_attributes(info) if info is not None else {}
    candidates = list(names)
    evidence = "no DICOM attributes"
    if attributes.get("modality"):
        candidates = [m.name for m in manifest.modalities if attributes["modality"] in m.dicom] or candidates
        evidence = f"DICOM Modality {attributes['modality']}"
        if len(candidates) == 1:
            return ModalityGuess(candidates[0], 0.99, evidence)
        sequence = mr_sequence(attributes)
        for wanted in {"T1C": ("T1C", "T1")}.get(sequence, (sequence,)) if sequence else ():
            matching = [c for c in candidates if c.upper().replace("MR-", "") == wanted]
            if matching:
                return ModalityGuess(matching[0], 0.9, f"{evidence}, sequence {sequence} from the DICOM attributes")
    head = modality_head_guess(model, image, candidates)
    if head is not None:
        return head
    is_ct = looks_like_ct(image)
    by_intensity = [c for c in candidates if (c == "CT") == is_ct]
    if len(by_intensity) == 1:
        what = "Hounsfield-unit air present" if is_ct else "no Hounsfield-unit air"
        return ModalityGuess(by_intensity[0], 0.95 if is_ct else 0.6, f"intensities: {what}")
    return ModalityGuess(None, 0.0, f"{evidence}; intensities {'look like' if is_ct else 'unlike'} CT and cannot "
                         "tell MR sequences apart; the model's modality head echoes its input",
                         by_intensity or candidates)


def sample_modality(path: str | Path) -> tuple[str, str] | None:
    """(sample name, modality) when ``path`` is a file of the sample catalogue (same size and SHA-256)."""
    from ..samples import SAMPLES, _sha256_file

    path = Path(path)
    if not path.is_file():
        return None
    size = path.stat().st_size
    for entry in SAMPLES.values():
        if entry.image.size == size and _sha256_file(path) == entry.image.sha256:
            return entry.name, entry.modality
    return None


def dicom_attributes(info: ImageInfo) -> dict[str, str]:
    """Modality and MR sequence attributes of a DICOM series as ``mr_sequence`` reads them; {} for other files."""
    if not info.dicom_modality:
        return {}
    attributes = {"modality": info.dicom_modality, "description": info.series_description or ""}
    attributes.update({_MR_KEYS[k]: v for k, v in info.mr_attributes.items() if k in _MR_KEYS})
    return {k: v for k, v in attributes.items() if v}


def mr_sequence(attributes: dict[str, str]) -> str | None:
    """T1C, T1, T2, FLAIR or CINE from an MR series' attributes (description first, then TR/TE/TI), else None."""
    text = " ".join(attributes.get(k, "") for k in ("description", "protocol", "sequence_name")).upper()
    contrast = bool(attributes.get("contrast")) or bool(re.search(r"\+C\b|POST|GAD|CONTRAST|\bCE\b", text))
    if "CINE" in text:
        return "CINE"
    if "FLAIR" in text:
        return "FLAIR"
    if re.search(r"T1|MPRAGE|SPGR|FLASH|VIBE", text):
        return "T1C" if contrast else "T1"
    if re.search(r"T2", text):
        return "T2"
    tr, te, ti = (_number(attributes.get(k)) for k in ("tr", "te", "ti"))
    if ti and ti > 1500 and te and te > 60:
        return "FLAIR"
    if tr and te and tr < 800 and te < 30:
        return "T1C" if contrast else "T1"
    if tr and te and tr > 2000 and te > 60:
        return "T2"
    return None


def modality_head_guess(model, image: sitk.Image, candidates: list[str]) -> ModalityGuess | None:
    """Step 3: the modality head on the central window, once per candidate id; None when it is uninformative."""
    if len(candidates) < 2:
        return None
    pre = Preprocessing.from_dict(model.manifest.preprocessing)
    # A central block of twice the window, normalised on its own: a cheap probe, not the full preprocessing.
    raw = _central_window(sitk.GetArrayFromImage(to_model_grid(image, pre.spacing)), [2 * r for r in pre.patch_size])
    predicted = {}
    probability = {}
    for name in candidates:
        entry = model.manifest.modality(name)
        window = _central_window(normalize_intensity(raw.copy(), pre.norm_for(name)), pre.patch_size)
        x = torch.from_numpy(window)[None, None].to(model.device)
        with torch.no_grad():
            _, logits = model.network(x, torch.tensor([[NULL_TASK]], device=model.device),
                                      torch.tensor([[entry.id]], device=model.device))
        p = torch.softmax(logits[0, :len(model.manifest.modalities)].float(), 0).cpu().numpy()
        predicted[name] = model.manifest.modalities[int(p.argmax())].name
        probability[name] = float(p[entry.id])
        if sum(predicted[c] == c for c in predicted) >= 2:
            return None  # two inputs each named as themselves: it echoes its input, no unique answer
    consistent = [c for c in candidates if predicted[c] == c]
    if len(consistent) == 1:
        return ModalityGuess(consistent[0], probability[consistent[0]], "the model's modality head")
    return None


def _central_window(array: np.ndarray, roi) -> np.ndarray:
    """The central ``roi`` block of a (z, y, x) array, zero-padded where the array is smaller."""
    pads = [(0, max(0, r - s)) for r, s in zip(roi, array.shape)]
    array = np.pad(array, pads, constant_values=array.min())
    start = [(s - r) // 2 for s, r in zip(array.shape, roi)]
    return np.ascontiguousarray(array[tuple(slice(b, b + r) for b, r in zip(start, roi))], dtype=np.float32)


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None
