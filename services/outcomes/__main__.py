"""``python -m services.outcomes``: the outcomes service (bundles + safety alerts -> outcomes, safety Tasks)."""

from services.outcomes.service import main

if __name__ == "__main__":
    main()
