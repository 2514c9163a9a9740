"""``python -m mesh.proxy``: the same command as ``simmesh proxy``."""

from __future__ import annotations

import sys

from mesh.proxy.app import main

if __name__ == "__main__":
    sys.exit(main())
