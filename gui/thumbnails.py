"""Thumbnails of the planned images, with the crop training applies drawn over them.

Decoding happens in a thread pool, only for the items the view asks to paint (the model's
``data(DecorationRole)``), newest request first, so scrolling through thousands of images
stays smooth and the visible ones come first. Decoded thumbnails are cached by
(path, mtime); the crop overlay is drawn at paint time, because a change of resolution
moves the crop but not the pixels.
"""

from __future__ import annotations

import itertools
import os
import warnings
from collections import OrderedDict
from collections.abc import Callable

from PIL import Image, ImageOps
from PySide6.QtCore import QAbstractListModel, QModelIndex, QObject, QPointF, QRectF, QRunnable, Qt, \
    QThread, QThreadPool, Signal
from PySide6.QtGui import QColor, QIcon, QImage, QPainter, QPen, QPixmap, QPolygonF

from core.data.dataset_plan import PlanImage
from core.system.words import count
from gui import theme

THUMB = 144  # px: the square each thumbnail is drawn in
CACHE_LIMIT = 1500  # decoded thumbnails kept (~60 KB each): many screens' worth
COMPOSED_LIMIT = 400  # finished pixmaps kept, so repaints do not redraw the overlay
IMAGE_ROLE = Qt.ItemDataRole.UserRole  # the row's PlanImage
LOADED_ROLE = Qt.ItemDataRole.UserRole + 1  # True once the real pixels are shown

Rect = tuple[float, float, float, float]  # x, y, width, height
Key = tuple[str, int]  # (path, mtime_ns)
_PLACEHOLDER = QColor("#d9d9d9")
_RESIZABLE = frozenset({"RGB", "RGBA", "L", "LA", "CMYK", "YCbCr"})
_ALPHA = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
# The tint over what a loss mask leaves out: masked-out pixels teach nothing.
MASK_TINT = QColor(200, 0, 160)
MASK_TINT_ALPHA = 0.55  # how opaque the tint is where the mask is 0


def fit_rect(size: tuple[int, int], box: tuple[float, float]) -> Rect:
    """Where an image of ``size`` lies when scaled to fit ``box``, centred, aspect kept."""
    scale = min(box[0] / size[0], box[1] / size[1])
    w, h = size[0] * scale, size[1] * scale
    return (box[0] - w) / 2, (box[1] - h) / 2, w, h


def crop_rect_in_thumbnail(crop: tuple[int, int, int, int], resized: tuple[int, int],
                           image_rect: Rect) -> Rect:
    """The crop box (in resized-image pixels) as a rectangle over the drawn thumbnail.

    The thumbnail shows the whole image, and the resized image is the whole image too,
    so the map is a plain scale from resized pixels to the drawn rectangle.
    """
    x0, y0, w, h = image_rect
    sx, sy = w / resized[0], h / resized[1]
    left, top, right, bottom = crop
    return x0 + left * sx, y0 + top * sy, (right - left) * sx, (bottom - top) * sy


def _preview_rgb(image: Image.Image) -> Image.Image:
    # Transparency goes onto white and 16-bit keeps its top byte, as training loads them.
    if image.mode in _ALPHA or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    if image.mode.startswith("I"):
        return image.convert("I").point(lambda v: v * (1 / 256)).convert("L").convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def decode_thumbnail(path: str | os.PathLike[str], side: int) -> QImage:
    """The upright image scaled to fit ``side`` x ``side``; runs in a worker thread."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            # JPEG decodes at 1/2..1/8 scale when asked: most of the speed on photos.
            image.draft("RGB", (side, side))
            upright = ImageOps.exif_transpose(image)  # planned sizes are as displayed
            if upright.mode not in _RESIZABLE:  # palettes and 16-bit cannot be resampled as-is
                upright = _preview_rgb(upright)
            upright.thumbnail((side, side), Image.Resampling.BILINEAR, reducing_gap=2.0)
            rgb = _preview_rgb(upright)
    data = rgb.tobytes("raw", "RGB")
    # copy(): the QImage must own its pixels once the bytes object goes away.
    return QImage(data, rgb.width, rgb.height, 3 * rgb.width, QImage.Format.Format_RGB888).copy()


def _mask_overlay(mask: Image.Image, side: int) -> QImage:
    """An ARGB tint over the masked-out part of a ``side``-fitted mask (white = trained)."""
    mask = mask.copy()
    mask.thumbnail((side, side), Image.Resampling.BILINEAR)
    strength = mask.point(lambda v: int((255 - v) * MASK_TINT_ALPHA))
    tint = Image.new("RGBA", mask.size, (MASK_TINT.red(), MASK_TINT.green(), MASK_TINT.blue(), 0))
    tint.putalpha(strength)
    data = tint.tobytes("raw", "RGBA")
    return QImage(data, tint.width, tint.height, 4 * tint.width, QImage.Format.Format_RGBA8888).copy()


def decode_folder_mask(path: str | os.PathLike[str], side: int) -> QImage:
    """The tint of a mask file from a mask folder (its red channel, as training reads it)."""
    with Image.open(path) as image:
        mask = ImageOps.exif_transpose(image).convert("RGB").getchannel("R")
    return _mask_overlay(mask, side)


def decode_alpha_mask(path: str | os.PathLike[str], side: int) -> QImage:
    """The tint of an image's alpha channel; a null image when it has none (trained everywhere)."""
    with Image.open(path) as image:
        upright = ImageOps.exif_transpose(image)
        if upright.mode not in _ALPHA and "transparency" not in upright.info:
            return QImage()
        mask = upright.convert("RGBA").getchannel("A")
    return _mask_overlay(mask, side)


