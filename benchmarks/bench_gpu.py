"""GPU kernel benchmark as a script: same as ``vithub bench gpu`` (prints a table, writes JSON; CUDA only)."""

import sys

from vithub.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "gpu", *sys.argv[1:]]))
