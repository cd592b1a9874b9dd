"""``python -m pgfleet.cli``: the ``pgfleet`` command run by the interpreter, as the supervisor
starts its children (beat, Flower, metrics) and as the tests run it."""

from pgfleet.cli import main

if __name__ == "__main__":
    main()
