"""`python -m acestep.evaluate --run RUN_DIR`: is my LoRA any good? (see acestep/evaluation)."""

from acestep.evaluation.cli import main

if __name__ == "__main__":
    main()
