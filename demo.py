"""The whole chain in one command (see acestep/demo.py): `python demo.py`."""

from acestep.demo import main

if __name__ == "__main__":
    main()
