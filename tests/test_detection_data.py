"""COCO JSON and Pascal VOC readers: what they read, and every bad annotation reported."""

import json

import numpy as np
import pytest
import torch
from cli_helpers import assert_one_line_error, run_cli
from PIL import Image

from mobilenets.detection.annotations import read_coco, read_voc
from mobilenets.detection.dataset import DetectionDataset, box_augmentation, collate, load_detection_data
from mobilenets.detection.synthetic import INK, _paste, make_detection_data


def write_coco(root, images, annotations, categories=({"id": 3, "name": "cat"}, {"id": 7, "name": "dog"})):
    root.mkdir(parents=True, exist_ok=True)
    for img in images:
        if not img.get("missing"):
            Image.new("RGB", (img.get("w", 64), img.get("h", 48)), (90, 30, 200)).save(root / img["file_name"])
    doc = {"images": [{k: v for k, v in i.items() if k in ("id", "file_name", "width", "height")} for i in images],
           "annotations": annotations, "categories": list(categories)}
    (root / "ann.json").write_text(json.dumps(doc))
    return root / "ann.json"


def test_coco_reads_boxes_and_reports_every_problem(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "width": 64, "height": 48},
              {"id": 2, "file_name": "b.png", "width": 64, "height": 48},
              {"id": 3, "file_name": "gone.png", "width": 64, "height": 48, "missing": True}]
    annotations = [
        {"id": 10, "image_id": 1, "category_id": 7, "bbox": [4, 5, 20, 10]},  # good
        {"id": 11, "image_id": 1, "category_id": 3, "bbox": [50, 40, 30, 30]},  # crosses the border: clipped
        {"id": 12, "image_id": 1, "category_id": 99, "bbox": [1, 1, 5, 5]},  # unknown category
        {"id": 13, "image_id": 2, "category_id": 3, "bbox": [10, 10, 0, 5]},  # zero area
        {"id": 14, "image_id": 2, "category_id": 3, "bbox": [100, 100, 5, 5]},  # outside the image
        {"id": 15, "image_id": 2, "category_id": 3},  # no bbox
        {"id": 16, "image_id": 3, "category_id": 3, "bbox": [1, 1, 5, 5]},  # its image file is missing
        {"id": 17, "image_id": 2, "category_id": 3, "bbox": [1, 2, 3, 4], "iscrowd": 1},  # crowd: kept, ignored
    ]
    ann = read_coco(write_coco(tmp_path / "d", images, annotations))
    assert ann.class_names == ["cat", "dog"] and ann.category_ids == [3, 7]
    first = next(r for r in ann.records if r.image_id == 1)
    assert first.boxes == ((4.0, 5.0, 24.0, 15.0), (50.0, 40.0, 64.0, 48.0)) and first.labels == (2, 1)
    assert len(ann.records) == 2 and ann.num_boxes == 3
    report = "\n".join(ann.problems.lines())
    for expected in ("1 boxes crossing the image border clipped (annotation id 11)",
                     "1 annotations of an unknown category skipped (annotation id 12: category 99)",
                     "1 boxes of zero area skipped (annotation id 13)",
                     "1 boxes outside the image skipped (annotation id 14)",
                     "without 'image_id', 'category_id' or 'bbox' skipped (annotation id 15)",
                     "1 images whose file is missing skipped (image id 3 (gone.png))",
                     "1 annotations of an unknown or skipped image skipped (annotation id 16: image 3)"):
        assert expected in report, report
    assert all(line.startswith("warning: ann.json: ") for line in ann.problems.lines())
    # the crowd box is in the record (for the metric) but not in the training target
    second = next(r for r in ann.records if r.image_id == 2)
    assert second.crowd == (True,)
    _, target = DetectionDataset([second])[0]
    assert len(target["boxes"]) == 0


@pytest.mark.parametrize("content, message", [
    ("not json", "is not valid JSON"),
    ('{"images": []}', "is not COCO JSON: no 'annotations' / 'categories' list"),
    ('{"images": [], "annotations": [], "categories": [{"name": "x"}]}', "category #0 has no 'id' or 'name'"),
])
def test_coco_that_is_not_coco(tmp_path, content, message):
    (tmp_path / "x.json").write_text(content)
    with pytest.raises(ValueError, match=message):
        read_coco(tmp_path / "x.json")


