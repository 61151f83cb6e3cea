from acestep.plan.cli import main

main()
