"""`python -m fer_edge` runs the command line."""
from fer_edge.cli import main

main(prog_name="fer-edge")
