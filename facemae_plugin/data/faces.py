"""Procedural, identity-labelled, face-like 112x112 images (numpy + cv2, deterministic).

Each identity has fixed traits drawn from `(seed, identity)`: head shape, eyes, brows, nose,
mouth, skin tone, hair, marks, glasses, beard. Each image adds nuisance drawn from
`(seed, identity, index)`: pose (rotation, scale, shift, yaw), expression, lighting, colour
cast, background, blur and noise. Faces sit roughly where InsightFace's 5-point template puts them
(eyes at y~52, nose tip y~72, mouth y~92), so the images look like aligned crops.

The layer with the face is drawn in a padded canonical frame, then posed by one affine warp
and composited over the background; lighting and noise act on the composite.

`detail` (0..1) moves identity from coarse to fine structure. At 0 (the default) identities differ
mostly in head geometry and colours, which survive blur and pixelation. Raising it narrows the
spread of those coarse traits and gives each identity freckles and a fine skin texture, features a
few pixels across that a recogniser needs longer training to learn and pixelation removes.
Detail is drawn from its own stream, so detail 0 gives the same bytes as before the knob existed.
"""
from dataclasses import dataclass

import cv2
import numpy as np

from ..core.errors import FaceMAEError

IMAGE_SIZE = 112
_PAD = 16  # canonical canvas margin, so rotation and shifts never expose an undrawn edge
_CANVAS = IMAGE_SIZE + 2 * _PAD
_SHIFT = 4  # cv2 fixed-point bits: coordinates are drawn with 1/16 px precision
_ONE = 1 << _SHIFT
_CX = IMAGE_SIZE / 2 + _PAD  # canonical face centre line, canvas coordinates
_EYE_Y = 52.0 + _PAD
_AA = cv2.LINE_AA

# Stream tags keep the trait and image generators apart: without them the seed
# sequences [seed, identity] and [seed, identity, 0] would give the same stream.
_TRAIT_STREAM = 0x7A1
_IMAGE_STREAM = 0x1A6
_DETAIL_STREAM = 0xDE7
_MAX_COARSE_NARROWING = 0.75  # at detail 1 coarse traits keep a quarter of their spread

_SKIN_TONES = np.array([[196, 214, 246], [150, 180, 225], [110, 145, 195], [70, 100, 145], [45, 65, 100]],
                       dtype=np.float64)  # BGR, light to dark
_HAIR_COLOURS = np.array([[20, 22, 28], [30, 45, 70], [40, 70, 115], [100, 165, 205], [35, 65, 150],
                          [150, 150, 155], [60, 60, 65]], dtype=np.float64)
_IRIS_COLOURS = np.array([[25, 55, 95], [150, 115, 70], [80, 125, 85], [20, 30, 40], [120, 120, 100]],
                         dtype=np.float64)
HAIR_STYLES = ("fringe", "side_part", "widows_peak", "receding", "long", "shaved")
BEARD_STYLES = ("none", "full", "goatee", "moustache")

# Smooth fields (lighting, background) are drawn on a coarse grid in [-1, 1] and upsampled.
_LOWRES = 8
_LOWRES_Y, _LOWRES_X = np.mgrid[-1:1:_LOWRES * 1j, -1:1:_LOWRES * 1j]


class SynthInputError(FaceMAEError):
    """A seed, identity, index or count the generator cannot use."""


@dataclass(frozen=True, eq=False)
class FaceTraits:
    """What stays fixed for one identity (lengths in pixels of the 112x112 frame)."""
    skin: tuple  # BGR
    head_half_width: float
    head_half_height: float
    head_centre_y: float
    jaw_narrowing: float  # 0 = elliptic chin, larger = pointed chin
    eye_spacing: float  # half the distance between eye centres
    eye_half_width: float
    eye_aspect: float  # eye half-height / half-width
    eye_tilt: float  # degrees, outer corners up when positive
    iris: tuple  # BGR
    brow_height: float  # above the eye centre
    brow_arch: float
    brow_thickness: float
    brow_length: float
    brow_tilt: float  # outer end lower when positive
    nose_length: float  # from eye line to nose tip
    nose_half_width: float
    mouth_y: float
    mouth_half_width: float
    lip_thickness: float
    lip: tuple  # BGR
    mouth_curve: float  # resting smile (+) or frown (-)
    hair: tuple  # BGR
    hair_style: str
    hairline_y: float
    hair_volume: float
    ear_size: float
    moles: tuple  # ((across, down, radius), ...): offsets from the head centre in head half-axes
    freckles: tuple  # ((across, down, radius, darkness), ...): like moles, smaller and many
    skin_pattern: np.ndarray  # [C, C, 4] uint8 gain map (scale 1/128) over the canonical canvas
    glasses: bool
    glasses_round: bool
    frame: tuple  # BGR of glasses frame
    beard: str


