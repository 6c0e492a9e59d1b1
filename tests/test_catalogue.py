"""The structure catalogue: every task of the default model and of the official Hermes-R table has a display name
and SNOMED CT terminology (or an explicit reason why not), duplicates of one structure merge into one entry, and
the preferred task of an entry is the best measured one."""

from __future__ import annotations

import copy
import re

import pytest

from hermesseg.catalogue import catalogue, structure_key
from hermesseg.default_model import default_model_path
from hermesseg.model_file import read_manifest
from hermesseg.official.task_table import official_tasks

SCT_CODE = re.compile(r"^\d{4,18}$")


@pytest.fixture(scope="module")
def default_tasks():
    return read_manifest(default_model_path()).tasks


def _check_code(code):
    assert code[0] == "SCT" and SCT_CODE.match(code[1]) and code[2], code


@pytest.mark.parametrize("which", ["default", "official"])
def test_every_task_has_a_catalogue_entry_with_a_code_or_a_reason(which, default_tasks):
    tasks = default_tasks if which == "default" else official_tasks()
    c = catalogue()
    for task in tasks:
        s = c.structure_of(task)
        assert s is not None, f"{task.name}: no catalogue entry for {structure_key(task)!r}"
        assert s.name and s.name[0].isupper() and "_" not in s.name, (task.name, s.name)
        if s.terminology is None:
            assert s.no_code and len(s.no_code) > 20, f"{task.name}: no code and no reason"
            continue
        for part in ("category", "type"):
            _check_code(s.terminology[part])
        if s.terminology.get("modifier"):
            _check_code(s.terminology["modifier"])
        side = "Left" if task.name.endswith("_left") or "_left_" in task.name else \
            "Right" if task.name.endswith("_right") or "_right_" in task.name else None
        if side:
            assert side.lower() in s.name.lower(), (task.name, s.name)
            # The side is a modifier, except for a concept that is one-sided itself (middle lobe of right lung).
            modifier = s.terminology["modifier"]
            assert (modifier or ["", "", side])[2] == side and (modifier or side.lower() in s.terminology["type"][2].lower()), task.name


def test_names_codes_and_colours_of_well_known_structures(default_tasks):
    c = catalogue()
    by_name = {t.name: t for t in default_tasks}
    liver = c.structure_of(by_name["ct_abdomen_ts_liver"])
    assert (liver.name, liver.terminology["type"][1], liver.color) == ("Liver", "10200004", (221, 130, 101))
    kidney = c.structure_of(by_name["ct_abdomen_ts_kidney_left"])
    assert kidney.name == "Left kidney" and kidney.terminology["modifier"] == ["SCT", "7771000", "Left"]
    assert c.display_name(by_name["ct_body_tsdataset_vertebrae_C7"]) == "C7 vertebra"
    tumour = c.terminology(by_name["ct_lung_tumour_lung_tumour"])
    assert tumour["category"][1] == "49755003" and tumour["region"][1] == "39607008"
    # An alias of another dataset's spelling reaches the same entry.
    bcv = next(t for t in official_tasks() if t.name == "bcv_portal_splenic_vein")
    assert c.structure_of(bcv) is c.structure_of(by_name["ct_abdomen_ts_portal_vein_and_splenic_vein"])


def test_the_default_model_has_one_task_per_structure_and_modality(default_tasks):
    """The default model is trained on the catalogue: the four structures both TotalSegmentator CT subjects label
    (spinal cord, autochthon left and right, upper lobe of the left lung) are one task each, learned from both."""
    for modality in ("CT", "MR", "MR-T1", "MR-T1c"):
        tasks = [t for t in default_tasks if modality in t.modalities]
        choices = catalogue().choices(default_tasks, modality)
        assert len(choices) == len(tasks), [sorted(t.name for t in ch.tasks) for ch in choices if len(ch.tasks) > 1]
    by_name = {t.name: t for t in default_tasks}
    for structure in ("spinal_cord", "autochthon_left", "autochthon_right", "lung_upper_lobe_left"):
        assert f"ct_body_tsdataset_{structure}" not in by_name
        assert "ct_abdomen_ts, ct_body_tsdataset" in by_name[f"ct_abdomen_ts_{structure}"].description


def test_tasks_of_two_datasets_for_one_structure_merge_into_one_entry(default_tasks):
    spinal = next(t for t in default_tasks if t.name == "ct_abdomen_ts_spinal_cord")
    other = copy.deepcopy(spinal)
    other.name, other.group = "site_b_spinal_cord", "site_b"
    tasks = [*default_tasks, other]
    choices = catalogue().choices(tasks, "CT")
    merged = {ch.structure.name: [t.name for t in ch.tasks] for ch in choices if len(ch.tasks) > 1}
    assert merged == {"Spinal cord": ["ct_abdomen_ts_spinal_cord", "site_b_spinal_cord"]}
    assert len(choices) == len([t for t in tasks if "CT" in t.modalities]) - 1


def test_official_liver_is_one_entry_per_modality_with_the_protocol_visible():
    tasks = official_tasks()
    c = catalogue()
    ct_liver = next(ch for ch in c.choices(tasks, "CT") if ch.structure.name == "Liver")
    assert sorted(t.name for t in ct_liver.tasks) == ["amos_liver", "bcv_liver", "lits_liver"]
    # Unmeasured: the liver without a protocol caveat is preferred over LiTS's tumour-free liver.
    assert ct_liver.preferred.name == "amos_liver"
    lits = next(t for t in tasks if t.name == "lits_liver")
    assert "without its tumours" in c.note(lits)
    mr_liver = next(ch for ch in c.choices(tasks, "MR-T1") if ch.structure.name == "Liver")
    assert [t.name for t in mr_liver.tasks] == ["chaos_liver"]
    kits = next(t for t in tasks if t.name == "kits_kidney")
    assert c.display_name(kits) == "Kidneys" and "both kidneys" in c.note(kits)


def test_the_preferred_task_is_the_best_measured_one(default_tasks):
    spinal = next(t for t in default_tasks if t.name == "ct_abdomen_ts_spinal_cord")
    tasks = [copy.deepcopy(spinal), copy.deepcopy(spinal)]
    tasks[1].name, tasks[1].group = "site_b_spinal_cord", "site_b"
    tasks[0].quality = {"heldout_dice": 0.2, "heldout_cases": 1, "source": "test"}
    tasks[1].quality = {"heldout_dice": 0.6, "heldout_cases": 1, "source": "test"}
    (choice,) = catalogue().choices(tasks, "CT")
    assert choice.preferred is tasks[1]
    tasks[1].quality = None  # seen in training only ranks below any measurement
    (choice,) = catalogue().choices(tasks, "CT")
    assert choice.preferred is tasks[0]


def test_a_task_outside_the_catalogue_keeps_its_own_name_and_terminology(default_tasks):
    task = copy.deepcopy(default_tasks[0])
    task.name, task.group, task.terminology = "mylab_weird_thing", "mylab", None
    c = catalogue()
    assert c.structure_of(task) is None
    assert c.display_name(task) == "Weird thing" and c.terminology(task) is None
    (choice,) = c.choices([task])
    assert choice.structure.key == "mylab_weird_thing"
