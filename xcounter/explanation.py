"""What an explanation *is*: plain dataclasses with a versioned JSON form.

Renderers (HTML, JSON, PNG) read these and never recompute; audits store one per line.
Arrays (images, difference maps) are stored as base64 float16 so a round trip keeps them.
"""
from __future__ import annotations

import base64
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SCHEMA_VERSION = "1.9"
#: "mediated": the edit flips the decision, but an oracle saw it also make another attribute's flipping edit
#: (`AttributeResult.mediator`; see `xcounter.mediation`), or, an addition, it flips only through the pixels of
#: another attribute's flipping removal (`xcounter.same_change`).
#: "unconfirmed": a device/artifact edit flips the decision, but its own strongest pixels pasted onto the
#: reconstruction do not, or the trajectory's strongest edit does not (`AttributeResult.core`; see
#: `xcounter.confirmation`)
VERDICTS = ("shortcut", "drives", "mediated", "unconfirmed", "does not drive")
#: verdicts of a flip the explanation does not credit to the attribute itself (ranked after the credited ones)
UNCREDITED = ("mediated", "unconfirmed")


def verdict_of(attribute_kind: str, flipped: bool, core_flipped: bool | None = None) -> str:
    """"shortcut" when a device/artifact/acquisition edit flips the decision, "drives" for any other flip;
    "unconfirmed" for a shortcut whose checks (`CoreCheck.confirmed`, given as `core_flipped`) do not both flip it."""
    from xcounter.attributes import SPURIOUS_KINDS
    if not flipped:
        return "does not drive"
    if attribute_kind not in SPURIOUS_KINDS:
        return "drives"
    return "unconfirmed" if core_flipped is False else "shortcut"


def encode_array(array: np.ndarray | None) -> dict | None:
    if array is None:
        return None
    array = np.ascontiguousarray(np.asarray(array, dtype=np.float16))
    return {"shape": list(array.shape), "dtype": "float16",
            "data": base64.b64encode(array.tobytes()).decode("ascii")}


def decode_array(blob: dict | None) -> np.ndarray | None:
    if blob is None:
        return None
    raw = base64.b64decode(blob["data"])
    return np.frombuffer(raw, dtype=blob.get("dtype", "float16")).reshape(blob["shape"]).astype(np.float32)


@dataclass
class Prediction:
    """The classifier's output for one label on one image."""
    label: str
    probability: float
    logit: float
    threshold: float  # decision threshold on the logit scale
    positive: bool