def test_unreadable_images_are_counted_when_read_or_skipped_when_loaded(tmp_path, capfd):
    images = [{"id": 1, "file_name": "a.png", "width": 64, "height": 48},
              {"id": 2, "file_name": "b.png", "width": 64, "height": 48}]
    path = write_coco(tmp_path / "d", images, [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 10, 10]},
                                               {"id": 2, "image_id": 2, "category_id": 3, "bbox": [1, 1, 10, 10]}])
    (tmp_path / "d" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")  # no header: counted at once
    whole = (tmp_path / "d" / "b.png").read_bytes()
    (tmp_path / "d" / "b.png").write_bytes(whole[: len(whole) // 2])  # a header, then too little data
    annotations = read_coco(path)
    assert [r.image_id for r in annotations.records] == [2]
    assert annotations.problems.found["images that cannot be read skipped"] == ["image id 1 (a.png)"]
    assert annotations.problems.found["annotations of an unknown or skipped image skipped"] == [
        "annotation id 1: image 1"]  # its boxes leave the metric with it
    dataset = DetectionDataset(annotations.records)
    assert dataset[0] is None and "b.png" in capfd.readouterr().err
    assert dataset[0] is None and "b.png" not in capfd.readouterr().err  # reported once
    assert collate([None]) == ([], [])


def write_voc(root, names=("0001", "0002"), split="train"):
    for folder in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", (100, 80)).save(root / "JPEGImages" / f"{name}.jpg")
        (root / "Annotations" / f"{name}.xml").write_text(
            f"<annotation><filename>{name}.jpg</filename><size><width>100</width><height>80</height></size>"
            "<object><name>bird</name><difficult>0</difficult><bndbox><xmin>11</xmin><ymin>21</ymin>"
            "<xmax>50</xmax><ymax>60</ymax></bndbox></object>"
            "<object><name>car</name><difficult>1</difficult><bndbox><xmin>1</xmin><ymin>1</ymin>"
            "<xmax>30</xmax><ymax>30</ymax></bndbox></object>"
            "<object><name>car</name><bndbox><xmin>a</xmin></bndbox></object></annotation>")
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(names) + "\n")
    return root


def test_voc_folder(tmp_path):
    root = write_voc(tmp_path / "voc")
    write_voc(root, names=("0002",), split="val")
    data = load_detection_data(str(root))
    assert data.class_names == ["bird", "car"] and len(data.train.records) == 2 and len(data.val.records) == 1
    record = data.train.records[0]
    assert record.boxes[0] == (10.0, 20.0, 50.0, 60.0)  # VOC's pixels are 1-based
    assert record.labels == (1, 2) and record.crowd == (False, True)
    assert "objects without a name or a numeric bndbox skipped" in "\n".join(data.train.problems.lines())
    with pytest.raises(FileNotFoundError, match="ImageSets/Main/test.txt"):
        read_voc(root, "test")


def test_generated_set_is_coco_and_augments_with_its_boxes(tmp_path, fashion_mnist_dir):
    written = make_detection_data(tmp_path / "det", train=6, val=2, size=128, seed=3)
    data = load_detection_data(str(written["train"]), str(written["val"]))
    assert len(data.train.records) == 6 and data.class_names[0] == "T-shirt/top" and not data.train.problems.found
    boxes = [b for r in data.train.records for b in r.boxes]
    assert all(0 <= x1 < x2 <= 128 and 0 <= y1 < y2 <= 128 for x1, y1, x2, y2 in boxes)
    torch.manual_seed(0)
    image, target = DetectionDataset(data.train.records, box_augmentation("ssd", 96))[0]
    assert image.shape == (3, 96, 96) and image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
    assert target["boxes"].shape[1] == 4 and (target["boxes"] <= 96).all() and len(target["labels"]) == len(
        target["boxes"])


def test_denser_training_canvases_keep_the_validation_canvases(tmp_path, capsys, fashion_mnist_dir):
    def generate(name, *items):
        code, out, err = run_cli(capsys, "make-detection-data", "--out", tmp_path / name, "--train", "12", "--val", "3",
                                 "--size", "128", *items)
        return code, err, tmp_path / name

    _, _, default = generate("default")
    code, _, dense = generate("dense", "--train-items", "8", "10")
    assert code == 0
    boxes = {name: len(json.loads((root / "train.json").read_text())["annotations"]) / 12
             for name, root in (("default", default), ("dense", dense))}
    assert boxes["default"] <= 6 < boxes["dense"]  # asked for 8 to 10: some find no free place
    assert (default / "val.json").read_text() == (dense / "val.json").read_text()
    assert all((default / "val" / f.name).read_bytes() == f.read_bytes() for f in (dense / "val").iterdir())
    code, err, _ = generate("bad", "--train-items", "5", "2")
    assert_one_line_error(code, err, "--train-items 5 2: give the fewest and the most, 1 <= FEWEST <= MOST")
    with pytest.raises(ValueError, match="--train-items 0 3"):  # in Python too, before anything is written
        make_detection_data(tmp_path / "bad-api", train=1, val=1, train_items=(0, 3))
    assert not (tmp_path / "bad-api").exists()


def test_mild_augmentation_keeps_every_object_whole_and_at_scale(tmp_path, fashion_mnist_dir):
    written = make_detection_data(tmp_path / "det", train=4, val=1, size=128, seed=5)
    records = load_detection_data(str(written["train"]), str(written["val"])).train.records
    torch.manual_seed(0)
    for record, (image, target) in zip(records, DetectionDataset(records, box_augmentation("mild", 64, hflip=1.0))):
        assert image.shape == (3, 64, 64)
        original = torch.tensor(record.boxes) / 2  # 128 -> 64: the same boxes, mirrored
        mirrored = torch.stack([64 - original[:, 2], original[:, 1], 64 - original[:, 0], original[:, 3]], 1)
        torch.testing.assert_close(target["boxes"], mirrored)
        assert target["labels"].tolist() == list(record.labels)


def test_generated_items_are_opaque_and_keep_their_shading():
    item = np.array([[0, INK, 2 * INK, 120, 250]], dtype=np.float32)  # background, edge, three shades
    region = np.full((1, 5, 3), 7.0, dtype=np.float32)
    _paste(region, item, np.array([200.0, 100.0, 50.0], dtype=np.float32))
    assert (region[0, :2] == 7).all()  # at or below INK the canvas shows through
    shades = region[0, 2:, 0]
    assert (np.diff(shades) > 0).all() and shades[0] > 7  # opaque above, brighter where the item is brighter
    np.testing.assert_allclose(region[0, 4], np.clip(np.array([200, 100, 50]) * (0.3 + 0.9 * 250 / 255), 0, 255))


def test_ids_that_cannot_be_trusted_are_counted_or_refused(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "width": 64, "height": 48},
              {"id": 1, "file_name": "b.png", "width": 64, "height": 48},  # the same id: which boxes are whose?
              {"id": [3], "file_name": "c.png"},
              {"id": 4, "file_name": "d.png", "width": 50, "height": 48}]  # the file is 64 wide
    annotations = [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 10, 10]},
                   {"id": 2, "image_id": {"a": 1}, "category_id": 3, "bbox": [1, 1, 10, 10]},
                   {"id": 3, "image_id": 4, "category_id": [7], "bbox": [1, 1, 10, 10]},
                   {"id": 4, "image_id": 4, "category_id": 7.0, "bbox": [40, 1, 20, 10]}]
    found = read_coco(write_coco(tmp_path / "d", images, annotations))
    assert [(r.image_id, r.width, r.boxes) for r in found.records] == [(4, 64, ((40.0, 1.0, 60.0, 11.0),))]
    problems = found.problems.found
    assert problems["images sharing their id with another skipped"] == ["image id 1 (a.png)", "image id 1 (b.png)"]
    assert problems["images whose id is not a number or a string skipped"] == ["image id [3] (c.png)"]
    assert problems["images whose width and height are not the file's: the file's used"] == [
        "image id 4 (d.png): 50x48, the file 64x48"]
    assert problems["annotations of an unknown category skipped"] == ["annotation id 3: category [7]"]
    assert problems["annotations of an unknown or skipped image skipped"] == [
        "annotation id 1: image 1", "annotation id 2: image {'a': 1}"]
    for categories, message in [(({"id": 3, "name": "cat"}, {"id": 3, "name": "dog"}), "category id 3 is given twice"),
                                (({"id": "3", "name": "cat"},), "has the id '3', not a whole number")]:
        with pytest.raises(ValueError, match=message):
            read_coco(write_coco(tmp_path / "e", images[:1], [], categories))


def test_a_split_without_boxes_is_refused(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "width": 64, "height": 48}]
    train = write_coco(tmp_path / "t", images, [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 10, 10]}])
    empty = write_coco(tmp_path / "v", images, [])
    with pytest.raises(ValueError, match="has no usable boxes to validate on"):
        load_detection_data(str(train), str(empty))
    with pytest.raises(ValueError, match="has no usable boxes to train on"):
        load_detection_data(str(empty), str(train))
