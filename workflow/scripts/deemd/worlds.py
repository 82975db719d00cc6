"""The demo screen's synthetic worlds, by their ``demo.world`` name. Each module has
make_library(demo), plate_layout(library, demo, experiment, plate) and
iter_plate(demo, experiment, plate, library) with the same outputs in form."""

from __future__ import annotations

from types import ModuleType

from deemd import synth, synth_diffuse

WORLDS = {"foci": synth, "diffuse": synth_diffuse}
DEFAULT_WORLD = "foci"


def world_name(demo: dict) -> str:
    """demo.world, or the default (foci) when it is not given."""
    return demo.get("world") or DEFAULT_WORLD


def world_module(demo: dict) -> ModuleType:
    """The module that makes the demo's world; an unknown name is an error naming the key."""
    name = world_name(demo)
    if name not in WORLDS:
        raise ValueError(f"config key demo.world: {name!r} is not one of {sorted(WORLDS)}")
    return WORLDS[name]
