"""Token-reduction benchmark as a script: the same as ``vithub bench tokens``; prints a table, writes JSON (see
``--help``)."""

import sys

from vithub.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "tokens", *sys.argv[1:]]))