def compose_thumbnail(image: QImage | None, item: PlanImage, side: int = THUMB,
                      broken: bool = False, mask: QImage | None = None) -> QPixmap:
    """The thumbnail with the cropped-away parts darkened and the kept area framed; with
    ``mask`` (an overlay from decode_*_mask) the part the loss mask leaves out tinted."""
    pixmap = QPixmap(side, side)
    pixmap.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pixmap)
    painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
    x, y, w, h = fit_rect(item.record.size, (side, side))
    if image is not None and not image.isNull():
        painter.drawImage(QRectF(x, y, w, h), image)
        if mask is not None and not mask.isNull():
            painter.drawImage(QRectF(x, y, w, h), mask)
    else:
        painter.fillRect(QRectF(x, y, w, h), _PLACEHOLDER)
        if broken:
            painter.setPen(QPen(QColor(theme.ERROR), 3))
            painter.drawLine(QPointF(x + 8, y + 8), QPointF(x + w - 8, y + h - 8))
            painter.drawLine(QPointF(x + w - 8, y + 8), QPointF(x + 8, y + h - 8))
    cx, cy, cw, ch = crop_rect_in_thumbnail(item.assignment.crop, item.assignment.resized, (x, y, w, h))
    for band in (QRectF(x, y, w, cy - y), QRectF(x, cy + ch, w, y + h - cy - ch),
                 QRectF(x, cy, cx - x, ch), QRectF(cx + cw, cy, x + w - cx - cw, ch)):
        if band.width() > 0.5 and band.height() > 0.5:
            painter.fillRect(band, theme.CROP_OVERLAY)
    pen = QPen(theme.BUCKET_FRAME, 2)
    pen.setJoinStyle(Qt.PenJoinStyle.MiterJoin)
    painter.setPen(pen)
    painter.drawRect(QRectF(cx + 1, cy + 1, max(cw - 2, 1), max(ch - 2, 1)))
    if item.assignment.upscaled:
        _draw_upscale_marker(painter, QPointF(x + w - 12, y + 12))
    painter.end()
    return pixmap


def _draw_upscale_marker(painter: QPainter, centre: QPointF) -> None:
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setPen(QPen(QColor("#ffffff"), 1.5))
    painter.setBrush(QColor(theme.WARNING))
    painter.drawEllipse(centre, 9, 9)
    painter.setPen(Qt.PenStyle.NoPen)
    painter.setBrush(QColor("#ffffff"))
    cx, cy = centre.x(), centre.y()
    painter.drawPolygon(QPolygonF([QPointF(cx, cy - 5), QPointF(cx + 5, cy + 1), QPointF(cx + 2, cy + 1),
                                   QPointF(cx + 2, cy + 5), QPointF(cx - 2, cy + 5), QPointF(cx - 2, cy + 1),
                                   QPointF(cx - 5, cy + 1)]))


class _Shared:
    """What the loader and its jobs share: read by the worker threads, written by the GUI."""

    def __init__(self) -> None:
        self.generation = 0
        self.stopped = False


