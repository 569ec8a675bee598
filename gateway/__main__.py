import sys

from gateway.cli import main

# Guarded: the trainer's worker process is spawned, and spawn re-imports the main module.
if __name__ == "__main__":
    sys.exit(main())
