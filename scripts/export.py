"""A run's center policy as one torch.export program, deployable with torch alone: the same as
``flipes export``.

python scripts/export.py runs/cartpole --checkpoint best --out cartpole.pt2
"""

from flipes.commands import script

if __name__ == "__main__":
    script("export")