@dataclass(frozen=True)
class _Variation:
    """What changes from image to image of one identity."""
    angle: float
    scale: float
    shift: tuple
    yaw: float  # -1..1, turns inner features sideways
    mouth_open: float
    smile: float
    brow_raise: float
    eye_open: float
    gaze: tuple


def identity_traits(seed: int, identity: int, detail: float = 0.0) -> FaceTraits:
    """Fixed traits of `identity` under `seed`; the same pair always gives the same face."""
    _check_non_negative(seed=seed, identity=identity)
    check_detail(detail)
    rng = np.random.default_rng([_TRAIT_STREAM, seed, identity])
    u = rng.uniform  # Bernoulli and layout draws, never narrowed
    spread = 1.0 - _MAX_COARSE_NARROWING * detail
    g = _narrowed_uniform(rng, spread)  # coarse traits: geometry and tones
    skin = _palette_colour(_SKIN_TONES, g(0, 1), rng, jitter=10 * spread)
    hair = _toward_mean(_HAIR_COLOURS, _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))] + rng.normal(0, 8, 3), spread)
    head_half_width = g(36, 46)
    traits = dict(
        skin=_bgr(skin), head_half_width=head_half_width, head_half_height=g(52, 62),
        head_centre_y=g(56, 62), jaw_narrowing=g(0.0, 0.35),
        eye_spacing=g(14.5, 20.5), eye_half_width=g(5.0, 8.5), eye_aspect=g(0.3, 0.62),
        eye_tilt=g(-10, 10),
        iris=_bgr(_toward_mean(_IRIS_COLOURS, _IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))] + rng.normal(0, 10, 3),
                               spread)),
        brow_height=g(7, 12), brow_arch=g(0, 4.5), brow_thickness=g(1.5, 4.5), brow_length=g(11, 17),
        brow_tilt=g(-3, 3), nose_length=g(15, 25), nose_half_width=g(5, 10),
        mouth_y=g(87, 97), mouth_half_width=g(10, 17), lip_thickness=g(1.5, 5),
        lip=_bgr(skin * np.array([0.7, 0.65, 0.95]) + rng.normal(0, 8 * spread, 3)), mouth_curve=g(-2, 2.5),
        hair=_bgr(hair), hair_style=HAIR_STYLES[rng.integers(len(HAIR_STYLES))],
        hairline_y=g(14, 30), hair_volume=g(1.0, 1.18), ear_size=g(0.8, 1.3),
        moles=tuple(_mole(rng) for _ in range(rng.integers(0, 4))),
        skin_pattern=(rng.normal(0, 1, (6, 6)), u(0.03, 0.12)),  # coarse grid and its strength
        glasses=bool(u(0, 1) < 0.25), glasses_round=bool(u(0, 1) < 0.5),
        frame=_bgr(rng.uniform(10, 200, 3)),
        beard=BEARD_STYLES[0] if u(0, 1) < 0.65 else BEARD_STYLES[rng.integers(1, len(BEARD_STYLES))],
    )
    freckles, fine_texture = _fine_detail(seed, identity, detail)
    traits["skin_pattern"] = _skin_pattern(*traits["skin_pattern"], fine_texture)
    return FaceTraits(freckles=freckles, **traits)


def render_face(traits: FaceTraits, rng: np.random.Generator) -> np.ndarray:
    """One image of the identity with nuisance drawn from `rng`: uint8 [112, 112, 3], BGR."""
    var = _sample_variation(rng)
    layer = _draw_face_layer(traits, var)  # [C, C, 4] BGRA, canonical frame
    layer = cv2.multiply(layer, traits.skin_pattern, scale=1 / 128)  # identity's fixed skin pattern
    posed = cv2.warpAffine(layer, _pose_matrix(var), (IMAGE_SIZE, IMAGE_SIZE), flags=cv2.INTER_LINEAR)
    face = cv2.multiply(cv2.cvtColor(posed, cv2.COLOR_BGRA2BGR), _face_shading(rng), scale=1 / 64)  # [H, W, 3]
    alpha = posed[:, :, 3].astype(np.float32) * np.float32(1 / 255)  # [H, W]
    image = cv2.blendLinear(_background(rng), face, 1 - alpha, alpha)  # [H, W, 3] uint8
    return _camera(image, rng)


