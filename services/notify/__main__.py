"""``python -m services.notify``: the notify service (record change feed -> numbered events -> rest-hooks)."""

from services.notify.service import main

if __name__ == "__main__":
    main()
