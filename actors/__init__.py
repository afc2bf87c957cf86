"""The Ray actors: the queen, the domain workers, the deployment runners and the health monitors."""

from actors.coverage_save import save_periodically

save_periodically()  # only under scripts/coverage.sh: see actors/coverage_save.py
