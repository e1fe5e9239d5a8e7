"""Kernel benchmark as a script: the same as ``vithub bench kernels``; prints a table, writes JSON (see ``--help``)."""

import sys

from vithub.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "kernels", *sys.argv[1:]]))
