"""`python -m labs.api`: the same as `labs-api`."""

from labs.cli.api import main

main()
