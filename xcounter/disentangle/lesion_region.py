"""Where the lesion is in a dermoscopy scan, so an artifact edit can be kept off it.

Why: the skin generator's text directions for artifacts are entangled with the lesion. Asked to add an
ink marking, it drew a ring hugging the lesion's border and, with it, variegation, a veil and a deformed
border; the clean Melanoma classifier then "flipped on ink" on most scans, although the renderer's own ink
toggle flips it on 5%. An artifact (ink, hair, gel bubbles) lies on the skin around the lesion or over it;
what a clinician needs to know is whether the *artifact* moves the decision, which is asked cleanly only
when the lesion itself is kept as it is. So these edits may act only outside the lesion.

The lesion is found the way dermoscopy pipelines did before trained segmenters, with no weights to ship:
a median filter wipes out thin strokes (hair, ink, bubble rims; DullRazor's idea), though it blends an ink
stroke running along the lesion's edge into the lesion, so thin ink-coloured strokes are cut out; the lesion is
what differs in colour (CIELAB distance) from the skin, read as the median of the brighter half of the image
(neither lesion nor dark corners); an opening cuts the thin bridges hair and ink make to the frame;
components touching the frame are dropped (dark corners, rulers and colour charts lie there, a centred
lesion does not); the component nearest the centre is kept, holes filled (a blue-white veil is inside the
lesion). On 80 skin phantoms of every type, with every artifact, its IoU with the renderer's lesion is 0.82
on average. When a thick hair still joins the lesion to the frame, wider openings are tried (on 300 phantoms:
no lesion found on 2 instead of 4, mean IoU 0.795 -> 0.800).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

#: the median filter's width, as a fraction of the image side: wider than a hair or an ink stroke, far
#: narrower than the smallest lesion
STROKE_FILTER = 0.07
#: CIELAB distance from the skin above which a pixel is lesion (20 is a clearly visible difference; at 15 the
#: shading towards dark corners joined the lesion to the frame and no lesion was found on 5 of 80 phantoms)
COLOUR_DISTANCE = 20.0
#: a pixel is surgical ink (gentian violet) where it is magenta-purple: CIELAB a* above INK_A and b* below INK_B.
#: Skin and lesions are red-brown (b* > 10), a blue-white veil grey-blue (a* < 10): neither reads as ink. Why: an
#: ink arc hugging the lesion is blended into it by the stroke filter, so the lesion took in the arc, its cells
#: were frozen for an "off_lesion" edit, and the ink could not be removed (on 300 skin phantoms, mean IoU with
#: the renderer's lesion 0.800 -> 0.806; on the 81 with ink 0.765 -> 0.785)
INK_A, INK_B = 15.0, 0.0
#: when every candidate touches the frame, openings this many times wider are tried in turn: a thick hair or an
#: ink stroke crossing a hair can join the lesion to the frame through a bridge the first opening leaves
BRIDGE_OPENINGS = 3
#: a component is a lesion only if it covers between these fractions of the image
MIN_AREA, MAX_AREA = 0.005, 0.85
#: how far past the lesion's edge a "clear_of_lesion" edit is kept, as a fraction of the image side. The
#: generator draws hair and gel bubbles near a lesion as dark blobs hugging its rim, which the clean classifier
#: (and the oracle) read as dots and globules. The clean classifier's hair / gel-bubble flags on 20
#: faithfulness scans: 8 / 8 with no margin, 4 / 6 at 0.06, 2 / 1 at 0.12; the rho-1.0 shortcuts unchanged.
#: Ink keeps the tight prior: its arc lies 1.35 radii out, and a margin froze where the generator draws it.
LESION_MARGIN = 0.12
#: a latent cell counts as lesion when at least this share of its pixels are lesion (0.25 also froze the
#: cells an ink arc 1.35 radii out is drawn in: the rho-1.0 ink shortcut was flagged on 0.55 of scans, not 0.65)
CELL_SHARE = 0.5
#: how far past the lesion's edge an "on_lesion" edit (a finding inside the lesion) may reach, as a fraction of
#: the image side: the lesion finder's edge is soft and the blend seam must fall outside what is redrawn
ON_LESION_MARGIN = 0.04
#: how far inside the lesion's edge an "in_lesion" edit (a veil, variegation) stops, as a fraction of the image
#: side: the rim and so the lesion's outline stay the scan's. Veil additions on the 20 skin quality scans, the
#: oracle seeing the veil and every other attribute kept: 13 cut to the latent cells alone, 13 cut at the
#: lesion's edge grown by 0.04, 17 at 0.03 inside it, 14 at 0.06 inside (the veil no longer drawn on 2)
IN_LESION_INSET = 0.03
#: the blur (pixels, Gaussian sigma) of an "in_lesion" edit's pixel mask edge, so the cut leaves no seam
IN_LESION_FEATHER = 0.75
#: a "beside_lesion" addition (a surgical ink marking) is drawn in one sector of the skin around the lesion: this
#: wide (degrees), between these distances from its centre (in lesion radii, the radius of the disc of its area)
BESIDE_SECTOR_DEGREES = 135.0
BESIDE_RING = (0.9, 1.9)
#: a lesion whose centre lies within this fraction of the image side of the image's centre faces up (its sector
#: is drawn above it); any other faces the image's centre, where the skin around it is widest
CENTRED = 0.05
#: parts of the lesion found this close to the part nearest the centre (a fraction of the image side) are joined
#: to it, and the seam between them closed. Why: a variegated lesion's tan part on dark skin is split from its dark
#: part by a seam whose colour, blurred by the stroke filter, is the skin's; the finder kept the tan part alone, so
#: a veil was drawn into it and an ink arc over the dark part. On 300 skin phantoms 6 lesions change, all for the
#: better (mean IoU 0.810 -> 0.814, variegated ones 0.701 -> 0.716); at 0.1 more change and 21 get worse
JOIN_GAP = 0.05


def ink_pixels(image: np.ndarray) -> np.ndarray:
    """[H, W] bool: the pixels of an H x W x 3 image in [0, 1] coloured like surgical ink (`INK_A`, `INK_B`)."""
    from skimage.color import rgb2lab
    lab = rgb2lab(np.clip(image, 0, 1))
    return (lab[..., 1] > INK_A) & (lab[..., 2] < INK_B)


def ink_strokes(image: np.ndarray, width: int) -> np.ndarray:
    """[H, W] bool: the ink-coloured pixels (`ink_pixels`) of strokes thinner than `width` pixels. Why thin only: a
    violaceous lesion (an angioma, a bruise) is ink-coloured too, but a blob an opening of that width keeps."""
    from scipy import ndimage
    from skimage.morphology import disk

    ink = ink_pixels(image)
    return ink & ~ndimage.binary_opening(ink, structure=disk(max(1, width // 2)).astype(bool))


def lesion_mask(image: np.ndarray) -> np.ndarray | None:
    """[H, W] bool: the lesion of an H x W x C dermoscopy image in [0, 1]; None when none stands out."""
    from scipy import ndimage
    from skimage.color import rgb2lab
    from skimage.morphology import disk

    image = np.clip(np.asarray(image, dtype=np.float32), 0, 1)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[-1] != 3:  # a grey scan: its lightness only
        image = np.repeat(image.mean(axis=-1, keepdims=True), 3, axis=2)
    width = max(3, int(round(STROKE_FILTER * max(image.shape[:2]))) | 1)
    filtered = ndimage.median_filter(image, size=(width, width, 1))
    lab = rgb2lab(filtered)
    pixels = lab.reshape(-1, 3)
    brighter_half = pixels[pixels[:, 0] >= np.median(pixels[:, 0])]  # neither lesion nor dark corners
    skin = np.median(brighter_half, axis=0)
    distance = np.linalg.norm(lab - skin, axis=-1)
    different = distance > COLOUR_DISTANCE
    different &= ~ndimage.binary_dilation(ink_strokes(image, width), iterations=1)  # strokes the filter blended in
    h, w = image.shape[:2]
    base = max(1, width // 2)
    for radius in range(base, BRIDGE_OPENINGS * base + 1, base):
        labels, _ = ndimage.label(ndimage.binary_opening(different, structure=disk(radius).astype(bool)))
        edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        labels[np.isin(labels, edge)] = 0  # dark corners, rulers and colour charts touch the frame; a lesion does not
        if labels.any():
            break
    else:
        return None
    rows, cols = np.nonzero(labels)
    nearest = np.argmin((rows + 0.5 - h / 2) ** 2 + (cols + 0.5 - w / 2) ** 2)
    mask = labels == labels[rows[nearest], cols[nearest]]
    mask = _join_split_parts(mask, labels, lab, skin, max(1, int(round(JOIN_GAP * max(h, w)))))
    if radius > base:  # give back the rim the wider opening shaved off (and a stub of the bridge it cut)
        mask = ndimage.binary_dilation(mask, structure=disk(radius - base).astype(bool)) & different
    mask = ndimage.binary_fill_holes(mask)
    area = float(mask.mean())
    return mask if MIN_AREA <= area <= MAX_AREA else None


def _join_split_parts(mask: np.ndarray, labels: np.ndarray, lab: np.ndarray, skin: np.ndarray,
                      gap: int) -> np.ndarray:
    """`mask` (the lesion part chosen) with the other labelled parts within `gap` pixels of it, and the seams
    between them closed (`JOIN_GAP`). A part brighter and greyer than the skin is left out: a gel bubble's rim or
    a glare stands out from the skin too, and lies beside lesions, but no lesion is whiter than its skin."""
    from scipy import ndimage
    from skimage.morphology import disk

    ball = disk(gap).astype(bool)
    near = np.unique(labels[ndimage.binary_dilation(mask, structure=ball) & (labels > 0)])
    chroma = np.hypot(lab[..., 1], lab[..., 2])
    skin_chroma = float(np.hypot(skin[1], skin[2]))
    joined = mask | np.isin(labels, [k for k in near if not (np.median(lab[labels == k, 0]) > skin[0]
                                                             and np.median(chroma[labels == k]) < skin_chroma)])
    if not (joined & ~mask).any():
        return mask
    return ndimage.binary_closing(joined, structure=ball) | joined


def _grown_lesion(image: torch.Tensor | np.ndarray, margin: float) -> np.ndarray | None:
    """[H, W] bool: the lesion of `image` ([1, C, H, W] tensor or H x W x C array) grown by `margin` (a fraction
    of the image side; shrunk when negative); None when no lesion is found."""
    if isinstance(image, torch.Tensor):
        array = image.detach().float().cpu()
        array = (array[0] if array.dim() == 4 else array).permute(1, 2, 0).numpy()
    else:
        array = np.asarray(image, dtype=np.float32)
    mask = lesion_mask(array)
    if mask is None or margin == 0:
        return mask
    from scipy import ndimage
    from skimage.morphology import disk
    radius = max(1, int(round(abs(margin) * max(mask.shape))))
    if margin < 0:  # shrunk: an erosion that would empty the lesion keeps it whole
        inner = ndimage.binary_erosion(mask, structure=disk(radius).astype(bool))
        return inner if inner.any() else mask
    return ndimage.binary_dilation(mask, structure=disk(radius).astype(bool))


def _cell_share(mask: np.ndarray, shape: Sequence[int]) -> torch.Tensor:
    """[1, 1, h, w]: the share of each latent cell's pixels that `mask` covers."""
    return F.adaptive_avg_pool2d(torch.from_numpy(mask.astype(np.float32))[None, None],
                                 (int(shape[-2]), int(shape[-1])))


