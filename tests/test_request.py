import pytest

from sfumato.errors import UserError, unknown_name
from sfumato.request import GenerationRequest, build_request


def test_a1111_body_validates_and_unknown_fields_are_ignored():
    request = build_request(prompt="cat", steps=30, cfg_scale=5, sampler_name="Euler a", alwayson_scripts={})
    assert request.steps == 30 and request.cfg_scale == 5.0 and request.sampler_name == "Euler a"


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("width", 513, "multiple of 8 (try 512 or 520)"),
        ("height", 0, "height"),
        ("steps", 0, "steps"),
        ("seed", -2, "seed"),
        ("subseed_strength", 1.5, "subseed_strength"),
        ("batch_size", "two", "batch_size"),
    ],
)
def test_invalid_values_name_the_field(field, value, needle):
    with pytest.raises(UserError) as info:
        build_request(prompt="x", **{field: value})
    assert info.value.field == field
    assert needle in str(info.value)


def test_defaults_follow_a1111():
    request = GenerationRequest()
    assert (request.steps, request.cfg_scale, request.seed, request.clip_skip) == (20, 7.0, -1, 1)


def test_unknown_name_suggests_close_matches():
    error = unknown_name("sampler", "Eular a", ["Euler", "Euler a", "Heun", "DPM++ 2M"])
    assert "did you mean 'Euler a'" in str(error)
    error = unknown_name("sampler", "zzz", ["Euler", "Heun"])
    assert "did you mean" not in str(error) and "Euler, Heun" in str(error)