def identity_images(seed: int, identity: int, count: int, detail: float = 0.0) -> list[np.ndarray]:
    """`count` images of one identity; image i depends only on (seed, identity, detail, i)."""
    _check_non_negative(seed=seed, identity=identity, count=count)
    traits = identity_traits(seed, identity, detail)
    return [render_face(traits, image_rng(seed, identity, index)) for index in range(count)]


def face_landmarks(traits: FaceTraits) -> np.ndarray:
    """Neutral-pose five points in InsightFace order (eyes, nose tip, mouth corners): [5, 2] (x, y)."""
    mouth_y = traits.mouth_y - traits.mouth_curve  # the lip line rises by mouth_curve at the corners
    points = [(_CX - traits.eye_spacing, _EYE_Y), (_CX + traits.eye_spacing, _EYE_Y),
              (_CX, _EYE_Y + traits.nose_length),
              (_CX - traits.mouth_half_width, mouth_y + _PAD), (_CX + traits.mouth_half_width, mouth_y + _PAD)]
    return np.array(points) - _PAD


def image_rng(seed: int, identity: int, index: int) -> np.random.Generator:
    """The generator that draws the nuisance of image `index` of `identity`."""
    return np.random.default_rng([_IMAGE_STREAM, seed, identity, index])


# ---------------------------------------------------------------- per-image variation

def _sample_variation(rng):
    u = rng.uniform
    blink = u(0, 1) < 0.1
    return _Variation(
        angle=u(-10, 10), scale=u(0.9, 1.1), shift=(u(-5, 5), u(-5, 5)), yaw=u(-1, 1),
        mouth_open=max(0.0, u(-0.6, 1.0)), smile=u(-0.8, 1.5), brow_raise=u(-1.5, 3.5),
        eye_open=u(0.0, 0.15) if blink else u(0.65, 1.15), gaze=(u(-0.3, 0.3), u(-0.2, 0.2)))


def _pose_matrix(var):
    """Affine map from the padded canonical canvas to the output image: rotate, scale, shift."""
    centre = (_CX, _EYE_Y + 10)
    matrix = cv2.getRotationMatrix2D(centre, var.angle, var.scale)  # [2, 3]
    matrix[:, 2] += (var.shift[0] - _PAD, var.shift[1] - _PAD)
    return matrix


def _face_shading(rng):
    """Directional light: 64 * (1 + strength * ramp) as a uint8 [H, W, 3] gain map (scale 1/64)."""
    direction = rng.uniform(0, 2 * np.pi)
    strength = rng.uniform(0.0, 0.55)
    shade = 64 * (1 + strength * _lowres_ramp(direction))  # [G, G]
    return _upsample(np.repeat(shade[:, :, None], 3, axis=2))


def _background(rng):
    """Two-colour gradient plus low-frequency blotches: uint8 [H, W, 3]."""
    base = rng.uniform(20, 235) + rng.normal(0, rng.uniform(5, 45), 3)  # [3] grey level plus a tint
    other = base + rng.normal(0, 40, 3)
    ramp = 0.5 + 0.5 * _lowres_ramp(rng.uniform(0, 2 * np.pi))[:, :, None]  # [G, G, 1]
    blotches = rng.normal(0, rng.uniform(0, 25), (_LOWRES, _LOWRES, 3))
    return _upsample(base + ramp * (other - base) + blotches)


def _camera(image, rng):
    """Exposure and colour cast, optional blur, brightness offset and sensor noise: uint8 BGR."""
    gain = rng.uniform(0.65, 1.3) * rng.uniform(0.85, 1.15, 3)  # [3] exposure x colour cast
    image = cv2.multiply(image, (*gain.tolist(), 0.0))
    if rng.uniform(0, 1) < 0.4:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.5, 1.3))
    # Uniform noise from raw bytes: far cheaper than Gaussian draws, same role.
    noise = np.frombuffer(rng.bytes(image.size), dtype=np.uint8).reshape(image.shape)
    weight = rng.uniform(2, 10) * np.sqrt(3) / 127.5  # noise std 2..10 grey levels
    offset = rng.uniform(-20, 20)
    return cv2.addWeighted(image, 1.0, noise, weight, offset - 127.5 * weight)