@dataclass
class Counterfactual:
    """One edit trajectory (an attribute added or removed) and its minimal flipping point."""
    attribute: str
    sign: str  # "add" | "remove"
    method: str  # "trajectory" | "latent_shift" | "sdedit" | ...
    strengths: list[float]  # edit strength along the trajectory, 0 = source
    probabilities: list[float]  # target probability at each strength
    minimal_strength: float | None  # smallest strength that flips the decision (None: no flip)
    flipped: bool
    probability_before: float
    probability_after: float  # on `image`: the flip shown, or the strongest edit if no flip
    image: np.ndarray | None = None  # counterfactual image, HxWxC in [0, 1]
    difference: np.ndarray | None = None  # counterfactual - reconstruction, HxWxC
    film: list[np.ndarray] = field(default_factory=list)  # images along the trajectory
    l1: float | None = None
    ssim: float | None = None
    oracle_change: dict[str, float] | None = None  # other attributes' change per the oracle
    cfrt: float | None = None
    direction_cosine: list[float] = field(default_factory=list)  # along the trajectory
    nfe: int = 0
    #: H x W in {0, 1}: where the edit was allowed to act (DiffEdit region; outside it the counterfactual is
    #: the reconstruction). None = the edit acted on the whole image.
    region: np.ndarray | None = None
    #: the edit strength of `image`: the trajectory method shows the weakest swap-step sample found that
    #: flips (a whole generator output), at or past `minimal_strength` (the crossing on the Bézier curve
    #: between samples);
    #: None where a method does not say (schema 1.2 and older)
    image_strength: float | None = None
    #: L1 of the minimal edit itself (the curve at the crossing) when `image` is a stronger sample: what the
    #: ranking compares, since a sample's strength is one of a few swap steps and says less about how little
    #: of the image had to change. None: `l1` is the minimal edit's.
    crossing_l1: float | None = None
    #: the generator's whole sample when `image` keeps only the parts of its edit the decision needs
    #: (`xcounter.edit_pruning`); None: `image` is the whole sample (or the method does not prune; schema <= 1.4)
    sample: np.ndarray | None = None
    #: connected parts the sample's edit was split into, and how many `image` keeps (None: not pruned)
    parts: int | None = None
    parts_kept: int | None = None
    #: a pruned removal whose kept parts were refilled at the unedited image's levels around them
    #: (`xcounter.removal_fill`); False: pasted as drawn (schema <= 1.6)
    filled: bool = False
    #: H x W in [0, 1]: how much of the sample's edit a refilled removal keeps at each pixel (the paste's weights;
    #: `xcounter.edit_pruning`), so what the kept parts changed can be read after the refill; None: not refilled
    #: (an unfilled paste's `difference` already is what its kept parts changed)
    kept: np.ndarray | None = None

    @property
    def whole_image(self) -> np.ndarray | None:
        """What the method drew before pruning: the sample when `image` was pruned, else `image` itself."""
        return self.sample if self.sample is not None else self.image

    @property
    def pruned(self) -> bool:
        return self.sample is not None

    @property
    def kept_change(self) -> np.ndarray | None:
        """What the kept parts of the edit changed (H x W x C). For a refilled removal (`filled`), the paste's
        weights times the sample's change: the refill moved the parts' levels, not which pixels the decision needs or
        which way it moved them (`xcounter.same_change`). Otherwise `difference` itself, which a paste already is."""
        if not self.filled or self.kept is None or self.sample is None or self.image is None or self.difference is None:
            return self.difference
        unedited = np.asarray(self.image, dtype=np.float32) - np.asarray(self.difference, dtype=np.float32)
        weights = np.asarray(self.kept, dtype=np.float32)
        return (weights[..., None] if weights.ndim == 2 else weights) * (np.asarray(self.sample, np.float32) - unedited)

    @property
    def minimal_edit_l1(self) -> float | None:
        """L1 change of the minimal flipping edit (the crossing's when the image shown is a later sample)."""
        return self.crossing_l1 if self.crossing_l1 is not None else self.l1

    @property
    def delta_probability(self) -> float:
        return self.probability_after - self.probability_before

    @property
    def shown_past_crossing(self) -> bool:
        """Whether the image shown is a sample stronger than the minimal flip (so say both strengths)."""
        return bool(self.flipped and self.image_strength is not None and self.minimal_strength is not None
                    and self.image_strength - self.minimal_strength > 0.005)


@dataclass
class CoreCheck:
    """A shortcut flag re-asked on the edit's own pixels and at the trajectory's strongest edit
    (`xcounter.confirmation`)."""
    fraction: float  # pixels whose change reached this share of the largest change were pasted
    share: float  # the share of the image they cover
    probability: float  # the target probability on the reconstruction with only them pasted
    flipped: bool  # whether that still flips the reconstruction's decision
    #: the target probability at the trajectory's strongest edit (the device drawn in full); None: not checked
    #: (schema <= 1.8)
    strongest_probability: float | None = None
    #: whether the strongest edit flips the decision too; None: not checked
    strongest_flipped: bool | None = None

    @property
    def confirmed(self) -> bool:
        """Both checks flip the decision (an unchecked one does not count against the flag)."""
        return bool(self.flipped) and self.strongest_flipped is not False


@dataclass
class AttributeResult:
    """The verdict on one attribute for one target label."""
    target: str
    attribute: str
    kind: str
    verdict: str  # one of VERDICTS
    minimal_strength: float | None
    flipped: bool
    sign: str | None = None  # the sign of the best counterfactual
    gradient_sensitivity: float | None = None  # first-order logit change (gradient projection)
    counterfactuals: list[Counterfactual] = field(default_factory=list)
    #: the attribute this flip is traced to when the verdict is "mediated"
    mediator: str | None = None
    #: how it was traced: "oracle" (the oracle saw the edit also make the mediator's flipping edit,
    #: `xcounter.mediation`) or "pixels" (an addition that flips only through the pixels of the mediator's
    #: flipping removal, changed the same way, `xcounter.same_change`); None when not mediated
    mediated_by: str | None = None
    #: the check on the edit's own pixels, where one was made (shortcut flags with `confirm_shortcuts`)
    core: CoreCheck | None = None

    @property
    def drives_decision(self) -> bool:
        """Whether this attribute is named a cause: it flips the decision and the flip is its own."""
        return self.flipped and self.verdict in ("drives", "shortcut")

    @property
    def best(self) -> Counterfactual | None:
        flips = [c for c in self.counterfactuals if c.flipped]
        if flips:
            return min(flips, key=lambda c: c.minimal_strength)
        if not self.counterfactuals:
            return None
        return max(self.counterfactuals, key=lambda c: abs(c.delta_probability))


