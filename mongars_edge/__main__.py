"""`python -m mongars_edge` runs the command line."""

from mongars_edge.cli import main

if __name__ == "__main__":
    main()
