import shutil

from embed.datasets.circor import MURMUR_CLASSES, load_circor, read_tsv


def test_mini_subset_parses_like_the_release(circor_mini):
    circor = load_circor(circor_mini)
    assert len(circor.patients) == 52
    counts = {c: sum(p.murmur == c for p in circor.patients.values()) for c in MURMUR_CLASSES}
    assert counts == {"Absent": 27, "Present": 17, "Unknown": 8}
    assert circor.problems == []
    p = circor.patients["50782"]
    assert [r.recording_id for r in p.recordings] == [
        "50782_AV_1", "50782_AV_2", "50782_PV", "50782_TV", "50782_MV_1", "50782_MV_2"]
    assert p.pregnant and p.sex == "Female" and p.outcome == "Abnormal" and p.campaign == "CC2014"
    present = circor.patients["14241"]
    assert present.murmur == "Present" and present.label == 0
    assert present.murmur_locations == ("AV", "MV", "PV", "TV")
    assert present.height == 87.0 and present.age == "Child"
    seg = present.recordings[0].segmentation()
    assert seg.shape[1] == 3 and set(seg[:, 2]) <= {0, 1, 2, 3, 4} and (seg[:, 1] >= seg[:, 0]).all()


def test_synthetic_and_problems_reported(synthetic_data, tmp_path):
    data = tmp_path / "d"
    shutil.copytree(synthetic_data, data)
    circor = load_circor(data)
    assert len(circor.patients) == 40 and circor.problems == []
    first = circor.patient_ids()[0]
    rec = circor.patients[first].recordings[0]
    rec.wav.unlink()
    rec.tsv.unlink()
    txt = data / "training_data" / f"{circor.patient_ids()[1]}.txt"
    txt.write_text(txt.read_text().replace("#Sex: Male", "#Sex: Robot").replace("#Sex: Female", "#Sex: Robot"))
    again = load_circor(data)
    messages = [str(p) for p in again.problems]
    assert any(rec.wav.name in m and "missing" in m for m in messages)
    assert any(txt.name in m and "'Robot'" in m for m in messages)
    assert any(txt.name in m and "training_data.csv" in m for m in messages)  # txt/csv disagree
    assert rec.recording_id not in {r.recording_id for r in again.recordings()}
    assert len(again.patients) == 40  # the patient keeps its other recordings


def test_read_tsv_rejects_bad_rows(tmp_path):
    good = tmp_path / "a.tsv"
    good.write_text("0\t0.1\t1\n0.1\t0.4\t2\n")
    assert read_tsv(good).tolist() == [[0, 0.1, 1], [0.1, 0.4, 2]]
    bad = tmp_path / "b.tsv"
    bad.write_text("0\t0.1\t9\n")
    try:
        read_tsv(bad)
    except ValueError as err:
        assert "b.tsv:1" in str(err)
    else:
        raise AssertionError("label 9 accepted")