def _lowres_ramp(direction):
    """Linear ramp in [-1, 1] along `direction` on the coarse grid: [G, G]."""
    return np.cos(direction) * _LOWRES_X + np.sin(direction) * _LOWRES_Y


def _upsample(coarse):
    """Coarse [G, G, 3] field -> uint8 [H, W, 3], bilinear (cheap, and the fields are smooth)."""
    coarse = np.clip(coarse, 0, 255).astype(np.uint8)
    return cv2.resize(coarse, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_LINEAR)


# ---------------------------------------------------------------- the face layer

def _draw_face_layer(t, var):
    """BGRA drawing of hair, head, ears and features in the canonical frame: [C, C, 4] uint8."""
    layer = np.zeros((_CANVAS, _CANVAS, 4), dtype=np.uint8)
    outline = _head_outline(t, var.yaw)  # [K, 2]
    if t.hair_style == "long":
        _fill_ellipse(layer, (_CX, t.head_centre_y + _PAD + 8), (t.head_half_width * 1.2, t.head_half_height + 6),
                      _dim(t.hair, 0.85))
    _draw_neck(layer, t)
    _draw_ears(layer, t, var.yaw)
    cv2.fillPoly(layer, [_fixed(outline)], _rgba(t.skin), _AA, _SHIFT)
    _draw_beard(layer, t, outline)
    _draw_hair(layer, t, var.yaw)
    for side in (-1, 1):
        _draw_eye(layer, t, var, side)
        _draw_brow(layer, t, var, side)
    _draw_nose(layer, t, var.yaw)
    _draw_mouth(layer, t, var)
    _draw_spots(layer, t, t.moles, var.yaw, darkness=0.5)
    _draw_spots(layer, t, t.freckles, var.yaw)  # each freckle carries its own darkness
    if t.glasses:
        _draw_glasses(layer, t, var.yaw)
    return layer


def _head_outline(t, yaw):
    """Head polygon: an ellipse whose lower half narrows toward the chin; yaw narrows and shifts it."""
    angle = np.linspace(0, 2 * np.pi, 48, endpoint=False)
    narrowing = 1 - t.jaw_narrowing * np.clip(np.sin(angle), 0, None) ** 2
    x = _CX + yaw * 2 + t.head_half_width * (1 - 0.06 * abs(yaw)) * np.cos(angle) * narrowing
    y = t.head_centre_y + _PAD + t.head_half_height * np.sin(angle)
    return np.stack([x, y], axis=1)


def _feature_x(offset, yaw, depth=1.0):
    """x of a feature `offset` from the centre line; nearer features (depth > 1) move more with yaw."""
    return _CX + offset * (1 - 0.08 * abs(yaw)) + yaw * 4 * depth


def _draw_neck(layer, t):
    top = t.head_centre_y + _PAD + t.head_half_height * 0.5
    half = t.head_half_width * 0.55
    pts = np.array([[_CX - half, top], [_CX + half, top], [_CX + half * 1.1, _CANVAS], [_CX - half * 1.1, _CANVAS]])
    cv2.fillPoly(layer, [_fixed(pts)], _rgba(_dim(t.skin, 0.8)), _AA, _SHIFT)


def _draw_ears(layer, t, yaw):
    for side in (-1, 1):
        x = _CX + yaw * 2 + side * t.head_half_width * (0.96 - 0.06 * side * yaw)
        _fill_ellipse(layer, (x, _EYE_Y + 8), (4.5 * t.ear_size, 10 * t.ear_size), _dim(t.skin, 0.88))


def _hairline(t, x):
    """y of the hairline at canvas x, by style; lower y is higher on the head."""
    rel = (x - _CX) / (t.head_half_width * t.hair_volume)  # -1..1 across the head
    base = t.hairline_y + _PAD + (_EYE_Y - 6 - t.hairline_y - _PAD) * rel ** 4
    if t.hair_style == "side_part":
        return base + 5 * rel
    if t.hair_style == "widows_peak":
        return base + 6 * np.clip(1 - abs(rel) * 4, 0, None)
    if t.hair_style == "receding":
        return base - 9 * np.sin(np.pi * abs(rel)) ** 2
    return base


