"""model/validation.py: one error format for config files, checkpoint metadata and HTTP bodies."""

from __future__ import annotations

import dataclasses
from typing import Annotated

import pytest
from annotated_types import Ge
from pydantic import BaseModel, ConfigDict, StrictInt, TypeAdapter, ValidationError

from model.config import ModelConfig, UNetConfig
from model.validation import ConfigError, check_fields, error_entries, one_line


def test_entries_name_the_dotted_field_and_the_value() -> None:
    with pytest.raises(ValidationError) as info:
        TypeAdapter(ModelConfig).validate_python({"unet": {"image_size": 8.0, "channel_mult": [1, "x"]}})
    entries = error_entries(info.value, root=ModelConfig)
    assert entries == [
        {"field": "unet.image_size", "msg": "unet.image_size: Input should be a valid integer (got 8.0)",
         "type": "int_type"},
        {"field": "unet.channel_mult[1]", "msg": "unet.channel_mult[1]: Input should be a valid integer (got 'x')",
         "type": "int_type"},
    ]
    assert one_line(entries) == "; ".join(e["msg"] for e in entries)
    assert one_line(entries * 3, limit=2).endswith("; and 4 more")


def test_an_http_body_maps_the_same_way_without_the_framework() -> None:
    """What the server's 422 handler does with FastAPI's ("body", field) locations."""

    class Body(BaseModel):
        model_config = ConfigDict(extra="forbid")
        n: Annotated[StrictInt, Ge(1)]

    with pytest.raises(ValidationError) as info:
        Body.model_validate({"n": "4", "colour": "red"})
    entries = error_entries(info.value, prefix=["body"], drop=0)
    assert [e["field"] for e in entries] == ["body.n", "body.colour"]
    entries = error_entries(info.value)
    assert entries[0]["msg"] == "n: Input should be a valid integer (got '4')"
    assert entries[1] == {"field": "colour", "msg": "colour: unknown key", "type": "extra_forbidden"}
    entries = error_entries(info.value, root=Body)
    assert entries[1]["msg"] == "colour: unknown key; allowed: n"


def test_a_huge_input_is_cut_short_in_the_message() -> None:
    with pytest.raises(ConfigError) as info:
        ModelConfig.from_dict({"name": "x" * 10_000})
    assert len(str(info.value)) < 200


def test_constructing_a_config_raises_config_error_naming_the_section() -> None:
    with pytest.raises(ConfigError, match=r"^unet\.norm_groups: 5 must divide every level's width"):
        UNetConfig(norm_groups=5)
    with pytest.raises(ConfigError, match=r"^unet\.image_size: .*divisible|unet\.channel_mult: 4 levels need"):
        UNetConfig(image_size=12)  # checked against the default channel_mult too
    base = UNetConfig()
    with pytest.raises(ConfigError, match=r"^unet\.base_channels: Input should be a valid integer"):
        dataclasses.replace(base, base_channels=64.0)
    assert dataclasses.replace(base, base_channels=64).widths == (64, 128, 128, 128)


def test_check_fields_checks_keys_and_values_but_not_what_spans_fields() -> None:
    check_fields(ModelConfig, {"unet": {"attention_resolutions": [4]}}, "model")  # the data decides the size
    with pytest.raises(ConfigError, match=r"^model\.unet\.widht: unknown key; allowed: image_size"):
        check_fields(ModelConfig, {"unet": {"widht": 3}}, "model")
    with pytest.raises(ConfigError, match=r"^model\.unet\.base_channels: Input should be a valid integer"):
        check_fields(ModelConfig, {"unet": {"base_channels": "64"}}, "model")


def test_a_body_that_is_not_json_names_no_field() -> None:
    """FastAPI reports malformed JSON at ("body", offset): the offset is not a field."""
    errors = [{"type": "json_invalid", "loc": ("body", 6), "msg": "JSON decode error", "input": {},
               "ctx": {"error": "Expecting value"}}]
    assert error_entries(errors, drop=1) == [
        {"field": "", "msg": "not valid JSON at character 6: Expecting value", "type": "json_invalid"}]