@dataclass
class Explanation:
    """Everything known about why one scan got its decisions."""
    image: np.ndarray  # the scan as the generator sees it, HxWxC in [0, 1]
    reconstruction: np.ndarray
    reconstruction_error: float  # mean absolute error in [0, 1] units
    reconstruction_ssim: float
    prompt: str
    predictions: list[Prediction]
    results: list[AttributeResult]
    seed: int
    nfe: int
    targets: list[str] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)  # file name, size, safe metadata only
    classifier: dict[str, Any] = field(default_factory=dict)  # name, sha256, labels
    generator: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)  # steps, swap steps, guidance, ...
    direction_cosine: dict[str, Any] = field(default_factory=dict)  # names, before, after
    gradient_ranking: dict[str, dict[str, float]] = field(default_factory=dict)  # target -> attr -> score
    attributions: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # target -> method -> map
    warnings: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""
    schema_version: str = SCHEMA_VERSION

    @property
    def ranking(self) -> list[AttributeResult]:
        """Attribute results, smallest flipping edit first; mediated and unconfirmed flips after them;
        non-flipping ones last.

        "Smallest" is the minimal edit's mean absolute pixel change from the reconstruction (L1, the
        proximity of the counterfactual literature; `Counterfactual.minimal_edit_l1`), then the edit strength.
        Why not strength first: a
        strength is a point on one attribute's own trajectory and says little about how much of the image
        another attribute's edit changed (on 17 effusion phantoms the clean classifier's pleural_effusion
        ranked first on 13 by L1, 10 by strength; chest_tube for the tube-shortcut classifier 16 vs 15).
        """
        def key(result: AttributeResult):
            flipped = result.flipped and result.minimal_strength is not None
            best = result.best if flipped else None
            l1 = best.minimal_edit_l1 if best is not None and best.minimal_edit_l1 is not None else float("inf")
            strength = result.minimal_strength if flipped else 2.0
            return (not result.flipped, result.verdict in UNCREDITED, l1, strength, result.target, result.attribute)
        return sorted(self.results, key=key)

    def ranking_for(self, target: str) -> list[AttributeResult]:
        return [r for r in self.ranking if r.target == target]

    def result(self, target: str, attribute: str) -> AttributeResult:
        for candidate in self.results:
            if candidate.target == target and candidate.attribute == attribute:
                return candidate
        raise KeyError(f"no result for target '{target}' and attribute '{attribute}'")

    def prediction(self, label: str) -> Prediction:
        for candidate in self.predictions:
            if candidate.label == label:
                return candidate
        raise KeyError(label)

    # -- JSON -----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return _to_jsonable(self)

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict) -> "Explanation":
        version = str(data.get("schema_version", "0"))
        if version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
            raise ValueError(f"explanation schema {version} is not readable by this version ({SCHEMA_VERSION})")
        data = dict(data)
        for name in ("image", "reconstruction"):
            data[name] = decode_array(data[name])
        data["predictions"] = [Prediction(**p) for p in data["predictions"]]
        data["results"] = [_result_from_dict(r) for r in data["results"]]
        data["attributions"] = {t: {m: decode_array(a) for m, a in maps.items()}
                                for t, maps in data.get("attributions", {}).items()}
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_json(cls, text: str) -> "Explanation":
        return cls.from_dict(json.loads(text))


def _result_from_dict(data: dict) -> AttributeResult:
    data = dict(data)
    counterfactuals = []
    for c in data.pop("counterfactuals", []):
        c = dict(c)
        c["image"] = decode_array(c.get("image"))
        c["difference"] = decode_array(c.get("difference"))
        c["region"] = decode_array(c.get("region"))
        c["sample"] = decode_array(c.get("sample"))
        c["kept"] = decode_array(c.get("kept"))
        c["film"] = [decode_array(f) for f in c.get("film", [])]
        c.pop("delta_probability", None)
        counterfactuals.append(Counterfactual(**c))
    data.pop("best", None)
    core = data.pop("core", None)
    return AttributeResult(counterfactuals=counterfactuals, core=None if core is None else CoreCheck(**core), **data)


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return encode_array(value)
    if dataclasses.is_dataclass(value):
        out = {f.name: _to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, Counterfactual):
            out["delta_probability"] = value.delta_probability
        return out
    if isinstance(value, dict):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
