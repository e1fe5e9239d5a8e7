import sys

from vithub.train.cli import main

sys.exit(main())
