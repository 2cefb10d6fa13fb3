"""One-line error messages of the library."""

import pytest


def assert_one_line(err: pytest.ExceptionInfo, *fragments: str) -> None:
    """The DataError message is one non-empty line containing every fragment."""
    message = str(err.value)
    assert message and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
