"""``python -m flipes train|evaluate|export|plot``: the ``flipes`` command."""

import sys

from flipes.commands import main

sys.exit(main())
