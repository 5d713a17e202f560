"""Rendering of one synthetic LGG patient: MNI152 anatomy, synthetic lesions (for the demo dataset).

The anatomy is the MNI152 2009 template (T1 plus grey/white-matter maps) bundled in nilearn's
wheel; nothing is downloaded. Per patient, the whole volume is rendered once and cut into axial
slices: a random head pose, scale and slice coverage; three MR contrasts derived from the template
with jittered intensity mappings; a synthetic scalp/skull shell; one or two irregular,
white-matter-seeking lesions with mild mass effect (bright in FLAIR, darker in T1); a smooth bias
field and Rician noise. The mask is exactly the region where the lesion is painted.
"""

import functools
import importlib.util
import os
from typing import Dict, List, NamedTuple, Optional, Tuple

import numpy as np
from scipy import ndimage

__all__ = ["render_patient", "load_template", "MNITemplate", "IMAGE_SIZE"]

IMAGE_SIZE = 256
_TEMPLATE_FILE = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
_DIST_STEP_MM = 2.0  # the hull distance map is computed on a 2 mm grid (EDT at 1 mm is slow)
_DIST_OUTSIDE_MM = 40.0  # distance reported outside the template volume
_HEAD_MARGIN_MM = 20.0  # voxels farther than this outside the brain hull are air


class MNITemplate(NamedTuple):
    """The MNI152 2009 template prepared for sampling.

    Volumes are stored (z, y, x) so that consecutive pixels of an axial row are close in memory;
    voxel (z, y, x) = MNI mm (x, y, z) minus ``origin``, reversed.
    """

    tissue: Dict[str, np.ndarray]  # uint8 t1, wm (probability) and flair (normal FLAIR-like signal)
    hull_dist: np.ndarray  # float32 signed distance (mm) to the brain hull, + outside, 2 mm grid
    origin: np.ndarray  # MNI mm of voxel (0, 0, 0)
    lesion_sites: np.ndarray  # (N, 3) MNI mm of deep white-matter points where lesions may start


def _template_path(kind: str) -> str:
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("nilearn is required for the demo dataset (it bundles the MNI152 template)")
    path = os.path.join(spec.submodule_search_locations[0], "datasets", "data", _TEMPLATE_FILE.format(kind))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MNI152 template file not found in the nilearn package: {path}")
    return path


