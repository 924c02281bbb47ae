"""The attribute vocabulary (cxr.yaml, skin.yaml): defined once, shared by phantoms, prompts,
oracle and explainer, so the names an explanation reports are the names the truth is kept in."""
from __future__ import annotations

import difflib
import functools
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Sequence

import yaml

from xcounter.errors import XCounterError

KINDS = ("pathology", "anatomy", "device", "artifact", "acquisition")
#: kinds whose flipping a pathology decision means the classifier uses a shortcut
SPURIOUS_KINDS = ("device", "artifact", "acquisition")
#: where in the image an attribute can be (`Attribute.where`): edits of a "periphery" attribute (rulers,
#: colour charts) act only in the image's outer band, of a "top" one (film markers) only along its top edge;
#: a box [top, bottom, left, right] (fractions of the image's height and width) confines them to that box;
#: "off_lesion" ones act only off the scan's own lesion (`lesion_region`), "beside_lesion" ones (skin ink) too,
#: and are added in one sector beside it (`edit_region.pixel_prior`), "clear_of_lesion" ones
#: (skin hair, gel bubbles) only clear of it, past a margin, "on_lesion" ones (dots: findings on the lesion and
#: its rim) only on it (`edit_region.prior_region`), and "in_lesion" ones (a veil, variegation: drawn inside the
#: lesion, its outline kept) on it and, pixel by pixel, only inside its rim (`edit_region.pixel_prior`)
WHERE = ("anywhere", "periphery", "top", "off_lesion", "beside_lesion", "clear_of_lesion", "on_lesion", "in_lesion")


@dataclass(frozen=True)
class Attribute:
    name: str
    kind: str
    type: str = "binary"
    label: str | None = None
    negative: tuple[str, ...] = ()
    positive: tuple[str, ...] = ()
    where: str | tuple[float, float, float, float] = "anywhere"  # one of WHERE, or a box
    #: a classifier output that reports this finding itself rather than a diagnosis it is evidence for (a
    #: dermoscopy 7-point-checklist model's "Blue-white veil" beside its "Melanoma"), so a target of that
    #: name is matched with this attribute as "Effusion" is with pleural_effusion
    criterion: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.where, (list, tuple)):
            box = tuple(self.where)
            if len(box) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box) \
                    or not (0 <= box[0] < box[1] <= 1 and 0 <= box[2] < box[3] <= 1):
                raise XCounterError(f"attribute '{self.name}' has a bad where box {list(self.where)}: give "
                                    f"[top, bottom, left, right] as fractions of the image, top < bottom, left < right")
            object.__setattr__(self, "where", tuple(float(v) for v in box))
        elif self.where not in WHERE:
            raise XCounterError(f"attribute '{self.name}' has unknown where '{self.where}' (one of "
                                f"{', '.join(WHERE)}, or a box [top, bottom, left, right])")

    @property
    def labels(self) -> tuple[str, ...]:
        """Every classifier label this finding is evidence for: its diagnosis, then its own criterion."""
        return tuple(name for name in (self.label, self.criterion) if name)

    @property
    def is_spurious(self) -> bool:
        return self.kind in SPURIOUS_KINDS

    def _sentences(self, text: str) -> list[tuple[str, bool | None]]:
        """Each sentence of `text` (whitespace collapsed) with what it says of this attribute: True, False
        (a negative phrase, or "no" before a positive one) or None (not mentioned)."""
        out = []
        for sentence in text.replace("\n", " ").split("."):
            words = " ".join(sentence.split())
            lower = words.lower()
            mentions = any(p.lower() in lower for p in self.positive)
            if any(n.lower() in lower for n in self.negative) or (mentions and lower.startswith("no ")):
                out.append((words, False))
            else:
                out.append((words, True if mentions else None))
        return out

    def stated_in(self, text: str) -> bool | None:
        """What a report says of this attribute: True (a positive phrase), False (a negative phrase, or a
        sentence opening with "no"), None (not mentioned). Negations are checked first, so "No pleural
        effusion" is absence although it contains "pleural effusion"."""
        says = [said for _, said in self._sentences(text) if said is not None]
        return False if False in says else (True if says else None)

    def restated(self, text: str, sign: str) -> str | None:
        """`text` with what it says of this attribute turned the way of `sign` ("add" | "remove"), or
        None when it says nothing against the edit.

        Why: the edit is E(prompt) + sign·α·d, an average direction; when the report itself names the
        finding ("Moderate right pleural effusion."), its tokens keep asking for it and removal stalls.
        Swapping the sentence for the attribute's first opposite phrase is the paper's prompt swap;
        the direction then adds the same push as for an unstated attribute.
        """
        stated = self.stated_in(text)
        if stated is None or stated == (sign == "add"):
            return None
        phrase = (self.negative if sign == "remove" else self.positive)[:1]
        if not phrase:
            return None
        against = sign != "add"  # what a sentence must say to be swapped: present for a removal
        kept, replaced = [], False
        for words, said in self._sentences(text):
            if said is against:
                if not replaced:
                    kept.append(phrase[0][:1].upper() + phrase[0][1:])
                    replaced = True
            elif words:
                kept.append(words)
        return ". ".join(kept) + "." if replaced else None