class _Relay(QObject):
    loaded = Signal(object, object, int)  # key, QImage or None when it cannot be decoded, generation


class _LoadJob(QRunnable):
    def __init__(self, key: Key, side: int, relay: _Relay, shared: _Shared,
                 decode: Callable[[str, int], QImage]) -> None:
        super().__init__()
        self._key, self._side, self._relay, self._shared = key, side, relay, shared
        self._decode = decode
        self._generation = shared.generation

    def run(self) -> None:
        if self._shared.stopped or self._shared.generation != self._generation:
            return  # cancelled while queued: the view no longer needs it
        try:
            image: QImage | None = self._decode(self._key[0], self._side)
        except Exception:  # noqa: BLE001 - any decoder failure shows as a broken thumbnail
            image = None
        if not self._shared.stopped:
            self._relay.loaded.emit(self._key, image, self._generation)


class ThumbnailLoader(QObject):
    """Decodes thumbnails in a thread pool and keeps the most recent ones."""

    loaded = Signal(object)  # the key whose thumbnail (or failure) is now known

    def __init__(self, side: int = THUMB, parent: QObject | None = None,
                 decode: Callable[[str, int], QImage] = decode_thumbnail) -> None:
        """``decode`` turns (path, side) into the image kept: a thumbnail, or a mask's tint."""
        super().__init__(parent)
        self.side = side
        self._decode = decode
        self._shared = _Shared()
        shared = self._shared
        # The pool is created before the relay, so as a child it is destroyed first: its
        # destructor waits for running jobs while the relay they emit on still exists.
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(max(1, min(4, QThread.idealThreadCount() - 1)))
        self._relay = _Relay(self)
        self._relay.loaded.connect(self._on_relay_loaded)
        self.destroyed.connect(lambda: setattr(shared, "stopped", True))
        self._cache: OrderedDict[Key, QImage | None] = OrderedDict()
        self._pending: set[Key] = set()
        self._priority = itertools.count()

    def lookup(self, key: Key) -> tuple[bool, QImage | None]:
        """(known, image): image None with known True means the file cannot be decoded."""
        if key in self._cache:
            self._cache.move_to_end(key)
            return True, self._cache[key]
        return False, None

    def request(self, key: Key) -> None:
        if key in self._pending or key in self._cache:
            return
        self._pending.add(key)
        # Newest first: after a fast scroll the items now on screen load before the ones
        # that scrolled past.
        self._pool.start(_LoadJob(key, self.side, self._relay, self._shared, self._decode), next(self._priority))

    def cancel_pending(self) -> None:
        """Drop queued loads (a rescan makes them stale); running ones finish into the cache."""
        self._shared.generation += 1
        self._pool.clear()
        self._pending.clear()

    def shutdown(self) -> None:
        self._shared.stopped = True
        self.cancel_pending()
        self._pool.waitForDone()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _on_relay_loaded(self, key: Key, image: QImage | None, generation: int) -> None:
        self._pending.discard(key)
        self._cache[key] = image
        self._cache.move_to_end(key)
        while len(self._cache) > CACHE_LIMIT:
            self._cache.popitem(last=False)
        self.loaded.emit(key)


def image_key(item: PlanImage) -> Key:
    return str(item.record.path), item.record.info.mtime_ns


# Where an image's loss mask is drawn from: ("folder" or "alpha", the file's key), or None.
MaskSource = Callable[[PlanImage], "tuple[str, Key] | None"]


