"""Model throughput benchmark as a script: the same as ``vithub bench models``; prints a table, writes JSON (see ``--help``)."""

import sys

from vithub.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "models", *sys.argv[1:]]))
