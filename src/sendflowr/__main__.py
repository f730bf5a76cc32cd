"""`python -m sendflowr` is the `sendflowr` command."""

from sendflowr.cli import main

main()
