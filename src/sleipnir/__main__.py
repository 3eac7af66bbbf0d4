"""`python -m sleipnir ...`: the same as the `sleipnir` command."""

from sleipnir.cli import main

main()
