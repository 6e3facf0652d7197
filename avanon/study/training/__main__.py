"""`python -m avanon.study.training` (also under torchrun): one training run."""
import sys

from avanon.study.training.cli import main

sys.exit(main())