def _draw_hair(layer, t, yaw):
    half_w = t.head_half_width * t.hair_volume
    centre_y = t.head_centre_y + _PAD - t.head_half_height * 0.05
    half_h = t.head_half_height * t.hair_volume
    angle = np.linspace(np.pi, 2 * np.pi, 24)  # upper arc, left to right
    cx = _CX + yaw * 2
    outer = np.stack([cx + half_w * np.cos(angle), centre_y + half_h * np.sin(angle)], axis=1)
    xs = np.linspace(cx + half_w, cx - half_w, 24)  # hairline, right to left
    inner = np.stack([xs, _hairline(t, xs - yaw * 2)], axis=1)
    colour = t.hair if t.hair_style != "shaved" else _mix(t.hair, t.skin, 0.6)
    cv2.fillPoly(layer, [_fixed(np.concatenate([outer, inner]))], _rgba(colour), _AA, _SHIFT)
    if t.hair_style == "long":  # side locks over the cheeks
        for side in (-1, 1):
            x0 = cx + side * half_w
            pts = np.array([[x0, _EYE_Y - 10], [x0 - side * 7, _EYE_Y - 4], [x0 - side * 5, _EYE_Y + 40],
                            [x0 + side * 2, _EYE_Y + 46]])
            cv2.fillPoly(layer, [_fixed(pts)], _rgba(t.hair), _AA, _SHIFT)


def _draw_beard(layer, t, outline):
    if t.beard == "none":
        return
    colour = _rgba(_mix(t.hair, t.skin, 0.25))
    mouth_y = t.mouth_y + _PAD
    if t.beard == "full":  # jaw band and chin: the head's lower arc, closed above the mouth
        jaw = outline[outline[:, 1] > _EYE_Y + 10]
        inner_x = t.head_half_width * 0.72
        inner = np.array([[_CX - inner_x, _EYE_Y + 16], [_CX - t.mouth_half_width - 3, mouth_y - 7],
                          [_CX + t.mouth_half_width + 3, mouth_y - 7], [_CX + inner_x, _EYE_Y + 16]])
        cv2.fillPoly(layer, [_fixed(np.concatenate([jaw, inner]))], colour, _AA, _SHIFT)
    elif t.beard == "goatee":
        _fill_ellipse(layer, (_CX, mouth_y + 13), (t.mouth_half_width * 0.7, 9), colour[:3])
    cv2.ellipse(layer, _fixed_pt(_CX, mouth_y - 5), _fixed_pt(t.mouth_half_width * 1.05, 4), 0, 180, 360,
                colour, -1, _AA, _SHIFT)  # moustache, part of every beard style


def _draw_eye(layer, t, var, side):
    x = _feature_x(side * t.eye_spacing, var.yaw)
    half_h = max(t.eye_half_width * t.eye_aspect * var.eye_open, 0.4)
    tilt = -side * t.eye_tilt
    if var.eye_open < 0.2:  # closed: just the lid line
        cv2.ellipse(layer, _fixed_pt(x, _EYE_Y), _fixed_pt(t.eye_half_width, half_h + 1), tilt, 0, 180,
                    _rgba((30, 30, 40)), 1, _AA, _SHIFT)
        return
    _fill_ellipse(layer, (x, _EYE_Y), (t.eye_half_width, half_h), (225, 230, 235), tilt)
    iris_r = t.eye_half_width * 0.5
    iris_x = x + var.gaze[0] * t.eye_half_width
    iris_y = _EYE_Y + var.gaze[1] * half_h
    _fill_ellipse(layer, (iris_x, iris_y), (iris_r, min(iris_r, half_h)), t.iris)
    _fill_ellipse(layer, (iris_x, iris_y), (iris_r * 0.45, min(iris_r * 0.45, half_h)), (10, 10, 10))
    cv2.ellipse(layer, _fixed_pt(x, _EYE_Y), _fixed_pt(t.eye_half_width, half_h), tilt, 180, 360,
                _rgba((25, 25, 35)), 1, _AA, _SHIFT)  # upper lash line


