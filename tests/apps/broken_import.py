"""A module that raises while it is being imported."""

raise RuntimeError("boom while importing the app module")
