"""``python -m spafoundation`` (what ``torchrun -m spafoundation pretrain ...`` runs)."""

import sys

from spafoundation.cli import main

sys.exit(main())
