import sys

from opsmantik_stream.cli import main

sys.exit(main())
