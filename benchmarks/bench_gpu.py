"""GPU kernel benchmark (CUDA only) as a script: the same as ``vithub bench gpu``; prints a table, writes JSON (see ``--help``)."""

import sys

from vithub.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "gpu", *sys.argv[1:]]))
