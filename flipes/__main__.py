"""``python -m flipes train|evaluate|plot``: the ``flipes`` command."""

import sys

from flipes.commands import main

sys.exit(main())