@functools.lru_cache(maxsize=1)
def load_template() -> MNITemplate:
    """Load nilearn's bundled MNI152 2009 template (cached) and derive what rendering needs.

    Returns:
        MNITemplate: T1, white-matter and normal-FLAIR volumes, the brain-hull distance map and
        the candidate lesion sites.
    """
    import nibabel as nib

    volumes = {}
    for kind in ("t1", "gm", "wm"):
        image = nib.load(_template_path(kind))
        data = np.asarray(image.dataobj, dtype=np.float32).transpose(2, 1, 0)
        volumes[kind] = np.ascontiguousarray(np.round(data * (255 / data.max())).astype(np.uint8))
        affine = image.affine
    if not np.allclose(affine[:3, :3], np.eye(3)):
        raise ValueError("expected the 1 mm MNI152 template with an axis-aligned affine")
    origin = affine[:3, 3].astype(np.float64)

    # Brain hull: the brain mask with sulci closed; signed distance on the 2 mm grid (every 2nd voxel).
    step = int(_DIST_STEP_MM)
    brain = volumes["t1"] > 0
    hull = ndimage.gaussian_filter(brain.astype(np.float32), 3.0)[::step, ::step, ::step] > 0.3
    signed = ndimage.distance_transform_edt(~hull) - ndimage.distance_transform_edt(hull)
    hull_dist = _DIST_STEP_MM * ndimage.gaussian_filter(signed.astype(np.float32), 1.0)  # smooth level sets

    # Normal FLAIR: grey > white matter >> CSF, mildly bright periventricular "caps".
    gm, wm = volumes["gm"].astype(np.float32) / 255, volumes["wm"].astype(np.float32) / 255
    candidates = np.nonzero(brain & (gm + wm < 0.35))
    depth = ndimage.map_coordinates(hull_dist, np.array(candidates, np.float32) / step, order=1)
    ventricles = np.zeros(brain.shape, np.float32)
    ventricles[tuple(c[depth < -12] for c in candidates)] = 1
    periventricular = np.clip(3 * ndimage.gaussian_filter(ventricles, 2.5), 0, 1) * wm
    csf = np.clip(1 - gm - wm, 0, 1)
    flair = gm + 0.78 * wm + 0.1 * csf + 0.22 * periventricular
    volumes["flair"] = np.round(255 * np.clip(flair, 0, 1)).astype(np.uint8)

    # Lesion sites: deep white matter above the skull base, on the 2 mm grid.
    sites = np.argwhere((wm[::step, ::step, ::step] > 0.75) & (hull_dist < -8))[:, ::-1] * step + origin
    sites = sites[sites[:, 2] > -20]
    tissue = {k: volumes[k] for k in ("t1", "wm", "flair")}
    return MNITemplate(tissue, hull_dist, origin, sites.astype(np.float64))


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Rotation matrix (degrees) about z (in-plane), x (nodding) and y (tilting sideways)."""
    a, b, c = np.deg2rad([yaw, pitch, roll])
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    ry = np.array([[np.cos(c), 0, np.sin(c)], [0, 1, 0], [-np.sin(c), 0, np.cos(c)]])
    return rz @ rx @ ry


def _transform(matrix: np.ndarray, points: np.ndarray, offset: Optional[np.ndarray] = None) -> np.ndarray:
    """``matrix @ points (+ offset)`` for (3, N) float32 ``points``, without BLAS.

    Plain broadcasting keeps the result independent of BLAS threading (byte-identical output) and
    avoids spinning BLAS threads on these thin products.
    """
    matrix = np.asarray(matrix, dtype=np.float32)
    out = matrix[:, 0, None] * points[0] + matrix[:, 1, None] * points[1] + matrix[:, 2, None] * points[2]
    if offset is not None:
        out += np.asarray(offset, dtype=np.float32)[:, None]
    return out


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * x))


class _SmoothNoise:
    """A smooth random field of unit variance: a sum of random plane waves (random Fourier features).

    Args:
        rng: random generator.
        wavelength: mean wavelength of the waves in mm.
        num_waves: number of plane waves.
    """

    def __init__(self, rng: np.random.Generator, wavelength: float, num_waves: int = 12):
        directions = rng.normal(size=(num_waves, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        lengths = wavelength * rng.uniform(0.6, 1.7, size=(num_waves, 1))
        self.frequencies = 2 * np.pi * directions / lengths
        self.phases = rng.uniform(0, 2 * np.pi, size=num_waves)

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """Evaluate at ``points`` (3, N) in mm; returns (N,) float32."""
        waves = np.cos(_transform(self.frequencies, points, self.phases))
        return np.sqrt(2.0 / len(self.phases)) * waves.sum(axis=0)


class _Lesion:
    """An irregular lesion: a noisy ellipsoid that prefers white matter, with mild mass effect.

    Coordinates are the patient's scanner frame in mm (z along the slice axis).

    Args:
        rng: random generator.
        center: (3,) lesion centre.
        radii: (3,) ellipsoid semi-axes (x, y, z).
    """

    def __init__(self, rng: np.random.Generator, center: np.ndarray, radii: np.ndarray):
        self.center = center
        self.radii = radii
        self.orientation = _rotation(rng.uniform(0, 180), rng.uniform(-15, 15), rng.uniform(-15, 15))
        self.shape_noise = _SmoothNoise(rng, wavelength=float(radii.mean()) * rng.uniform(1.0, 1.8))
        self.shape_amplitude = rng.uniform(0.2, 0.35)
        self.wm_preference = rng.uniform(0.3, 0.6)
        self.mass_effect = rng.uniform(0.08, 0.2)

    def displacement(self, points: np.ndarray) -> np.ndarray:
        """Outward push of tissue at ``points`` (3, N): subtract from ``points`` to get the source.

        The radial map r -> r (1 - s exp(-r^2 / (2R)^2)) is monotonic for s < 1, so no folding.
        """
        offset = points - self.center[:, None].astype(np.float32)
        reach = 2.0 * float(self.radii.mean())
        strength = self.mass_effect * np.exp(-(offset**2).sum(axis=0) / reach**2)
        return offset * strength

    def field(self, points: np.ndarray, tissue: Dict[str, np.ndarray]) -> np.ndarray:
        """Lesion level at ``points`` (3, N): > 0 inside the lesion, about 1 at its core.

        Args:
            points: scanner-frame mm, (3, N).
            tissue: template signals at ``points`` (``wm`` probability and ``t1`` in [0, 1]); the
                lesion prefers white matter and spares CSF (dark T1).
        """
        offset = _transform(self.orientation.T, points, -self.orientation.T @ self.center)
        radius = np.sqrt(((offset / self.radii[:, None].astype(np.float32)) ** 2).sum(axis=0))
        csf = np.clip((0.5 - tissue["t1"]) / 0.25, 0, 1)
        level = 1.0 - radius + self.wm_preference * (tissue["wm"] - 0.6) - csf
        near = radius < 1.0 + 3 * self.shape_amplitude + self.wm_preference
        level[near] += self.shape_amplitude * self.shape_noise(points[:, near])
        return level


class _Pose(NamedTuple):
    """Patient position and slice coverage: scanner frame (x right-left, y anterior, z superior)."""

    rotation: np.ndarray  # scanner frame -> MNI directions
    head_scale: float
    center: np.ndarray  # MNI mm of the scanner-frame origin
    pixel_mm: float
    flip: bool  # left-right flip of the image
    z_positions: np.ndarray  # scanner-frame z (mm) of each slice, inferior first

    @property
    def to_mni(self) -> np.ndarray:
        return self.rotation / self.head_scale

    def grid_points(self) -> np.ndarray:
        """Scanner-frame mm of every voxel of the (slices, rows, cols) grid, as (3, N) float32."""
        half = (IMAGE_SIZE - 1) / 2
        axis = (half - np.arange(IMAGE_SIZE, dtype=np.float32)) * self.pixel_mm
        shape = (len(self.z_positions), IMAGE_SIZE, IMAGE_SIZE)
        points = np.empty((3,) + shape, dtype=np.float32)
        points[0] = -axis[None, None, :] if self.flip else axis[None, None, :]
        points[1] = axis[None, :, None]
        points[2] = self.z_positions[:, None, None]
        return points.reshape(3, -1)


def _sample_pose(rng: np.random.Generator, num_slices_range: Tuple[int, int]) -> _Pose:
    num_slices = int(rng.integers(num_slices_range[0], num_slices_range[1] + 1))
    coverage = rng.uniform(100, 135)
    z_top = rng.uniform(68, 84)
    return _Pose(
        rotation=_rotation(rng.uniform(-10, 10), rng.uniform(-12, 12), rng.uniform(-5, 5)),
        head_scale=rng.uniform(0.9, 1.1),
        center=np.array([rng.uniform(-5, 5), -17 + rng.uniform(-8, 8), 0.0]),
        pixel_mm=rng.uniform(0.8, 0.95),
        flip=bool(rng.random() < 0.5),
        z_positions=np.linspace(z_top - coverage, z_top, num_slices),
    )


def _place_lesions(rng: np.random.Generator, pose: _Pose, sites_mni: np.ndarray) -> List[_Lesion]:
    """One lesion (sometimes two) in deep white matter, sized to span about a third of the slices."""
    sites = (sites_mni - pose.center) @ pose.rotation * pose.head_scale  # in the scanner frame
    coverage = pose.z_positions[-1] - pose.z_positions[0]
    half_height = rng.uniform(0.2, 0.3) * coverage / 2
    lesions: List[_Lesion] = []
    for index in range(1 if rng.random() < 0.75 else 2):
        if index == 0:
            low, high = pose.z_positions[0] + half_height + 5, pose.z_positions[-1] - half_height - 5
        else:
            low, high = lesions[0].center[2] - half_height, lesions[0].center[2] + half_height
        candidates = sites[(sites[:, 2] > low) & (sites[:, 2] < high)]
        if len(candidates) == 0:
            candidates = sites
        center = candidates[rng.integers(len(candidates))]
        size = 1.0 if index == 0 else rng.uniform(0.4, 0.6)
        in_plane = rng.uniform(14, 28, size=2)
        lesions.append(_Lesion(rng, center, size * np.array([in_plane[0], in_plane[1], half_height])))
    return lesions


def _head_shell(rng: np.random.Generator, dist: np.ndarray, points: np.ndarray) -> Dict[str, np.ndarray]:
    """Layer weights around the brain hull: CSF gap, skull (with diploe), scalp fat and skin.

    Args:
        rng: random generator.
        dist: signed distance (mm) to the brain hull, positive outside.
        points: scanner-frame mm of the same points, (3, N); the scalp thickens posteriorly.

    Returns:
        Weights in [0, 1] per layer, plus ``inside`` (brain), ``dura`` and ``head`` (anything).
    """
    gap, skull, fat = rng.uniform(1.5, 3.0), rng.uniform(4.5, 7.5), rng.uniform(3.0, 5.0)
    wobble = _SmoothNoise(rng, wavelength=60.0, num_waves=6)(points)
    dist_fat = dist - wobble * rng.uniform(0.5, 1.0) + np.clip(points[1], None, 0) * rng.uniform(0, 0.03)
    steps = [
        _sigmoid((d - edge) / 0.6)
        for d, edge in (
            (dist, 0.0),
            (dist, gap),
            (dist, gap + skull),
            (dist_fat, gap + skull + fat),
            (dist_fat, gap + skull + fat + 1.5),
        )
    ]
    bone = steps[1] - steps[2]
    diploe = bone * np.exp(-(((dist - gap - skull / 2) / (skull / 4)) ** 2))
    return {
        "inside": 1.0 - steps[0],
        "csf": steps[0] - steps[1],
        "bone": bone - diploe,
        "diploe": diploe,
        "fat": steps[2] - steps[3],
        "skin": steps[3] - steps[4],
        "dura": np.exp(-(((dist - gap) / 1.2) ** 2)),
        "head": 1.0 - steps[4],
    }


def _bias_field(rng: np.random.Generator, points: np.ndarray, amplitude: float) -> np.ndarray:
    """Smooth multiplicative field exp(quadratic polynomial) at scanner-frame ``points`` (3, N)."""
    x, y, z = points / 100.0
    terms = [x, y, z, x * y, x * z, y * z, x * x - 0.33, y * y - 0.33, z * z - 0.33]
    coefficients = rng.normal(scale=amplitude / 2, size=len(terms))
    return np.exp(sum(float(c) * t for c, t in zip(coefficients, terms)))


def _contrasts(
    rng: np.random.Generator, tissue: Dict[str, np.ndarray], shell: Dict[str, np.ndarray]
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Pre-contrast (T1-like), FLAIR and post-contrast signals in [0, ~1] from the template signals.

    Returns:
        pre, flair, post signals and the FLAIR grey-matter level.
    """
    gamma_pre, gamma_post, gamma_flair = rng.uniform(1.3, 1.9), rng.uniform(1.1, 1.6), rng.uniform(0.8, 1.3)
    flair_gm = rng.uniform(0.48, 0.58)
    layers = ("csf", "bone", "diploe", "fat", "skin")
    signals = {  # typical relative signal of each shell layer per sequence
        "pre": (0.1, 0.04, 0.45, 0.85, 0.45),
        "flair": (0.05, 0.04, 0.35, 0.65, 0.4),
        "post": (0.12, 0.04, 0.55, 0.9, 0.55),
    }
    shell_signal = {}
    for name, values in signals.items():
        jitter = rng.uniform(0.85, 1.15, size=len(layers))
        shell_signal[name] = sum(shell[layer] * float(v * j) for layer, v, j in zip(layers, values, jitter))
    inside = shell["inside"]
    pre = inside * tissue["t1"] ** gamma_pre + shell_signal["pre"]
    flair = inside * flair_gm * tissue["flair"] ** gamma_flair + shell_signal["flair"]
    post = inside * tissue["t1"] ** gamma_post + shell_signal["post"] + rng.uniform(0.2, 0.5) * shell["dura"]
    return pre, flair, post, flair_gm


