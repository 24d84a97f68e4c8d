"""Read the two annotation formats users have, COCO JSON and Pascal VOC, and check them.

Both become one list of ``ImageRecord`` (boxes as x1, y1, x2, y2 in pixels, labels 1..K with
0 left for the background) and the class names. Nothing unusable is dropped silently: every
skipped box or image is counted by reason, with the file and the first ids, in ``Problems``,
which the caller prints. A file that is not COCO JSON or VOC at all fails with one line.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError


@dataclass(frozen=True)
class ImageRecord:
    path: str
    image_id: int
    width: int
    height: int
    boxes: tuple[tuple[float, float, float, float], ...]  # x1, y1, x2, y2 in pixels
    labels: tuple[int, ...]  # 1..K (0 is the background)
    crowd: tuple[bool, ...] = ()  # COCO iscrowd / VOC difficult: not trained on, ignored by the metric


@dataclass
class Annotations:
    source: str
    records: list[ImageRecord]
    class_names: list[str]
    category_ids: list[int]  # the file's own id of label k + 1 (COCO category ids; 1..K for VOC)
    problems: Problems

    @property
    def num_boxes(self) -> int:
        return sum(len(r.boxes) for r in self.records)

    def summary(self) -> str:
        return (f"{self.source}: {len(self.records):,} images, {self.num_boxes:,} boxes, "
                f"{len(self.class_names)} classes")


@dataclass
class Problems:
    """What was skipped or changed, by reason, with where: printed, never silent."""

    source: str
    found: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def add(self, reason: str, where: str) -> None:
        self.found[reason].append(where)

    def lines(self, examples: int = 5) -> list[str]:
        out = []
        for reason, where in self.found.items():
            more = f", ... ({len(where) - examples} more)" if len(where) > examples else ""
            out.append(f"warning: {self.source}: {len(where)} {reason} ({', '.join(where[:examples])}{more})")
        return out

    def count(self, reason_start: str) -> int:
        return sum(len(w) for r, w in self.found.items() if r.startswith(reason_start))


def check_box(x1: float, y1: float, x2: float, y2: float, width: int, height: int, where: str,
              problems: Problems) -> tuple[float, float, float, float] | None:
    """A box clipped to the image, or ``None`` (with the reason recorded) if nothing usable is left."""
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        problems.add("boxes with non-numeric coordinates skipped", where)
        return None
    if x2 <= x1 or y2 <= y1:
        problems.add("boxes of zero area skipped", where)
        return None
    clipped = (max(0.0, x1), max(0.0, y1), min(float(width), x2), min(float(height), y2))
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        problems.add("boxes outside the image skipped", where)
        return None
    if clipped != (x1, y1, x2, y2):
        problems.add("boxes crossing the image border clipped", where)
    return clipped


def _image_size(path: Path) -> tuple[int, int] | None:
    try:
        with Image.open(path) as img:
            return img.size
    except (UnidentifiedImageError, OSError):
        return None


def _whole(value: object) -> int | None:
    """A COCO category id as an int (7 and 7.0 alike), or ``None`` for anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return int(value) if float(value).is_integer() else None


def _is_id(value: object) -> bool:
    """Image ids are numbers or strings (anything else cannot be looked up)."""
    return isinstance(value, (int, float, str)) and not isinstance(value, bool)


def _shared_ids(images: list) -> set:
    seen, shared = set(), set()
    for img in images:
        if isinstance(img, dict) and _is_id(img.get("id")):
            (shared if img["id"] in seen else seen).add(img["id"])
    return shared


