"""Registry: declared inputs match each stage function's signature; sources come from the table."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
import xarray as xr

from pipelines.errors import BadInputError
from pipelines.inputs import SOURCE_INPUTS
from pipelines.stages.registry import (
    check_stage_signatures,
    get_stage,
    list_stages,
    register_stage,
    source_inputs,
    time_source,
    unregister_stage,
)

FAKE = "signature_probe"


@pytest.mark.parametrize("name", list_stages())
def test_declared_inputs_match_the_function(name: str) -> None:
    check_stage_signatures([name])


def test_resolving_every_tile_stage_imports_neither_torch_nor_models() -> None:
    code = (
        "import sys\n"
        "from pipelines.stages.registry import check_stage_signatures, get_stage, list_stages\n"
        "check_stage_signatures([n for n in list_stages() if get_stage(n).scope == 'tile'])\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'models')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    assert out.stdout.strip() == "[]", out.stdout


@pytest.fixture
def unregister() -> Iterator[None]:
    yield
    unregister_stage(FAKE)


def _probe(image: xr.DataArray, *, cloud_mask: xr.DataArray | None = None) -> xr.DataArray:
    return image


def test_mismatched_stage_is_refused_naming_stage_parameter_and_declaration(unregister) -> None:
    with pytest.raises(BadInputError) as err:
        register_stage(name=FAKE, function=_probe, inputs=("s2",), output="x", version="1")
    message = str(err.value)
    assert FAKE in message
    assert "declared input 's2' is not a keyword parameter" in message
    assert "required parameter 'image' is not a declared input" in message
    assert "('s2',)" in message and "_probe(image" in message
    assert FAKE not in list_stages()


def test_lazily_imported_function_is_checked_when_first_resolved(unregister) -> None:
    stage = register_stage(
        name=FAKE,
        function="pipelines.stages.water:water_mask",
        inputs=("s1_pre",),
        output="x",
        version="1",
    )
    with pytest.raises(BadInputError, match="required parameter 's1' is not a declared input"):
        stage.func  # noqa: B018
    with pytest.raises(BadInputError, match=FAKE):
        check_stage_signatures([FAKE])


def test_optional_input_needs_a_default_or_to_take_none(unregister) -> None:
    def probe(s2: xr.DataArray, s1: xr.DataArray) -> xr.DataArray:
        return s2

    def takes_none(s1: xr.DataArray | None, s2: xr.DataArray) -> xr.DataArray:
        return s2

    with pytest.raises(BadInputError, match="optional input 's1' has no default"):
        register_stage(
            name=FAKE,
            function=probe,
            inputs=("s2", "s1"),
            optional=("s1",),
            output="x",
            version="1",
        )
    try:  # the engine passes None for an optional input without scenes
        register_stage(
            name=f"{FAKE}_none", function=takes_none, inputs=("s1", "s2"), optional=("s1",),
            output="x", version="1",
        )  # fmt: skip
    finally:
        unregister_stage(f"{FAKE}_none")
    with pytest.raises(BadInputError, match="optional input 'dem' is not a declared input"):
        register_stage(
            name=FAKE, function=_probe, inputs=("s2",), optional=("dem",), output="x", version="1"
        )


def test_matching_stage_with_tuning_keywords_and_unused_optional_parameters(unregister) -> None:
    def probe(
        s2: xr.DataArray, cloud_mask: xr.DataArray | None = None, *, window: int = 15
    ) -> xr.DataArray:
        return s2

    stage = register_stage(name=FAKE, function=probe, inputs=("s2",), output="x", version="1")
    assert stage.func is probe


def test_positional_only_input_is_refused(unregister) -> None:
    def probe(s2: xr.DataArray, /) -> xr.DataArray:
        return s2

    with pytest.raises(BadInputError, match="'s2' is not a keyword parameter"):
        register_stage(name=FAKE, function=probe, inputs=("s2",), output="x", version="1")


def test_sources_and_dates_come_from_the_input_table() -> None:
    flood = get_stage("flood_change")
    assert source_inputs([flood]) == ["s1_pre", "s1_post", "dem", "hand"]
    assert set(source_inputs([flood])) <= set(SOURCE_INPUTS)
    assert time_source(flood) == "s1_post"  # s1_pre is a reference period, dem timeless
    assert time_source(get_stage("dehaze")) == "s2"  # through haze_index and cloud_mask
    assert time_source(get_stage("parcels")) is None  # one output per window