def _paint_lesions(
    rng: np.random.Generator,
    level: np.ndarray,
    points: np.ndarray,
    signals: Tuple[np.ndarray, np.ndarray, np.ndarray],
    flair_gm: float,
) -> None:
    """Paint the lesion where ``level`` > 0, in place: bright in FLAIR, darker in T1, rarely enhancing.

    Args:
        rng: random generator.
        level: lesion level per point (> 0 inside); the margin gets a softer paint.
        points: scanner-frame mm of the points, (3, N).
        signals: pre-contrast, FLAIR and post-contrast signals, modified in place.
        flair_gm: FLAIR grey-matter level (the lesion is brighter).
    """
    pre, flair, post = signals
    inside = np.flatnonzero(level > 0)
    lesion_points = points[:, inside]
    weight = 0.4 + 0.6 * _smoothstep(level[inside] / 0.3)
    texture = 1 + 0.07 * _SmoothNoise(rng, wavelength=rng.uniform(8, 16))(lesion_points)
    lesion_flair = flair_gm * rng.uniform(1.2, 1.6) * texture
    flair[inside] = flair[inside] * (1 - weight) + weight * lesion_flair
    t1_drop = 1 - rng.uniform(0.1, 0.3) * weight * texture
    pre[inside] *= t1_drop
    post[inside] *= t1_drop
    if rng.random() < 0.2:  # patchy enhancement in a few patients
        patches = np.clip(_SmoothNoise(rng, wavelength=rng.uniform(8, 15))(lesion_points) - 0.7, 0, 0.6)
        post[inside] += rng.uniform(0.4, 0.7) * weight * patches


