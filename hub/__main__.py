import sys

from vithub.cli import main

sys.exit(main())