def read_coco(path: str | Path) -> Annotations:
    """A COCO JSON file (``images``, ``annotations``, ``categories``); ``file_name`` is relative
    to the JSON's folder."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data, dict)
               or not isinstance(data.get(k), list)]
    if missing:
        raise ValueError(f"{path} is not COCO JSON: no {' / '.join(repr(k) for k in missing)} list")
    problems = Problems(path.name)
    categories = {}
    for i, c in enumerate(data["categories"]):
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            raise ValueError(f"{path}: category #{i} has no 'id' or 'name'")
        cid = _whole(c["id"])
        if cid is None:
            raise ValueError(f"{path}: category #{i} ({c['name']}) has the id {c['id']!r}, not a whole number")
        if cid in categories:
            raise ValueError(f"{path}: category id {cid} is given twice ({categories[cid]}, {c['name']})")
        categories[cid] = str(c["name"])
    if not categories:
        raise ValueError(f"{path} has no categories")
    category_ids = sorted(categories)
    label_of = {cid: k + 1 for k, cid in enumerate(category_ids)}
    images, shared = {}, _shared_ids(data["images"])
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
            problems.add("images without 'id' or 'file_name' skipped", f"image #{i}")
            continue
        where = f"image id {img['id']!r} ({img['file_name']})"
        if not _is_id(img["id"]):
            problems.add("images whose id is not a number or a string skipped", where)
            continue
        if img["id"] in shared:  # their boxes cannot be told apart
            problems.add("images sharing their id with another skipped", where)
            continue
        file = path.parent / str(img["file_name"])
        if not file.is_file():
            problems.add("images whose file is missing skipped", where)
            continue
        size = _image_size(file)  # its header: an image that cannot be opened is counted now, not met later
        if size is None:
            problems.add("images that cannot be read skipped", where)
            continue
        if (img.get("width"), img.get("height")) not in ((None, None), size):
            problems.add("images whose width and height are not the file's: the file's used",
                         f"{where}: {img.get('width')}x{img.get('height')}, the file {size[0]}x{size[1]}")
        images[img["id"]] = (str(file), *size)
    boxes: dict[int, list] = defaultdict(list)
    for i, ann in enumerate(data["annotations"]):
        where = f"annotation id {ann['id']}" if isinstance(ann, dict) and "id" in ann else f"annotation #{i}"
        if not isinstance(ann, dict) or any(k not in ann for k in ("image_id", "category_id", "bbox")):
            problems.add("annotations without 'image_id', 'category_id' or 'bbox' skipped", where)
            continue
        if _whole(ann["category_id"]) not in label_of:
            problems.add("annotations of an unknown category skipped", f"{where}: category {ann['category_id']!r}")
            continue
        if not _is_id(ann["image_id"]) or ann["image_id"] not in images:
            problems.add("annotations of an unknown or skipped image skipped", f"{where}: image {ann['image_id']!r}")
            continue
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            problems.add("annotations whose 'bbox' is not [x, y, w, h] skipped", where)
            continue
        _, width, height = images[ann["image_id"]]
        x, y, w, h = (float(v) for v in bbox)
        box = check_box(x, y, x + w, y + h, width, height, where, problems)
        if box is not None:
            boxes[ann["image_id"]].append((box, label_of[_whole(ann["category_id"])], bool(ann.get("iscrowd", 0))))
    records = [
        ImageRecord(file, image_id, width, height, tuple(b for b, _, _ in boxes[image_id]),
                    tuple(label for _, label, _ in boxes[image_id]), tuple(c for _, _, c in boxes[image_id]))
        for image_id, (file, width, height) in images.items()
    ]
    return Annotations(str(path), records, [categories[c] for c in category_ids], category_ids, problems)


def read_voc(root: str | Path, split: str, class_names: list[str] | None = None) -> Annotations:
    """A Pascal VOC folder: ``ImageSets/Main/<split>.txt``, ``Annotations/<id>.xml``,
    ``JPEGImages/<id>.jpg``. Classes are ``class_names`` (the training split's), else the
    names found, sorted. ``difficult`` objects are kept as crowd: ignored by training and metric."""
    root = Path(root)
    listing = root / "ImageSets" / "Main" / f"{split}.txt"
    if not listing.is_file():
        raise FileNotFoundError(f"{listing} not found: a Pascal VOC folder has Annotations/, JPEGImages/ and "
                                f"ImageSets/Main/{split}.txt")
    problems = Problems(f"{root.name}/{split}")
    parsed = []
    for image_id, name in enumerate(n.split()[0] for n in listing.read_text().splitlines() if n.strip()):
        xml_file = root / "Annotations" / f"{name}.xml"
        try:
            tree = ET.parse(xml_file)
        except (OSError, ET.ParseError):
            problems.add("images whose annotation XML is missing or unreadable skipped", f"{name}")
            continue
        image = root / "JPEGImages" / (tree.findtext("filename") or f"{name}.jpg")
        if not image.is_file():
            problems.add("images whose file is missing skipped", f"{name} ({image.name})")
            continue
        size = _image_size(image)
        if size is None:
            problems.add("images that cannot be read skipped", name)
            continue
        declared = (tree.findtext("size/width"), tree.findtext("size/height"))
        if None not in declared and declared != tuple(map(str, size)):
            problems.add("images whose width and height are not the file's: the file's used",
                         f"{name}: {declared[0]}x{declared[1]}, the file {size[0]}x{size[1]}")
        objects = []
        for k, obj in enumerate(tree.findall("object")):
            where = f"{name} object {k}"
            try:
                label = obj.findtext("name").strip()
                x1, y1, x2, y2 = (float(obj.findtext(f"bndbox/{t}")) for t in ("xmin", "ymin", "xmax", "ymax"))
            except (AttributeError, TypeError, ValueError):
                problems.add("objects without a name or a numeric bndbox skipped", where)
                continue
            box = check_box(x1 - 1, y1 - 1, x2, y2, *size, where, problems)  # VOC pixels are 1-based, inclusive
            if box is not None:
                objects.append((box, label, obj.findtext("difficult", "0").strip() == "1"))
        parsed.append((str(image), image_id, size, objects))
    names = class_names or sorted({label for *_, objects in parsed for _, label, _ in objects})
    if not names:
        raise ValueError(f"{root}/{split}: no objects found")
    label_of = {n: k + 1 for k, n in enumerate(names)}
    records = []
    for image, image_id, (width, height), objects in parsed:
        kept = []
        for box, label, difficult in objects:
            if label not in label_of:
                problems.add("objects of a class not in the training split skipped", f"{Path(image).stem}: {label}")
                continue
            kept.append((box, label_of[label], difficult))
        records.append(ImageRecord(image, image_id, width, height, tuple(b for b, _, _ in kept),
                                   tuple(lab for _, lab, _ in kept), tuple(d for _, _, d in kept)))
    return Annotations(f"{root}/{split}", records, names, list(range(1, len(names) + 1)), problems)


def to_coco(records: list[ImageRecord], class_names: list[str], category_ids: list[int], root: Path | None) -> dict:
    """Records as a COCO JSON document (file names relative to ``root`` when under it): what
    pycocotools evaluates against, and what ``make-detection-data`` writes."""
    annotations = []
    for r in records:
        for box, label, crowd in zip(r.boxes, r.labels, r.crowd or (False,) * len(r.boxes)):
            x1, y1, x2, y2 = box
            annotations.append({"id": len(annotations) + 1, "image_id": r.image_id,
                                "category_id": category_ids[label - 1], "bbox": [x1, y1, x2 - x1, y2 - y1],
                                "area": (x2 - x1) * (y2 - y1), "iscrowd": int(crowd)})
    return {
        "images": [{"id": r.image_id, "file_name": _relative(r.path, root), "width": r.width, "height": r.height}
                   for r in records],
        "annotations": annotations,
        "categories": [{"id": c, "name": n} for c, n in zip(category_ids, class_names)],
    }


def _relative(path: str, root: Path | None) -> str:
    return str(Path(path).relative_to(root)) if root is not None and root in Path(path).parents else path
