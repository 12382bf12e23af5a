"""What the subscriber's form pages read from a submitted form (digest/web_forms.py); the
pages themselves are tested against the real server in test_signup and test_preferences."""

from __future__ import annotations

import pytest
from starlette.datastructures import FormData

from digest import signup
from digest.config import SignupConfig
from digest.web_forms import read_edit, split_lines

FORM = {"topic-0-name": "Inference", "topic-0-weight": "1", "timezone": "UTC",
        "send_at": "07:00", "max_items": "10", "frequency": "daily", "day": "monday"}


def test_keywords_are_one_a_line_whatever_the_line_ending() -> None:
    assert split_lines("KV cache\r\nSmith, J.\rquantiz*\n\n  early exit  \n") == [
        "KV cache", "Smith, J.", "quantiz*", "early exit"]


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x0c", "\x0b", "\x1c", "\x85"])
def test_a_line_separator_inside_a_keyword_is_refused_not_split_at(separator: str) -> None:
    # The README promises a one-line error naming the field for line separators and control
    # characters; str.splitlines made two keywords of "KV" U+2028 "cache" without a word.
    form = FormData(FORM | {"topic-0-keywords": f"KV{separator}cache", "exclude": "survey"})
    with pytest.raises(signup.FormError) as caught:
        read_edit(form)
    assert caught.value.field == "Topic 1 keywords.0"
    form = FormData(FORM | {"topic-0-keywords": "KV cache", "exclude": f"a{separator}b"})
    with pytest.raises(signup.FormError) as caught:
        read_edit(form)
    assert caught.value.field == "exclude.0"
    assert caught.value.problem == "must not contain control characters such as newlines"


def test_typed_keywords_follow_the_rules_of_names() -> None:
    form = FormData(FORM | {"topic-0-keywords": "=?utf-8?q?x?=", "exclude": ""})
    with pytest.raises(signup.FormError, match="encoded-word"):
        read_edit(form)
    fields = {"email": "ada@example.org", "keywords": "KV\u2028cache", "timezone": "UTC",
              "send_at": "07:00"}
    config = SignupConfig(enabled=True)
    with pytest.raises(signup.FormError, match="control characters"):
        signup.read_form(fields, config)
