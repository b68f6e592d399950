"""`python -m limamono ...` runs the CLI (also under `accelerate launch -m limamono`)."""

from limamono.cli import main

main()