def _draw_brow(layer, t, var, side):
    u = np.linspace(0, 1, 7)  # inner end to outer end
    x = _feature_x(side * (t.eye_spacing - t.brow_length * 0.4 + u * t.brow_length), var.yaw)
    y = _EYE_Y - t.brow_height - var.brow_raise - t.brow_arch * np.sin(np.pi * u) + t.brow_tilt * u
    colour = _rgba(_dim(t.hair, 0.7))
    cv2.polylines(layer, [_fixed(np.stack([x, y], axis=1))], False, colour,
                  max(1, int(round(t.brow_thickness))), _AA, _SHIFT)


def _draw_nose(layer, t, yaw):
    tip_y = _EYE_Y + t.nose_length
    tip_x = _feature_x(0, yaw, depth=1.8)
    shade = _rgba(_dim(t.skin, 0.78))
    bridge = np.array([[_feature_x(-2, yaw, 1.2), _EYE_Y + 3], [tip_x - 3, tip_y - 3]])  # shadow on one side
    cv2.polylines(layer, [_fixed(bridge)], False, shade, 2, _AA, _SHIFT)
    cv2.ellipse(layer, _fixed_pt(tip_x, tip_y - 2), _fixed_pt(t.nose_half_width, 4), 0, 10, 170,
                shade, 2, _AA, _SHIFT)  # base of the nose
    for side in (-1, 1):
        _fill_ellipse(layer, (tip_x + side * t.nose_half_width * 0.5, tip_y), (2.2, 1.3), _dim(t.skin, 0.45))


def _draw_mouth(layer, t, var):
    u = np.linspace(-1, 1, 11)
    half_w = t.mouth_half_width * (1 + 0.12 * var.smile)
    x = _feature_x(u * half_w, var.yaw, depth=1.3)
    lift = (t.mouth_curve + 2.5 * var.smile) * u ** 2  # corners rise with a smile
    line = t.mouth_y + _PAD - lift  # [11] where the lips meet
    bulge = np.sqrt(1 - u ** 2)
    gap = var.mouth_open * 7 * bulge
    upper = _band(x, line - gap / 2 - t.lip_thickness * bulge, line - gap / 2)
    lower = _band(x, line + gap / 2, line + gap / 2 + 1.3 * t.lip_thickness * bulge)
    if var.mouth_open > 0.05:
        cv2.fillPoly(layer, [_fixed(_band(x, line - gap / 2, line + gap / 2))], _rgba((35, 30, 60)), _AA, _SHIFT)
    cv2.fillPoly(layer, [_fixed(upper)], _rgba(_dim(t.lip, 0.9)), _AA, _SHIFT)
    cv2.fillPoly(layer, [_fixed(lower)], _rgba(t.lip), _AA, _SHIFT)


def _band(x, top, bottom):
    """Polygon between two curves sampled at the same x: [2K, 2]."""
    return np.concatenate([np.stack([x, top], axis=1), np.stack([x, bottom], axis=1)[::-1]])


def _draw_spots(layer, t, spots, yaw, darkness=None):
    """Moles or freckles: dark discs at (across, down) offsets in head half-axes, moving with yaw."""
    for across, down, radius, *own_darkness in spots:
        x = _feature_x(across * t.head_half_width, yaw)
        y = t.head_centre_y + _PAD + down * t.head_half_height
        _fill_ellipse(layer, (x, y), (radius, radius), _dim(t.skin, own_darkness[0] if darkness is None else darkness))


def _draw_glasses(layer, t, yaw):
    colour = _rgba(t.frame)
    size = t.eye_half_width + 5
    centres = [(_feature_x(side * t.eye_spacing, yaw, 1.4), _EYE_Y + 1) for side in (-1, 1)]
    for x, y in centres:
        if t.glasses_round:
            cv2.ellipse(layer, _fixed_pt(x, y), _fixed_pt(size, size * 0.8), 0, 0, 360, colour, 2, _AA, _SHIFT)
        else:
            box = np.array([[x - size, y - size * 0.7], [x + size, y - size * 0.7], [x + size, y + size * 0.7],
                            [x - size, y + size * 0.7]])
            cv2.polylines(layer, [_fixed(box)], True, colour, 2, _AA, _SHIFT)
    bridge = np.array([[centres[0][0] + size, centres[0][1] - 2], [centres[1][0] - size, centres[1][1] - 2]])
    cv2.polylines(layer, [_fixed(bridge)], False, colour, 2, _AA, _SHIFT)


