"""The concept pool T of L_distill: prompts per regional observation, present and negated, per side and zone.

    "pleural effusion in the left lower zone", "no pleural effusion in the left lower zone",
    "pneumothorax in the right lung", ...  and "clear right lung", "clear left lung".

p(T | ROI) = softmax over these prompts tells the student what the teacher thinks a region shows, where and
whether it is there. `swap` maps each prompt to its left <-> right mirror, so a horizontally flipped ROI takes
the teacher's distribution with left and right exchanged (side-aware augmentation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .vocab import REGIONAL, SIDES, caption

PLACES = ("", "upper", "middle", "lower")  # "" = the whole lung


@dataclass
class ConceptPool:
    prompt: list[str]
    observation: list[str]  # "" for the clear-lung prompts
    laterality: list[str]
    zone: list[str]
    negated: np.ndarray  # (T,) bool
    swap: np.ndarray  # (T,) int: index of the left <-> right mirror prompt

    def __len__(self) -> int:
        return len(self.prompt)


def concept_pool() -> ConceptPool:
    rows = []
    for observation in REGIONAL:
        for side in SIDES:
            for zone in PLACES:
                text = caption(observation, side, zone)
                rows += [(text, observation, side, zone, False), (f"no {text}", observation, side, zone, True)]
    rows += [(f"clear {side} lung", "", side, "", False) for side in SIDES]
    key = {(o, s, z, n): i for i, (_, o, s, z, n) in enumerate(rows)}
    mirror = {"right": "left", "left": "right"}
    swap = np.array([key[(o, mirror[s], z, n)] for _, o, s, z, n in rows], dtype=np.int64)
    return ConceptPool([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows],
                       np.array([r[4] for r in rows], dtype=bool), swap)
