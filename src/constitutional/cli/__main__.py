"""`python -m constitutional.cli` runs `cai`."""

from constitutional.cli import main

main()
