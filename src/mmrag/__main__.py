"""``python -m mmrag`` runs the CLI."""

from mmrag.cli import main

if __name__ == "__main__":
    main()
