"""``python -m infra.cli`` is the ``tributary`` command (used to start flow processes)."""

from infra.cli.app import main

if __name__ == "__main__":
    main()
