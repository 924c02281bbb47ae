"""A restated prompt as an embedding that differs from the source only where the text differs.

Why: CLIP's text encoder is causal and a restated sentence rarely has the same token count, so the
plain embedding of the restated prompt shifts and re-contextualises every token after the change.
The UNet then redraws whatever those later sentences describe (on the phantoms, removing "Pleural
effusion." from a report that goes on "... Right-sided chest tube." also removed the tube). Splicing
keeps the source's states for the unchanged tail, as prompt-to-prompt keeps unchanged words.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from xcounter.generators import SDGenerator


def _ids(generator: "SDGenerator", text: str) -> list[int]:
    return list(generator.tokenizer(text, truncation=False).input_ids)


def spliced_embedding(generator: "SDGenerator", source_text: str, edited_text: str,
                      source: torch.Tensor | None = None) -> torch.Tensor:
    """[77, D]: the edited prompt's states up to the end of the changed span, then the source's states
    for the unchanged rest (tail words, end token, padding); padded or cut back to the source length.

    Falls back to the plain edited embedding when either text does not fit the encoder's length.
    """
    with torch.no_grad():  # an edit target, never differentiated
        source = generator.embed([source_text])[0] if source is None else source.detach()
        edited = generator.embed([edited_text])[0].to(source)
    ids_source, ids_edited = _ids(generator, source_text), _ids(generator, edited_text)
    length = source.shape[0]
    if max(len(ids_source), len(ids_edited)) > length:
        return edited
    prefix = 0
    while prefix < min(len(ids_source), len(ids_edited)) and ids_source[prefix] == ids_edited[prefix]:
        prefix += 1
    suffix = 0
    while (suffix < min(len(ids_source), len(ids_edited)) - prefix
           and ids_source[-1 - suffix] == ids_edited[-1 - suffix]):
        suffix += 1
    # the common tail starts at the next sentence: inside the changed sentence the words after the change
    # ("pleural effusion" in "No pleural effusion.") must be read in their new context
    stops = set(_ids(generator, ".")[1:-1])
    while suffix > 1 and ids_edited[len(ids_edited) - suffix - 1] not in stops:
        suffix -= 1
    spliced = torch.cat([edited[:len(ids_edited) - suffix], source[len(ids_source) - suffix:]], dim=0)
    if spliced.shape[0] >= length:
        return spliced[:length]
    return torch.cat([spliced, source[-1:].expand(length - spliced.shape[0], -1)], dim=0)
