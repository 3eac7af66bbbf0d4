"""A module whose own import of a dependency fails (the dependency does not exist)."""

import sleipnir_tests_no_such_dependency  # type: ignore[import-not-found]  # noqa: F401

app = None
