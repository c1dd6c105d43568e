"""``python -m serlive.stream [...]``: the engine headless (the same arguments as ``ser-live``)."""

from .cli import main

raise SystemExit(main())