class ThumbnailModel(QAbstractListModel):
    """One row per planned image; the decoration is requested from the loader on demand."""

    def __init__(self, loader: ThumbnailLoader, parent: QObject | None = None,
                 mask_loaders: dict[str, ThumbnailLoader] | None = None) -> None:
        """``mask_loaders``: a loader per mask kind ("folder", "alpha") for set_mask_source."""
        super().__init__(parent)
        self._loader = loader
        self._mask_loaders = mask_loaders or {}
        self._mask_source: MaskSource | None = None
        for mask_loader in self._mask_loaders.values():
            mask_loader.loaded.connect(self._on_mask_loader_loaded)
        self._images: list[PlanImage] = []
        self._rows: dict[Key, list[int]] = {}
        self._composed: OrderedDict[int, tuple[bool, QIcon]] = OrderedDict()
        loader.loaded.connect(self._on_loader_loaded)

    def set_images(self, images: list[PlanImage]) -> None:
        same_rows = [i.record.path for i in images] == [i.record.path for i in self._images]
        if same_rows and images:
            # A re-plan of the same images: update in place so selection and scroll stay.
            self._set(images)
            self.dataChanged.emit(self.index(0), self.index(len(images) - 1))
            return
        self.beginResetModel()
        self._set(images)
        self.endResetModel()

    def _set(self, images: list[PlanImage]) -> None:
        self._images = list(images)
        self._composed.clear()
        self._rows = {}
        for row, item in enumerate(self._images):
            self._rows.setdefault(image_key(item), []).append(row)

    def set_mask_source(self, source: MaskSource | None) -> None:
        """Draw each image's loss mask over it (None: no masks); repaints every row."""
        self._mask_source = source
        self._composed.clear()
        if self._images:
            self.dataChanged.emit(self.index(0), self.index(len(self._images) - 1),
                                  [Qt.ItemDataRole.DecorationRole])

    def _mask(self, item: PlanImage) -> tuple[bool, QImage | None]:
        """(known, overlay) for the item's mask; known with None: no mask to draw."""
        found = self._mask_source(item) if self._mask_source is not None else None
        if found is None or found[0] not in self._mask_loaders:
            return True, None
        loader = self._mask_loaders[found[0]]
        known, overlay = loader.lookup(found[1])
        if not known:
            loader.request(found[1])
        return known, overlay

    def image_at(self, row: int) -> PlanImage | None:
        return self._images[row] if 0 <= row < len(self._images) else None

    def row_of(self, path: str) -> int:
        for row, item in enumerate(self._images):
            if str(item.record.path) == path:
                return row
        return -1

    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: N802 - Qt API
        return 0 if parent.isValid() else len(self._images)

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole):  # noqa: ANN201
        item = self.image_at(index.row()) if index.isValid() else None
        if item is None:
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            w, h = item.bucket
            return f"{w}x{h}"
        if role == Qt.ItemDataRole.DecorationRole:
            return self._decoration(index.row(), item)
        if role == LOADED_ROLE:
            known, image = self._loader.lookup(image_key(item))
            return known and image is not None
        if role == IMAGE_ROLE:
            return item
        if role == Qt.ItemDataRole.ToolTipRole:
            return _tooltip(item)
        return None

    def _decoration(self, row: int, item: PlanImage) -> QIcon:
        cached = self._composed.get(row)
        if cached is not None and cached[0]:
            self._composed.move_to_end(row)
            return cached[1]
        known, image = self._loader.lookup(image_key(item))
        mask_known, mask = self._mask(item)
        if not known:
            self._loader.request(image_key(item))
            if cached is not None:
                return cached[1]
        pixmap = compose_thumbnail(image, item, self._loader.side, broken=known and image is None, mask=mask)
        known = known and mask_known
        icon = QIcon()
        # The same pixmap when selected: Qt's default tints it, which would falsify the colours.
        for mode in (QIcon.Mode.Normal, QIcon.Mode.Selected, QIcon.Mode.Active):
            icon.addPixmap(pixmap, mode)
        self._composed[row] = (known, icon)
        while len(self._composed) > COMPOSED_LIMIT:
            self._composed.popitem(last=False)
        return icon

    def _on_mask_loader_loaded(self, key: Key) -> None:
        # Few rows show at once and a mask may serve any of them: repaint what lacks its mask.
        rows = [row for row, (done, _) in self._composed.items() if not done]
        for row in rows:
            self._composed.pop(row, None)
            index = self.index(row)
            self.dataChanged.emit(index, index, [Qt.ItemDataRole.DecorationRole])

    def _on_loader_loaded(self, key: Key) -> None:
        for row in self._rows.get(key, ()):
            self._composed.pop(row, None)
            index = self.index(row)
            self.dataChanged.emit(index, index, [Qt.ItemDataRole.DecorationRole, LOADED_ROLE])


def _tooltip(item: PlanImage) -> str:
    a, r = item.assignment, item.record
    lines = [r.display_path, f"{r.size[0]}x{r.size[1]} px -> resized {a.resized[0]}x{a.resized[1]}, "
             f"bucket {a.bucket[0]}x{a.bucket[1]}", f"{count(item.repeats, 'repeat')} per epoch"]
    if a.upscaled:
        lines.append("enlarged to fill its bucket (softer when trained)")
    return "\n".join(lines)
