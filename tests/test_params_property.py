"""Property test: any wrong value or unknown key in params.yaml gives one line naming the key path."""

import copy
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from gptcore.params import SECTIONS, ParamsError, is_override, read_yaml, section_fields, validate
from gptcore.settings import rule

DEFAULT = read_yaml(Path(__file__).resolve().parents[1] / "params.yaml")
KEYS = [(section, key) for section in SECTIONS for key in section_fields(section)]
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                   st.text(max_size=12), st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3),
                                                                                               st.integers(), max_size=2))


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(KEYS), value=VALUES)
def test_any_value_is_accepted_or_named_in_one_line(key, value):
    section, name = key
    params = copy.deepcopy(DEFAULT)
    params[section][name] = value
    try:
        validate(params)
    except ParamsError as error:
        message = str(error)
        assert message.startswith("params.yaml: ") and "\n" not in message
        assert f"{section}.{name}" in message
    else:
        definition = section_fields(section)[name]
        assert rule(definition, nullable=True if is_override(section, definition) else None).accepts(value)


@settings(max_examples=100, deadline=None)
@given(section=st.sampled_from(sorted(SECTIONS)), name=st.text(min_size=1, max_size=20))
def test_unknown_keys_are_named(section, name):
    if name in section_fields(section) or f"{section}.{name}" == "train.sampling":
        return
    params = copy.deepcopy(DEFAULT)
    params[section][name] = 1
    try:
        validate(params)
    except ParamsError as error:
        assert f"unknown key {section}.{name}" in str(error)
    else:
        raise AssertionError(f"{section}.{name} was accepted")