def outside_lesion_region(image: torch.Tensor | np.ndarray, shape: Sequence[int],
                          margin: float = 0.0) -> torch.Tensor | None:
    """[1, 1, h, w] in {0, 1}: the latent cells off the lesion of `image` ([1, C, H, W] tensor or H x W x C
    array), the lesion grown by `margin` (a fraction of the image side); None (anywhere) when no lesion is
    found, so an edit is never silently emptied."""
    mask = _grown_lesion(image, margin)
    return None if mask is None else (_cell_share(mask, shape) < CELL_SHARE).float()


def lesion_region(image: torch.Tensor | np.ndarray, shape: Sequence[int],
                  margin: float = ON_LESION_MARGIN) -> torch.Tensor | None:
    """[1, 1, h, w] in {0, 1}: every latent cell the lesion of `image`, grown by `margin`, reaches into; None
    (anywhere) when no lesion is found. The cells an edit *inside* the lesion (a veil, dots) may act in."""
    mask = _grown_lesion(image, margin)
    return None if mask is None else (_cell_share(mask, shape) > 0).float()


def lesion_pixels(image: torch.Tensor | np.ndarray, inset: float = IN_LESION_INSET,
                  feather: float = IN_LESION_FEATHER) -> torch.Tensor | None:
    """[1, 1, H, W] in [0, 1]: the lesion of `image` shrunk by `inset` (a fraction of the image side; a lesion too
    small to shrink is kept whole), its edge blurred by `feather` pixels; None when no lesion is found. What an
    edit inside the lesion may change, pixel by pixel.

    Why: `lesion_region` confines such an edit in latent cells (4 x 4 pixels on the phantoms), grown past the
    lesion's edge, and the generator drew a veil as a pale cap over the lesion's rim: the oracle read a larger
    lesion, or a smoother border, or ink where the cap spilt onto the skin. A veil and variegation lie inside the
    lesion; outside its shrunk mask the edit keeps the unedited image, rim included.
    """
    mask = _grown_lesion(image, -inset)
    if mask is None:
        return None
    soft = mask.astype(np.float32)
    if feather > 0:
        from scipy import ndimage
        soft = np.maximum(soft, ndimage.gaussian_filter(soft, feather))
    return torch.from_numpy(np.clip(soft, 0, 1))[None, None]


