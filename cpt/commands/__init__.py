"""One module per `python -m cpt` command, each with `main(args) -> exit code`; cpt/cli.py dispatches to them."""