def _acquire(
    rng: np.random.Generator, signals: Tuple[np.ndarray, ...], points: np.ndarray, head: np.ndarray
) -> List[np.ndarray]:
    """Bias field, Rician noise (inside the head), gain and uint8 quantisation of each signal.

    In a few patients a missing sequence is replaced by FLAIR, as in the real dataset.

    Returns:
        One uint8 array per signal.
    """
    bias = _bias_field(rng, points, amplitude=rng.uniform(0.15, 0.35))
    sigma = rng.uniform(0.02, 0.045)
    channels = []
    for signal in signals:
        signal = signal * bias * rng.uniform(0.95, 1.05)
        noise = rng.standard_normal(size=(2, len(signal)), dtype=np.float32) * (sigma * head)
        signal = np.sqrt((signal + noise[0]) ** 2 + noise[1] ** 2)
        channels.append(np.clip(np.round(255 * rng.uniform(0.85, 1.0) * signal), 0, 255).astype(np.uint8))
    missing = rng.random()
    if missing < 0.08:
        channels[0] = channels[1]
    elif missing < 0.16:
        channels[2] = channels[1]
    return channels


def _lesion_facts(pose: _Pose, lesion: _Lesion) -> Dict[str, str]:
    """Side and lobe of a lesion, for ``data.csv`` (coarse MNI rules)."""
    x, y, z = pose.to_mni @ lesion.center + pose.center
    if y > 5:
        lobe = "Frontal Lobe"
    elif y < -65:
        lobe = "Occipital Lobe"
    else:
        lobe = "Temporal Lobe" if z < 5 else "Parietal Lobe"
    return {"laterality": "Right" if x > 0 else "Left", "tumor_location": lobe}


