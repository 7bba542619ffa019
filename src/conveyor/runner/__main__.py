"""`python -m conveyor.runner`: the job executor, as the agent starts it for each job (the
quick way in: `conveyor bootstrap` does the same through the command line)."""

from conveyor.runner.bootstrap import main

main()