def beside_lesion_pixels(image: torch.Tensor | np.ndarray, degrees: float = BESIDE_SECTOR_DEGREES,
                         ring: tuple[float, float] = BESIDE_RING,
                         feather: float = IN_LESION_FEATHER) -> torch.Tensor | None:
    """[1, 1, H, W] in [0, 1]: one sector of the skin beside the lesion of `image`, facing the image's centre
    (`CENTRED`), the lesion itself left out, its edge blurred by `feather` pixels; None when no lesion is found.
    Where an ink marking is *added*.

    Why: a surgeon marks one side of a lesion with a short arc. Asked for "ink marking" anywhere off the lesion,
    the skin generator drew the average of all those arcs, a closed ring hugging the rim: on the audit scans of
    the rho-0.75 ink classifier the minimal flipping addition held 92-260 ink pixels where the renderer's arc
    holds 25-76, and the classifier moved 2-4 logits for the ring but 0.5-1.6 for an arc. The audit then
    alerted on 43% of that classifier's scans, though an arc flips 3% of them.
    """
    mask = _grown_lesion(image, 0.0)
    if mask is None:
        return None
    h, w = mask.shape
    rows, cols = np.nonzero(mask)
    centre_y, centre_x = rows.mean() + 0.5, cols.mean() + 0.5
    radius = float(np.sqrt(mask.sum() / np.pi))
    toward_y, toward_x = h / 2 - centre_y, w / 2 - centre_x
    if np.hypot(toward_y, toward_x) < CENTRED * max(h, w):
        toward_y, toward_x = -1.0, 0.0
    facing = np.arctan2(toward_y, toward_x)
    y, x = np.mgrid[0:h, 0:w] + 0.5
    distance = np.hypot(y - centre_y, x - centre_x)
    off_axis = np.abs((np.arctan2(y - centre_y, x - centre_x) - facing + np.pi) % (2 * np.pi) - np.pi)
    from scipy import ndimage
    lesion = ndimage.binary_dilation(mask, iterations=1)  # the finder's edge is soft: its rim pixel stays the scan's
    sector = (off_axis <= np.radians(degrees) / 2) & (distance >= ring[0] * radius) \
        & (distance <= ring[1] * radius) & ~lesion
    soft = sector.astype(np.float32)
    if feather > 0:
        soft = np.maximum(soft, ndimage.gaussian_filter(soft, feather)) * ~lesion
    return torch.from_numpy(np.clip(soft, 0, 1))[None, None]
