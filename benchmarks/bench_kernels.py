"""Kernel benchmark as a script: same as ``vithub bench kernels`` (prints a table, writes JSON)."""

import sys

from vithub.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "kernels", *sys.argv[1:]]))