def render_patient(
    rng: np.random.Generator, *, num_slices_range: Tuple[int, int] = (20, 40)
) -> Tuple[np.ndarray, np.ndarray, Dict[str, str]]:
    """Render one synthetic patient volume.

    Args:
        rng: random generator; the result is a deterministic function of its state.
        num_slices_range: inclusive range of the number of axial slices.

    Returns:
        images: uint8 (n, 256, 256, 3), channels pre-contrast, FLAIR, post-contrast.
        masks: uint8 (n, 256, 256), 255 inside the lesion, 0 elsewhere.
        info: clinical-style facts for ``data.csv`` (``laterality``, ``tumor_location``).
    """
    template = load_template()
    pose = _sample_pose(rng, num_slices_range)
    lesions = _place_lesions(rng, pose, template.lesion_sites)
    grid_shape = (len(pose.z_positions), IMAGE_SIZE, IMAGE_SIZE)

    # Template coordinates of every voxel (mass effect: tissue is sampled closer to lesion centres);
    # everything after the hull distance is computed inside the head only.
    points = pose.grid_points()
    source = points.copy()
    for lesion in lesions:
        source -= lesion.displacement(points)
    voxels = _transform(pose.to_mni[::-1], source, (pose.center - template.origin)[::-1])  # (z, y, x) indices
    dist = ndimage.map_coordinates(
        template.hull_dist, voxels / _DIST_STEP_MM, order=1, mode="constant", cval=_DIST_OUTSIDE_MM
    )
    head = np.flatnonzero(dist < _HEAD_MARGIN_MM)
    points, voxels, dist = points[:, head], voxels[:, head], dist[head]
    tissue = {
        name: ndimage.map_coordinates(volume, voxels, order=1, output=np.float32) / 255
        for name, volume in template.tissue.items()
    }
    shell = _head_shell(rng, dist, points)
    pre, flair, post, flair_gm = _contrasts(rng, tissue, shell)

    # The mask is exactly where the lesion is painted (inside the brain hull).
    level = np.max([lesion.field(points, tissue) for lesion in lesions], axis=0)
    level[dist >= -1.0] = -1.0
    _paint_lesions(rng, level, points, (pre, flair, post), flair_gm)
    channels = _acquire(rng, (pre, flair, post), points, shell["head"])

    images = np.zeros(grid_shape + (3,), dtype=np.uint8)
    masks = np.zeros(grid_shape, dtype=np.uint8)
    images.reshape(-1, 3)[head] = np.stack(channels, axis=-1)
    masks.reshape(-1)[head[level > 0]] = 255
    return images, masks, _lesion_facts(pose, lesions[0])
