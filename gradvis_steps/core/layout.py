"""Parameter layout: how a flat parameter vector splits into named tensors.

Every framework-neutral algorithm (filter-wise normalization, PCA, projections) works on one flat
vector ``theta`` of length ``layout.size`` plus this layout, which records for each parameter its
name, shape, *kind* and, for weights, which axis indexes the filters (output channels/units). The
backend builds the layout from a model; the trajectory store saves it as JSON so a user can split
the flat vectors without gradvis.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from math import prod

#: Kinds a parameter can have. ``conv`` and ``linear`` are weights with a filter axis; ``bias``,
#: ``batchnorm`` (affine scale/shift of batch-norm) and ``norm`` (other normalization layers) are
#: the parameters the paper sets to zero in visualization directions; ``other`` is anything else.
KINDS = ("conv", "linear", "bias", "batchnorm", "norm", "other")
WEIGHT_KINDS = ("conv", "linear")


@dataclass(frozen=True)
class ParamSpec:
    """One parameter tensor inside the flat vector: ``flat[offset:offset + numel]``."""

    name: str
    shape: tuple[int, ...]
    kind: str
    offset: int
    filter_axis: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"parameter {self.name!r}: kind {self.kind!r} is not one of {KINDS}")
        if self.kind in WEIGHT_KINDS and self.filter_axis is None:
            raise ValueError(f"parameter {self.name!r}: a {self.kind} weight needs a filter_axis")
        if self.filter_axis is not None and not -len(self.shape) <= self.filter_axis < len(self.shape):
            raise ValueError(
                f"parameter {self.name!r}: filter_axis {self.filter_axis} out of range for shape {self.shape}"
            )

    @property
    def numel(self) -> int:
        return prod(self.shape)

    @property
    def slice(self) -> slice:
        return slice(self.offset, self.offset + self.numel)

    @property
    def n_filters(self) -> int:
        """Number of filters (1 for parameters without a filter axis)."""
        return self.shape[self.filter_axis] if self.filter_axis is not None else 1


class ParameterLayout:
    """Ordered, contiguous sequence of :class:`ParamSpec` covering a flat vector of ``size`` entries."""

    def __init__(self, specs: list[ParamSpec] | tuple[ParamSpec, ...]):
        self.specs = tuple(specs)
        offset = 0
        for spec in self.specs:
            if spec.offset != offset:
                raise ValueError(f"parameter {spec.name!r} starts at {spec.offset}, expected {offset}")
            offset += spec.numel
        self.size = offset
        self._by_name = {s.name: s for s in self.specs}
        if len(self._by_name) != len(self.specs):
            raise ValueError("parameter names in a layout must be unique")

    @classmethod
    def from_shapes(cls, entries: list[tuple[str, tuple[int, ...], str, int | None]]) -> ParameterLayout:
        """Build a layout from ``(name, shape, kind, filter_axis)`` tuples, computing offsets."""
        specs, offset = [], 0
        for name, shape, kind, filter_axis in entries:
            spec = ParamSpec(name, tuple(int(d) for d in shape), kind, offset, filter_axis)
            specs.append(spec)
            offset += spec.numel
        return cls(specs)

    def __iter__(self) -> Iterator[ParamSpec]:
        return iter(self.specs)

    def __len__(self) -> int:
        return len(self.specs)

    def __getitem__(self, name: str) -> ParamSpec:
        return self._by_name[name]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ParameterLayout) and self.specs == other.specs

    def __repr__(self) -> str:
        return f"ParameterLayout({len(self.specs)} tensors, size={self.size})"

    def to_json(self) -> str:
        return json.dumps([asdict(s) for s in self.specs])

    @classmethod
    def from_json(cls, text: str) -> ParameterLayout:
        return cls([ParamSpec(**{**d, "shape": tuple(d["shape"])}) for d in json.loads(text)])


#: the items of ``spectra.blocks`` that are not parameter-name patterns
WHOLE, PER_LAYER = "whole", "per_layer"


def layer_of(name: str) -> str:
    """The layer a parameter belongs to: its name without the last ``.``- or ``/``-separated part (torch
    ``features.0.weight`` -> ``features.0``, Keras ``dense/kernel`` -> ``dense``; a bare name is its own layer)."""
    cut = max(name.rfind("."), name.rfind("/"))
    return name[:cut] if cut > 0 else name


def parameter_blocks(layout: ParameterLayout, items: list[str] | tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """Blocks of parameters for per-block Hessian spectra, name -> parameter names in layout order: ``per_layer``
    gives one block per layer (:func:`layer_of`: the parameters sharing a module prefix), any other item but
    ``whole`` (the whole model, which callers handle themselves) is an fnmatch pattern over the parameter names,
    one block named by the pattern. A pattern that matches nothing is a ValueError naming it and the names."""
    from fnmatch import fnmatchcase

    names = [spec.name for spec in layout]
    blocks: dict[str, tuple[str, ...]] = {}
    for item in items:
        if item == WHOLE:
            continue
        if item == PER_LAYER:
            for layer in dict.fromkeys(layer_of(name) for name in names):
                blocks.setdefault(layer, tuple(name for name in names if layer_of(name) == layer))
            continue
        matched = tuple(name for name in names if fnmatchcase(name, item))
        if not matched:
            raise ValueError(f"block {item!r} matches no parameter: give {WHOLE!r}, {PER_LAYER!r} or an fnmatch "
                             f"pattern over the parameter names {', '.join(names)}")
        blocks.setdefault(item, matched)
    return blocks


def parameter_indices(layout: ParameterLayout, params: list[str] | tuple[str, ...]) -> list[int]:
    """Positions in the flat vector of the named parameters' entries, in layout order (the coordinates ``S`` of a
    principal submatrix ``H[S, S]``); a ValueError for a name the layout does not have."""
    wanted = set(params)
    unknown = sorted(wanted - set(layout._by_name))
    if unknown or not wanted:
        raise ValueError(f"parameters {unknown or '[]'} are not in the model: its parameters are "
                         f"{', '.join(spec.name for spec in layout)}")
    return [i for spec in layout if spec.name in wanted for i in range(spec.offset, spec.offset + spec.numel)]
