"""Image-reading benchmark as a script: the same as ``vithub bench data``; prints a table, writes JSON (see ``--help``)."""

import sys

from vithub.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "data", *sys.argv[1:]]))