def _skin_pattern(coarse, strength, fine=None):
    """Multiplicative skin pattern over the canvas, as uint8 gains at scale 1/128.

    `coarse` ([6, 6], scaled by `strength`) and `fine` ([F, F]) are gain deviations on small grids,
    upsampled to the canvas.
    """
    deviation = strength * _to_canvas(coarse)
    if fine is not None:
        deviation = deviation + _to_canvas(fine)
    gains = np.empty((_CANVAS, _CANVAS, 4), dtype=np.uint8)
    gains[:, :, :3] = np.clip(128 * (1 + deviation), 0, 255).astype(np.uint8)[:, :, None]
    gains[:, :, 3] = 128  # alpha passes through unchanged
    return gains


def _to_canvas(grid):
    return cv2.resize(grid.astype(np.float32), (_CANVAS, _CANVAS), interpolation=cv2.INTER_CUBIC)


def _fine_detail(seed, identity, detail):
    """Freckles and a fine texture grid ([36, 36], ~4 px cells) for `detail` > 0, else ((), None)."""
    if detail == 0:
        return (), None
    rng = np.random.default_rng([_DETAIL_STREAM, seed, identity])
    count = int(round(detail * rng.uniform(20, 45)))
    freckles = tuple((*_mole(rng)[:2], rng.uniform(0.6, 1.2), rng.uniform(0.45, 0.75)) for _ in range(count))
    texture = rng.normal(0, 1, (36, 36)) * (0.09 * detail)
    return freckles, texture


# ---------------------------------------------------------------- small helpers

def _fill_ellipse(layer, centre, axes, colour, angle=0.0):
    cv2.ellipse(layer, _fixed_pt(*centre), _fixed_pt(*axes), angle, 0, 360, _rgba(colour), -1, _AA, _SHIFT)


def _fixed(points):
    """Float points [K, 2] -> int32 fixed-point points for cv2 drawing with `_SHIFT`."""
    return np.round(np.asarray(points) * _ONE).astype(np.int32)


def _fixed_pt(x, y):
    return int(round(x * _ONE)), int(round(y * _ONE))


def _rgba(colour):
    return (float(colour[0]), float(colour[1]), float(colour[2]), 255.0)


def _bgr(values):
    return tuple(float(v) for v in np.clip(values, 0, 255))


def _dim(colour, factor):
    return tuple(c * factor for c in colour)


def _mix(a, b, weight_b):
    return tuple(x * (1 - weight_b) + y * weight_b for x, y in zip(a, b))


def _palette_colour(palette, position, rng, jitter):
    """Linear interpolation along a palette at `position` in [0, 1], plus colour jitter."""
    scaled = position * (len(palette) - 1)
    low = min(int(scaled), len(palette) - 2)
    frac = scaled - low
    return palette[low] * (1 - frac) + palette[low + 1] * frac + rng.normal(0, jitter, 3)


def _mole(rng):
    """A mark somewhere inside the inner 70% of the head ellipse: (across, down, radius)."""
    angle, reach = rng.uniform(0, 2 * np.pi), 0.7 * np.sqrt(rng.uniform(0, 1))
    return reach * np.cos(angle), reach * np.sin(angle), rng.uniform(0.8, 2.0)


def _narrowed_uniform(rng, spread):
    """uniform(low, high) drawn from `rng`, pulled toward the midpoint by `spread` (same draws)."""
    def draw(low, high):
        value = rng.uniform(low, high)
        if spread == 1.0:
            return value  # exactly the un-narrowed draw, so detail 0 keeps its bytes
        middle = (low + high) / 2
        return middle + (value - middle) * spread
    return draw


def _toward_mean(palette, colour, spread):
    if spread == 1.0:
        return colour
    mean = palette.mean(axis=0)
    return mean + (colour - mean) * spread


def check_detail(detail):
    """Raise SynthInputError unless `detail` is a number in [0, 1]."""
    if not isinstance(detail, (int, float, np.floating)) or isinstance(detail, bool) or not 0 <= detail <= 1:
        raise SynthInputError(f"detail must be a number in [0, 1], got {detail!r}")


def _check_non_negative(**values):
    for name, value in values.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise SynthInputError(f"{name} must be a non-negative integer, got {value!r}")
