"""Ingest: the five input formats become one normalised record (SPDX licence, provenance); bad items
become ingest errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from medvl.curate.config import SourceConfig
from medvl.curate.ingest import SourceReader
from medvl.curate.ingest_document import doc_images


def read_all(sources: list[SourceConfig], world_size: int = 1, limit: int | None = None) -> list:
    docs = []
    for rank in range(world_size):
        docs += list(SourceReader(sources, limit).run(None, rank, world_size))
    return sorted(docs, key=lambda d: d.metadata["order"])


def test_pmc_jsonl_record_fields(corpus: Path):
    docs = read_all([SourceConfig(format="pmc_jsonl", path=str(corpus / "figures.jsonl"), name="synth")])
    good = [d for d in docs if "ingest_error" not in d.metadata]
    bad = [d for d in docs if "ingest_error" in d.metadata]
    assert len(docs) == 17 and len(bad) == 1
    assert bad[0].metadata["ingest_error"][0] == "malformed_line"
    first = good[0]
    assert first.id == "p0_fig0.png"
    assert doc_images(first) == [str(corpus / "figures" / "p0_fig0.png")]
    assert first.text.startswith("Axial contrast-enhanced CT")
    assert first.metadata["mentions"] == ["The lesion is shown in Figure 0 ."]
    assert (first.metadata["licence"], first.metadata["licence_raw"]) == ("LicenseRef-CC-BY", "cc-by")
    assert (first.metadata["pmcid"], first.metadata["figure_id"]) == (None, "fig0.png")
    assert first.metadata["source"] == "synth"
    assert first.metadata["modality"] == "ct"
    assert first.metadata["domain"] == "radiology"


def test_sharding_by_item_and_by_file_keeps_every_record_once(corpus: Path, tmp_path: Path):
    source = SourceConfig(format="pmc_jsonl", path=str(corpus / "figures.jsonl"))
    one = [(d.id, d.metadata["order"]) for d in read_all([source])]
    three = [(d.id, d.metadata["order"]) for d in read_all([source], world_size=3)]
    assert one == three
    lines = (corpus / "figures.jsonl").read_text().splitlines()
    for i in range(4):  # four files, two tasks: whole files per task
        (tmp_path / f"part-{i}.jsonl").write_text("\n".join(lines[i::4]) + "\n")
    globbed = SourceConfig(
        format="pmc_jsonl", path=str(tmp_path / "part-*.jsonl"), image_root=str(corpus / "figures")
    )
    by_file = read_all([globbed], world_size=2)
    assert len(by_file) == len(one)
    assert sorted(d.id for d in by_file if "ingest_error" not in d.metadata) == sorted(
        i for i, _ in one[:3] + one[4:]
    )
    assert [d.metadata["order"][1] for d in by_file] == sorted(d.metadata["order"][1] for d in by_file)


def test_limit_reads_the_first_items_of_each_file(corpus: Path):
    source = SourceConfig(format="pmc_jsonl", path=str(corpus / "figures.jsonl"))
    assert len(read_all([source], world_size=2, limit=5)) == 5


def test_llava_med_fig_captions_dict_with_token_mentions(tmp_path: Path):
    data = {
        "chest_xray": [
            {
                "pair_id": "111_F1",
                "fig_label": "Figure 1",
                "fig_caption": "Chest X-ray  with effusion.",
                "in_text_mention": [{"tokens": "The effusion ( Figure 1 ) ."}, "Second mention ."],
                "domain": {"chest_xray": True, "ct_scan": False},
            }
        ],
        "histology": [
            {
                "pair_id": "222_F2",
                "fig_label": "Figure 2",
                "fig_caption": "H&E stain of the lesion.",
                "in_text_mention": None,
                "domain": {"histology": True},
            },
            {"fig_caption": "no pair id"},
        ],
    }
    path = tmp_path / "llava_med_instruct_fig_captions.json"
    path.write_text(json.dumps(data))
    docs = read_all([SourceConfig(format="llava_med", path=str(path))], world_size=2)
    assert [d.id for d in docs[:2]] == ["111_F1", "222_F2"]
    assert docs[0].metadata["mentions"] == ["The effusion ( Figure 1 ) .", "Second mention ."]
    assert docs[0].text == "Chest X-ray with effusion."
    assert doc_images(docs[0]) == [str(tmp_path / "images" / "111_F1.jpg")]
    assert (docs[0].metadata["domain"], docs[0].metadata["modality"]) == ("chest_xray", "x-ray")
    assert docs[1].metadata["domain"] == "histology" and docs[1].metadata["fig_label"] == "Figure 2"
    assert docs[2].metadata["ingest_error"][0] == "missing_field"


def test_pairs_csv_roco_style_and_jsonl_multi_panel(tmp_path: Path):
    with (tmp_path / "roco.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerows(
            [
                ["ID", "Caption"],
                ["ROCO_00001", "CT of the chest."],
                ["ROCO_00002", ""],
                ["ROCO_00003", "x", "extra"],
            ]
        )
    roco = SourceConfig(
        format="pairs",
        path=str(tmp_path / "roco.csv"),
        image_key="ID",
        caption_key="Caption",
        id_key="ID",
        image_suffix=".jpg",
        image_root=str(tmp_path / "img"),
        licence="cc-by",
    )
    docs = read_all([roco])
    assert docs[0].id == "ROCO_00001" and doc_images(docs[0]) == [str(tmp_path / "img" / "ROCO_00001.jpg")]
    assert docs[0].metadata["licence"] == "LicenseRef-CC-BY"
    assert [d.metadata["ingest_error"][0] for d in docs[1:]] == ["missing_field", "malformed_line"]
    rows = [
        {"image": ["PMC1_Fig1_0.jpg", "PMC1_Fig1_1.jpg"], "caption": "Panels A and B.", "pmcid": "PMC1"},
        {"image": "PMC2_Fig3_4.jpg", "caption": "MRI of the knee.", "pmcid": "PMC2"},
        {"caption": "no image"},
    ]
    (tmp_path / "pmc_oa.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n[1, 2]\n")
    docs = read_all([SourceConfig(format="pairs", path=str(tmp_path / "pmc_oa.jsonl"))])
    assert docs[0].id == "PMC1_Fig1_0" and len(doc_images(docs[0])) == 2
    assert docs[0].metadata["extra"]["pmcid"] == "PMC1"
    assert docs[1].metadata["figure_id"] == "PMC2_Fig3_4.jpg" and docs[0].metadata["licence"] == "unknown"
    assert [d.metadata.get("ingest_error", [None])[0] for d in docs[1:]] == [
        None,
        "missing_field",
        "malformed_line",
    ]


def test_folder_with_caption_sidecars(tmp_path: Path, rgb_image):
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    rgb_image.save(folder / "a.png")
    (folder / "a.txt").write_text("Axial CT of the abdomen.\n")
    rgb_image.save(folder / "sub" / "b.jpg")
    (folder / "sub" / "b.json").write_text(json.dumps({"caption": "MRI brain.", "mentions": ["see Fig 2"]}))
    rgb_image.save(folder / "c.png")  # no sidecar
    rgb_image.save(folder / "d.png")
    (folder / "d.json").write_text("{broken")
    docs = read_all([SourceConfig(format="folder", path=str(folder))])
    by_id = {d.id: d for d in docs}
    assert by_id["a"].text == "Axial CT of the abdomen."
    assert by_id["sub/b"].metadata["mentions"] == ["see Fig 2"]
    assert by_id["folder:0:1"].metadata["ingest_error"][0] == "missing_caption"
    assert by_id["folder:0:2"].metadata["ingest_error"][0] == "malformed_sidecar"


# The first lines of ROCO's data/validation/non-radiology files (razorx89/roco-dataset), as released:
# captions.txt has no header and a space after the tab; licences.txt is ROCO_ID,PMC_ID,CC.
ROCO_CAPTIONS = (
    "ROCO_81834\t Case #1 right gaze reveals right lateral rectus underaction.\n"
    "ROCO_81840\t A typical plastic McPhail trap (Left) with the optoelectronic sensor embedded (Right).\n"
    "ROCO_81862\t Concentric left ventricular hypertrophy by echocardiography.\n"
    "not a roco line\n"
)
ROCO_LICENCES = (
    "ROCO_ID,PMC_ID,CC\n"
    "ROCO_81834,PMC3498864_jovr-04-256f2.jpg,NO-CC CODE\n"
    "ROCO_81840,PMC4299014_sensors-14-22285f2.jpg,CC BY\n"
    "ROCO_81862,PMC5489500_dmj-41-195-g001.jpg,CC BY-NC\n"
)


def test_roco_captions_with_licences_and_provenance(tmp_path: Path):
    folder = tmp_path / "data" / "validation" / "non-radiology"
    folder.mkdir(parents=True)
    (folder / "captions.txt").write_text(ROCO_CAPTIONS)
    (folder / "licences.txt").write_text(ROCO_LICENCES)
    for source in (SourceConfig(format="roco", path=str(folder)), SourceConfig(format="roco", path=str(folder / "captions.txt"))):
        docs = read_all([source], world_size=2)
        assert [d.id for d in docs[:3]] == ["ROCO_81834", "ROCO_81840", "ROCO_81862"]
        first = docs[0]
        assert first.text == "Case #1 right gaze reveals right lateral rectus underaction."
        assert doc_images(first) == [str(folder / "images" / "ROCO_81834.jpg")]
        assert first.metadata["domain"] == "non-radiology"
        assert (first.metadata["pmcid"], first.metadata["figure_id"]) == ("PMC3498864", "jovr-04-256f2.jpg")
        assert [d.metadata["licence"] for d in docs[:3]] == [
            "LicenseRef-PMC-NO-CC-CODE", "LicenseRef-CC-BY", "LicenseRef-CC-BY-NC"
        ]
        assert docs[3].metadata["ingest_error"][0] == "malformed_line"
    missing = read_all([SourceConfig(format="roco", path=str(tmp_path / "nowhere"))])
    assert missing[0].metadata["ingest_error"][0] == "missing_file"


def test_a_cut_off_line_is_reported_where_it_stops(tmp_path: Path):
    whole = json.dumps({"pdf_hash": "p", "fig_uri": "f.png", "s2_caption": "Axial CT of the liver."})
    path = tmp_path / "figures.jsonl"
    path.write_text(whole + "\n" + whole[:40] + "\n" + whole.replace('"p"', '"q"') + "\n")
    docs = read_all([SourceConfig(format="pmc_jsonl", path=str(path))])
    assert [d.metadata.get("ingest_error", ("",))[0] for d in docs] == ["", "malformed_line", ""]
    detail = docs[1].metadata["ingest_error"][1]
    assert detail.startswith("figures.jsonl:2: invalid JSON at column ")
    assert "of 40 (end of line: cut off?)" in detail  # where the line stops, not "column 1" of the next


def test_a_utf8_bom_does_not_cost_the_first_record_or_the_header(tmp_path: Path):
    """Excel and Notepad save CSV/JSONL with a BOM: the first line and the CSV header must still parse."""
    bom = b"\xef\xbb\xbf"
    (tmp_path / "pairs.csv").write_bytes(bom + b"image,caption\nPMC1_Fig1.jpg,CT of the chest.\n")
    (tmp_path / "pairs.jsonl").write_bytes(bom + json.dumps({"image": "PMC1_Fig1.jpg", "caption": "CT."}).encode())
    (tmp_path / "pairs.json").write_bytes(bom + json.dumps([{"image": "PMC1_Fig1.jpg", "caption": "CT."}]).encode())
    for name in ("pairs.csv", "pairs.jsonl", "pairs.json"):
        docs = read_all([SourceConfig(format="pairs", path=str(tmp_path / name))])
        assert [d.metadata.get("ingest_error") for d in docs] == [None], name
        assert docs[0].id == "PMC1_Fig1", name


def test_a_caption_with_bytes_that_are_not_utf8_is_rejected_with_its_reason(tmp_path: Path):
    """A Latin-1 "é" was read as U+FFFD and the caption kept, changed and counted nowhere."""
    good, bad = b"PMC1_Fig1.jpg,CT of the chest.\n", b"PMC2_Fig1.jpg,Radiograph of the caf\xe9 owner's hand.\n"
    (tmp_path / "pairs.csv").write_bytes(b"image,caption\n" + good + bad)
    line = json.dumps({"image": "PMC2_Fig1.jpg", "caption": "Radiograph of the cafX owner."}).encode()
    (tmp_path / "pairs.jsonl").write_bytes(json.dumps({"image": "PMC1_Fig1.jpg", "caption": "CT."}).encode() + b"\n"
                                           + line.replace(b"cafX", b"caf\xe9") + b"\n")
    roco = tmp_path / "roco"
    roco.mkdir()
    (roco / "captions.txt").write_bytes(b"ROCO_00001\tCT of the chest.\nROCO_00002\tThe caf\xe9 owner's hand.\n")
    for source in (SourceConfig(format="pairs", path=str(tmp_path / "pairs.csv")),
                   SourceConfig(format="pairs", path=str(tmp_path / "pairs.jsonl")),
                   SourceConfig(format="roco", path=str(roco))):
        errors = [d.metadata.get("ingest_error") for d in read_all([source])]
        assert errors[0] is None and errors[1][0] == "malformed_line", (source.path, errors)
        assert "not UTF-8 text (byte 0xe9 at column" in errors[1][1], errors[1]
    whole = tmp_path / "array.json"
    whole.write_bytes(b'[{"image": "PMC1_Fig1.jpg", "caption": "The caf\xe9."}]')
    [doc] = read_all([SourceConfig(format="pairs", path=str(whole))])
    assert doc.metadata["ingest_error"][0] == "malformed_file" and "not UTF-8" in doc.metadata["ingest_error"][1]


def test_a_roco_licence_row_with_bytes_that_are_not_utf8_rejects_its_caption(tmp_path: Path):
    """licences.txt was read with errors="replace": a Latin-1 byte became U+FFFD in the licence, which then
    normalised to some LicenseRef-... slug, and the record went on, its licence changed and counted nowhere."""
    folder = tmp_path / "roco"
    folder.mkdir()
    (folder / "captions.txt").write_text("ROCO_00001\tCT of the chest.\nROCO_00002\tMRI of the knee.\n")
    (folder / "licences.txt").write_bytes(b"ROCO_ID,PMC_ID,CC\nROCO_00001,PMC1_f1.jpg,CC BY\n"
                                          b"ROCO_00002,PMC2_f1.jpg,CC BY-NC (Licence \xe9tendue)\n")
    good, bad = read_all([SourceConfig(format="roco", path=str(folder))], world_size=2)
    assert good.metadata.get("ingest_error") is None and good.metadata["licence"] == "LicenseRef-CC-BY"
    reason, detail = bad.metadata["ingest_error"]
    assert reason == "malformed_licence"
    assert detail.startswith("licences.txt:3: the licence row of ROCO_00002: not UTF-8 text (byte 0xe9"), detail


def test_an_image_path_leading_outside_its_root_is_rejected(tmp_path: Path):
    """`root / "../x.jpg"` and `root / "/abs.jpg"` were read as given: an input line put any image of the
    machine into the release (copied or linked under images/), whatever image_root said."""
    outside = tmp_path / "private.jpg"
    outside.write_bytes(b"not released")
    data = tmp_path / "data"
    data.mkdir()
    caption = "Axial CT of the liver."
    (data / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in (
        {"image": "figures/a.jpg", "caption": caption},
        {"image": "../private.jpg", "caption": caption},
        {"image": str(outside), "caption": caption},
        {"image": ["figures/b.jpg", "figures/../../private.jpg"], "caption": caption},
    )))
    (data / "pmc.jsonl").write_text(json.dumps({"pdf_hash": "x", "fig_uri": "/../../../private.jpg", "s2_caption": caption}))
    (data / "llava_med.jsonl").write_text(json.dumps({"pair_id": "../../private", "fig_caption": caption}))
    errors = [d.metadata.get("ingest_error") for d in read_all([
        SourceConfig(format="pairs", path=str(data / "pairs.jsonl")),
        SourceConfig(format="pmc_jsonl", path=str(data / "pmc.jsonl")),
        SourceConfig(format="llava_med", path=str(data / "llava_med.jsonl")),
    ])]
    assert errors[0] is None
    assert [e and e[0] for e in errors[1:]] == ["image_outside_root"] * 5, errors
    assert errors[1][1] == (f"pairs.jsonl:2: image '../private.jpg' is not under {data}; give image paths relative "
                            "to the source's image_root (or set image_root to a folder that holds them)")


def test_a_reject_of_the_parser_names_where_its_item_is(tmp_path: Path, rgb_image):
    """"missing_field: no 'caption'" with the id "folder:0:2" left the user to count files to find the one."""
    (tmp_path / "pmc.jsonl").write_text(json.dumps({"pdf_hash": "p", "fig_uri": "f.png", "s2_caption": "CT."}) + "\n"
                                        + json.dumps({"fig_uri": "g.png", "s2_caption": "CT."}) + "\n")
    (tmp_path / "pairs.csv").write_text("image,caption\na.jpg,CT of the chest.\nb.jpg,\n")
    folder = tmp_path / "figures"
    (folder / "sub").mkdir(parents=True)
    for name in ("a", "sub/empty"):
        rgb_image.save(folder / f"{name}.png")
    (folder / "a.txt").write_text("CT of the chest.")
    (folder / "sub" / "empty.txt").write_bytes(b"")
    details = [d.metadata["ingest_error"][1] for d in read_all([
        SourceConfig(format="pmc_jsonl", path=str(tmp_path / "pmc.jsonl")),
        SourceConfig(format="pairs", path=str(tmp_path / "pairs.csv")),
        SourceConfig(format="folder", path=str(folder)),
    ]) if "ingest_error" in d.metadata]
    assert details == ["pmc.jsonl:2: no 'pdf_hash'", "pairs.csv: row 3: no 'caption'", "sub/empty.png: no 'caption'"]


def test_a_sidecar_that_is_there_but_cannot_be_read_is_rejected_with_its_reason(tmp_path: Path, rgb_image):
    """A folder or a dangling link named like a sidecar was "no .txt or .json sidecar", and an unreadable
    .json was passed over for the .txt beside it (the .json's licence lost without a word)."""
    import os

    folder = tmp_path / "figures"
    folder.mkdir()
    for name in ("folder", "link", "json_link", "fine"):
        rgb_image.save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text("Axial CT of the liver.")
    (folder / "folder.txt").unlink()
    (folder / "folder.txt").mkdir()
    (folder / "link.txt").unlink()
    os.symlink("gone.txt", folder / "link.txt")
    os.symlink("gone.json", folder / "json_link.json")
    docs = read_all([SourceConfig(format="folder", path=str(folder))])
    assert [d.metadata.get("ingest_error") for d in docs] == [
        None,
        ["unreadable_sidecar", "folder.png: folder.txt: a folder; make it a readable file or remove it"],
        ["unreadable_sidecar", "json_link.png: json_link.json (a link to gone.json): No such file or directory; "
                               "make it a readable file or remove it"],
        ["unreadable_sidecar", "link.png: link.txt (a link to gone.txt): No such file or directory; "
                               "make it a readable file or remove it"],
    ]
