import sys

from lightning_depth.cli import main

if __name__ == "__main__":
    sys.exit(main())
