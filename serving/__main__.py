"""`python -m serving` runs the `mesoscan` command."""

from serving.cli import main

main()
