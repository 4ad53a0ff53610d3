"""The bundled demo dataset has the shape the demo preset and the docs promise."""

from PIL import Image

from core.system.resources import resource_path

SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


def _images(folder):
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES)


def test_demo_dataset_uses_kohya_folder_names():
    names = sorted(p.name for p in resource_path("demo", "dataset").iterdir())
    assert names == ["2_kilnstyle bowl", "4_kilnstyle vase"]


def test_demo_dataset_has_varied_sizes_and_one_image_below_the_minimum_bucket():
    sizes = [Image.open(p).size for p in _images(resource_path("demo", "dataset", "4_kilnstyle vase"))]
    sizes += [Image.open(p).size for p in _images(resource_path("demo", "dataset", "2_kilnstyle bowl"))]
    assert len(sizes) == 24
    assert (862, 862) in sizes
    assert any(w > h for w, h in sizes) and any(h > w for w, h in sizes)
    assert sum(1 for w, h in sizes if min(w, h) < 128) == 1


def test_demo_dataset_has_a_sideways_photo_with_exif_orientation():
    image = Image.open(resource_path("demo", "dataset", "4_kilnstyle vase", "vase_08_rotated.jpg"))
    assert image.size == (640, 480) and image.getexif().get(0x0112) == 6


def test_most_demo_images_have_captions_and_two_fall_back_to_class_tokens():
    folder = resource_path("demo", "dataset", "4_kilnstyle vase")
    missing = [p.name for p in _images(folder) if not p.with_suffix(".txt").exists()]
    assert missing == ["vase_11.PNG", "vase_15.png"]
