"""Policy settings as `policy set KEY=VALUE` parses them, and the defaults a policy starts with."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authority.errors import InvalidInput
from authority.settings import (
    DEFAULT_EXCLUDES,
    SETTINGS,
    Setting,
    complete,
    defaults,
    parse_assignments,
)

INT_SETTINGS = [s for s in SETTINGS.values() if s.kind == "int"]
BOOL_KEYS = sorted(k for k, s in SETTINGS.items() if s.kind == "bool")


# Integers


def test_int_setting_within_bounds_is_accepted() -> None:
    assert parse_assignments(["detection_timeout_seconds=120"]) == {
        "detection_timeout_seconds": 120
    }


@pytest.mark.parametrize("setting", INT_SETTINGS, ids=lambda s: s.key)
def test_int_setting_accepts_both_bounds(setting: Setting) -> None:
    assert setting.minimum is not None and setting.maximum is not None
    assert parse_assignments([f"{setting.key}={setting.minimum}"]) == {setting.key: setting.minimum}
    assert parse_assignments([f"{setting.key}={setting.maximum}"]) == {setting.key: setting.maximum}


def test_int_setting_below_minimum_is_refused_naming_the_minimum() -> None:
    with pytest.raises(
        InvalidInput, match=r"^detection_timeout_seconds: 0 is below the minimum 1$"
    ):
        parse_assignments(["detection_timeout_seconds=0"])


def test_int_setting_above_maximum_is_refused_naming_the_maximum() -> None:
    with pytest.raises(InvalidInput, match=r"detection_timeout_seconds: 301 .* maximum 300"):
        parse_assignments(["detection_timeout_seconds=301"])


@pytest.mark.parametrize("raw", ["often", "1.5", "", "1e3", "60s"])
def test_int_setting_refuses_what_is_not_a_whole_number_naming_the_key(raw: str) -> None:
    with pytest.raises(InvalidInput, match=r"^backup_interval_seconds: .* is not a whole number$"):
        parse_assignments([f"backup_interval_seconds={raw}"])


def test_int_setting_ignores_spaces_around_the_value() -> None:
    assert parse_assignments(["backup_interval_seconds= 600 "]) == {"backup_interval_seconds": 600}


def test_zero_bandwidth_limit_means_unlimited_and_is_accepted() -> None:
    assert parse_assignments(["bandwidth_limit_kbps=0"]) == {"bandwidth_limit_kbps": 0}


@given(data=st.data())
def test_any_int_within_bounds_round_trips(data: st.DataObject) -> None:
    setting = data.draw(st.sampled_from(INT_SETTINGS))
    value = data.draw(st.integers(min_value=setting.minimum, max_value=setting.maximum))
    assert parse_assignments([f"{setting.key}={value}"]) == {setting.key: value}


@given(data=st.data())
def test_any_int_outside_bounds_is_refused_naming_the_key(data: st.DataObject) -> None:
    setting = data.draw(st.sampled_from(INT_SETTINGS))
    assert setting.minimum is not None and setting.maximum is not None
    value = data.draw(
        st.one_of(
            st.integers(max_value=setting.minimum - 1),
            st.integers(min_value=setting.maximum + 1),
        )
    )
    with pytest.raises(InvalidInput) as caught:
        parse_assignments([f"{setting.key}={value}"])
    assert caught.value.message.startswith(f"{setting.key}: ")


def test_json_true_is_not_taken_for_a_number() -> None:
    # From the API, settings arrive typed: a JSON `true` must not pass as the integer 1.
    with pytest.raises(InvalidInput, match="backup_interval_seconds"):
        SETTINGS["backup_interval_seconds"].check(True)


# Booleans


@pytest.mark.parametrize("word", ["true", "yes", "on", "1", "TRUE", "Yes", " on "])
@pytest.mark.parametrize("key", BOOL_KEYS)
def test_bool_setting_accepts_true_words(key: str, word: str) -> None:
    assert parse_assignments([f"{key}={word}"]) == {key: True}


@pytest.mark.parametrize("word", ["false", "no", "off", "0", "FALSE", "No"])
@pytest.mark.parametrize("key", BOOL_KEYS)
def test_bool_setting_accepts_false_words(key: str, word: str) -> None:
    assert parse_assignments([f"{key}={word}"]) == {key: False}


@pytest.mark.parametrize("raw", ["maybe", "", "2", "enabled"])
def test_bool_setting_refuses_other_words_naming_the_key(raw: str) -> None:
    with pytest.raises(InvalidInput, match=r"^allow_user_stop: .* is not true or false$"):
        parse_assignments([f"allow_user_stop={raw}"])


# Choices


@pytest.mark.parametrize("mode", ["standard", "archive_password", "custom"])
def test_security_accepts_each_documented_mode(mode: str) -> None:
    assert parse_assignments([f"security={mode}"]) == {"security": mode}


def test_security_refuses_other_modes_listing_the_valid_ones() -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_assignments(["security=plaintext"])
    message = caught.value.message
    assert message.startswith("security: 'plaintext'")
    for mode in ("standard", "archive_password", "custom"):
        assert mode in message


# Patterns


def test_exclude_is_split_on_commas_and_trimmed() -> None:
    assert parse_assignments(["exclude=*.iso, Downloads/ ,node_modules/"]) == {
        "exclude": ["*.iso", "Downloads/", "node_modules/"]
    }


@pytest.mark.parametrize("raw", ["", "  ", " , ,"])
def test_empty_exclude_clears_every_pattern(raw: str) -> None:
    assert parse_assignments([f"exclude={raw}"]) == {"exclude": []}


def test_exclude_value_may_contain_equals_signs() -> None:
    assert parse_assignments(["exclude=a=b.txt"]) == {"exclude": ["a=b.txt"]}


def test_typed_pattern_list_with_a_newline_is_refused() -> None:
    with pytest.raises(InvalidInput, match="exclude"):
        SETTINGS["exclude"].check(["ok/", "bad\npattern"])


# The command line as a whole


def test_unknown_key_is_refused_naming_it_and_listing_every_known_key() -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_assignments(["colour=blue"])
    message = caught.value.message
    assert "'colour'" in message
    for key in SETTINGS:
        assert key in message


def test_word_without_equals_is_refused_naming_the_word() -> None:
    with pytest.raises(InvalidInput, match="'allow_user_stop' is not KEY=VALUE"):
        parse_assignments(["allow_user_stop"])


def test_nothing_to_set_is_refused() -> None:
    with pytest.raises(InvalidInput, match="KEY=VALUE"):
        parse_assignments([])


def test_several_assignments_are_applied_together() -> None:
    assert parse_assignments(["allow_user_stop=no", "security=custom", "exclude="]) == {
        "allow_user_stop": False,
        "security": "custom",
        "exclude": [],
    }


@pytest.mark.parametrize(
    "words",
    [
        ["allow_user_stop=false", "colour=blue"],
        ["colour=blue", "allow_user_stop=false"],
        ["allow_user_stop=false", "backup_interval_seconds=1"],
    ],
)
def test_one_bad_assignment_refuses_them_all(words: list[str]) -> None:
    with pytest.raises(InvalidInput):
        parse_assignments(words)


# Defaults


def test_defaults_cover_every_setting_with_its_documented_default() -> None:
    values = defaults()
    assert set(values) == set(SETTINGS)
    assert values["detection_timeout_seconds"] == 60
    assert values["allow_user_stop"] is True
    assert values["security"] == "standard"
    assert values["exclude"] == list(DEFAULT_EXCLUDES)


def test_every_default_passes_its_own_validation() -> None:
    for key, value in defaults().items():
        assert SETTINGS[key].check(value) == value


def test_changing_one_policys_defaults_does_not_change_the_next_policys() -> None:
    first = defaults()
    first["exclude"].append("Videos/")
    assert "Videos/" not in defaults()["exclude"]


def test_complete_fills_missing_keys_with_defaults_and_keeps_stored_values() -> None:
    merged = complete({"security": "custom", "bandwidth_limit_kbps": 512})
    assert merged["security"] == "custom"
    assert merged["bandwidth_limit_kbps"] == 512
    assert merged["backup_interval_seconds"] == 900
    assert set(merged) == set(SETTINGS)


def test_complete_drops_keys_no_longer_known() -> None:
    assert "retired_setting" not in complete({"retired_setting": 1})


def test_complete_of_nothing_is_the_defaults() -> None:
    assert complete({}) == defaults()