@dataclass(frozen=True)
class AttributeSet:
    domain: str
    modality: str
    neutral_prompt: str
    templates: tuple[str, ...]
    labels: tuple[str, ...]
    attributes: tuple[Attribute, ...] = field(default_factory=tuple)

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.attributes]

    def sha256(self, names: Sequence[str] | None = None) -> str:
        """A digest of everything an explanation reads from this vocabulary (prompts, templates, kinds, where),
        over the attributes `names` (default: all): an audit resumes only with the same definitions."""
        import hashlib
        import json

        chosen = [asdict(a) for a in self.attributes if names is None or a.name in names]
        spec = {"domain": self.domain, "modality": self.modality, "neutral_prompt": self.neutral_prompt,
                "templates": list(self.templates), "labels": list(self.labels), "attributes": chosen}
        return hashlib.sha256(json.dumps(spec, sort_keys=True, default=list).encode("utf-8")).hexdigest()

    def __getitem__(self, name: str) -> Attribute:
        for attribute in self.attributes:
            if attribute.name == name:
                return attribute
        hint = difflib.get_close_matches(name, self.names, n=1)
        suffix = f"; did you mean '{hint[0]}'?" if hint else f"; known: {', '.join(self.names)}"
        raise XCounterError(f"unknown attribute '{name}' for domain '{self.domain}'{suffix}")

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def __iter__(self):
        return iter(self.attributes)

    def __len__(self) -> int:
        return len(self.attributes)

    def of_kind(self, *kinds: str) -> list[Attribute]:
        return [a for a in self.attributes if a.kind in kinds]

    def sentences(self, phrase: str) -> list[str]:
        """The phrase placed in every template (for template-averaged language directions)."""
        return [t.format(phrase=phrase[:1].upper() + phrase[1:]) for t in self.templates]


def _where(value: object) -> object:
    """A YAML `where`: a name stays a string, a box list becomes a tuple (checked by `Attribute`)."""
    return tuple(value) if isinstance(value, list) else str(value)


def _parse(data: dict, source: str) -> AttributeSet:
    try:
        attributes = []
        for item in data["attributes"]:
            if item["kind"] not in KINDS:
                raise XCounterError(f"{source}: attribute '{item['name']}' has unknown kind '{item['kind']}'")
            try:
                attributes.append(Attribute(
                    name=str(item["name"]), kind=str(item["kind"]), type=str(item.get("type", "binary")),
                    label=item.get("label"), negative=tuple(item.get("negative", ())),
                    positive=tuple(item.get("positive", ())), where=_where(item.get("where", "anywhere")),
                    criterion=item.get("criterion"),
                ))
            except XCounterError as exc:  # say which file
                raise XCounterError(f"{source}: {exc}") from None
        return AttributeSet(
            domain=str(data["domain"]), modality=str(data.get("modality", data["domain"])),
            neutral_prompt=str(data["neutral_prompt"]), templates=tuple(data["templates"]),
            labels=tuple(data.get("labels", ())), attributes=tuple(attributes),
        )
    except (KeyError, TypeError) as exc:
        raise XCounterError(f"{source}: not a valid attribute file (missing or malformed {exc})") from None


@functools.lru_cache(maxsize=None)
def _bundled(domain: str) -> AttributeSet:
    """The bundled vocabularies are immutable (frozen dataclasses), so parse each once."""
    text = resources.files("xcounter.attributes").joinpath(f"{domain}.yaml").read_text()
    return _parse(yaml.safe_load(text), f"{domain}.yaml")


def load_attributes(spec: str | Path | AttributeSet = "cxr") -> AttributeSet:
    """Load 'cxr', 'skin' (bundled) or a path to a YAML file with the same schema."""
    if isinstance(spec, AttributeSet):
        return spec
    spec = str(spec)
    if spec in ("cxr", "skin"):
        return _bundled(spec)
    path = Path(spec)
    if not path.is_file():
        raise XCounterError(f"attributes '{spec}' is neither 'cxr', 'skin' nor an existing YAML file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise XCounterError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise XCounterError(f"{path}: not a valid attribute file")
    return _parse(data, str(path))
